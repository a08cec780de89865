#!/usr/bin/env python3
"""Golden files for fp4q's MoE and newer dense architectures (issue 12), made with transformers.

Run ONCE on the GPU machine (everything runs on the CPU in float32/float64; about 20 s):

    python3 tools/golden_models_moe.py --out "$OUT"

Writes <out>/tiny_models_moe.tar.gz (extract it into tests/data/:
`tar -xzf tiny_models_moe.tar.gz -C tests/data`) and <out>/golden_models_moe_log.txt. The archive
holds tiny_models/<name>/ for each model below (one file per model directory would exceed the
device's 8-file return limit):

  config.json, model.safetensors   tiny random model saved by save_pretrained (transformers 5.17),
                                   exactly as that version writes it
  golden.json        {"input_ids", "T", "vocab", "logits_file", "storage_dtype", versions,
                      "tensor_names": every saved tensor with its shape (shows the checkpoint
                      layout transformers wrote: per-expert 2-D vs fused 3-D experts),
                      "fp32_vs_fp64_max_abs", "max_abs_logit", extra per-model checks}
  golden_logits.bin  float32 little-endian, row-major [T x vocab]: logits of the model reloaded
                     from disk with dtype=float32, attn_implementation="eager", CPU
  routing.json       MoE models only: per MoE layer, for the same input, what transformers'
                     router returned: {"layers": {"<layer>": {"ids": [[k ints] per token],
                     "weights": [[k floats]], "logits": [[E floats]]}}} (ids in torch.topk
                     order, descending probability)
  golden_short_logits.bin + "short_input_ids" / "short_T" in golden.json: longrope model only,
                     a sequence no longer than original_max_position_embeddings (short factors)

Models (hidden 64, bf16 storage unless noted, fixed seeds, each < 200 KB):
  qwen3_moe_tiny         Qwen3MoeForCausalLM, 3 layers (layer 1 dense via mlp_only_layers),
                         8 experts, top-3, norm_topk_prob true, moe_intermediate 32, q/k norms
  qwen3_moe_nonorm_tiny  Qwen3MoeForCausalLM, 2 layers, 4 experts, top-2, norm_topk_prob false,
                         fp16 storage, tied embeddings
  mixtral_tiny           MixtralForCausalLM, 2 layers, 4 experts top-2, intermediate 64, GQA 4/2
  gemma3_tiny            Gemma3ForCausalLM, 3 layers (sliding, sliding, full), sliding_window 4
                         (in effect at T = 16), local rope 10000 / global 1e6 with linear factor 4,
                         query_pre_attn_scalar 24 (!= head_dim 16), final soft-cap 15, GELU-tanh,
                         (1 + w) norms (stored w ~ 0.1 N(0,1)), tied embeddings; attn_logit_softcapping
                         20 is set too: transformers' Gemma3Attention does not apply it (fp4q neither),
                         golden.json's "attn_softcap_effect_max_abs" records what removing it changes
  phi3_tiny              Phi3ForCausalLM, 2 layers, fused qkv_proj / gate_up_proj, GQA 4/2,
                         sliding_window 8 (in effect at T = 16)
  phi3_longrope_tiny     Phi3ForCausalLM, partial_rotary_factor 0.75 (rotary dim 12 of 16),
                         longrope (short/long factors, original_max_position_embeddings 8,
                         max_position_embeddings 64 -> attention factor sqrt(2)), T = 16 uses the
                         long factors; a second 8-token input uses the short ones
For models with a sliding window the log also reports how much the logits change without the
window (proof that the golden exercises the mask).

`--check` (no torch needed) only validates the specs and prints them; tools/golden_models.py
(the dense models) is separate and unchanged.
"""
import argparse
import io
import json
import math
import os
import struct
import sys
import tarfile
import time
import traceback

T_INPUT = 16
VOCAB = 256

COMMON = dict(vocab_size=VOCAB, hidden_size=64, max_position_embeddings=256, rms_norm_eps=1e-6,
              bos_token_id=1, eos_token_id=2)

# storage dtype by name (torch is imported lazily so --check runs without it)
MODELS = [
    dict(name="qwen3_moe_tiny", model_type="qwen3_moe", dtype="bfloat16", seed=21, moe=True,
         cfg=dict(intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=3,
                  moe_intermediate_size=32, norm_topk_prob=True, decoder_sparse_step=1,
                  mlp_only_layers=[1], rope_theta=1000000.0, tie_word_embeddings=False,
                  hidden_act="silu", attention_bias=False, use_sliding_window=False)),
    dict(name="qwen3_moe_nonorm_tiny", model_type="qwen3_moe", dtype="float16", seed=22, moe=True,
         cfg=dict(intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, head_dim=16, num_experts=4, num_experts_per_tok=2,
                  moe_intermediate_size=32, norm_topk_prob=False, decoder_sparse_step=1,
                  mlp_only_layers=[], rope_theta=10000.0, tie_word_embeddings=True,
                  hidden_act="silu", attention_bias=False, use_sliding_window=False)),
    dict(name="mixtral_tiny", model_type="mixtral", dtype="bfloat16", seed=23, moe=True,
         cfg=dict(intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                  rope_theta=1000000.0, sliding_window=None, tie_word_embeddings=False,
                  hidden_act="silu", router_jitter_noise=0.0)),
    dict(name="gemma3_tiny", model_type="gemma3_text", dtype="bfloat16", seed=24, gemma=True,
         sliding=True,
         cfg=dict(intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
                  sliding_window=4, layer_types=["sliding_attention", "sliding_attention",
                                                 "full_attention"],
                  attn_logit_softcapping=20.0, final_logit_softcapping=15.0,
                  hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
                  rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                   "full_attention": {"rope_type": "linear", "factor": 4.0,
                                                      "rope_theta": 1000000.0}},
                  pad_token_id=0, bos_token_id=2, eos_token_id=1)),
    dict(name="phi3_tiny", model_type="phi3", dtype="bfloat16", seed=25, sliding=True,
         cfg=dict(intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rope_theta=10000.0, sliding_window=8,
                  original_max_position_embeddings=256, tie_word_embeddings=False,
                  hidden_act="silu", pad_token_id=0)),
    dict(name="phi3_longrope_tiny", model_type="phi3", dtype="bfloat16", seed=26, short_T=8,
         cfg=dict(intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, rope_theta=10000.0, max_position_embeddings=64,
                  original_max_position_embeddings=8, partial_rotary_factor=0.75,
                  rope_scaling=dict(type="longrope",
                                    short_factor=[1.0, 1.1, 1.3, 1.7, 2.3, 3.1],
                                    long_factor=[1.0, 1.5, 2.5, 4.0, 6.5, 9.0]),
                  sliding_window=None, tie_word_embeddings=False, hidden_act="silu",
                  pad_token_id=0)),
]


def check_specs():
    names = set()
    for m in MODELS:
        assert m["name"] not in names, m["name"]
        names.add(m["name"])
        c = dict(COMMON)
        c.update(m["cfg"])
        hd = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
        assert hd % 2 == 0
        assert c["num_attention_heads"] % c["num_key_value_heads"] == 0
        if m["model_type"] == "phi3" and "rope_scaling" in c:
            half = int(hd * c.get("partial_rotary_factor", 1.0)) // 2
            assert len(c["rope_scaling"]["short_factor"]) == half, m["name"]
            assert len(c["rope_scaling"]["long_factor"]) == half, m["name"]
        if m.get("moe"):
            e = c.get("num_experts", c.get("num_local_experts"))
            assert 1 <= c["num_experts_per_tok"] <= e
        print(f"{m['name']}: {m['model_type']} {m['dtype']} layers={c['num_hidden_layers']} "
              f"heads={c['num_attention_heads']}/{c['num_key_value_heads']} head_dim={hd}")
    return True


def build_config(spec, log):
    from transformers import AutoConfig
    kw = dict(COMMON)
    kw.update(spec["cfg"])
    try:
        return AutoConfig.for_model(spec["model_type"], **kw)
    except Exception as e:  # noqa: BLE001 -- try the other rope spelling once
        log.append(f"{spec['name']}: AutoConfig failed ({e!r}); retrying with rope_parameters")
        rs = kw.pop("rope_scaling", None)
        if rs is not None:
            rp = dict(rs)
            if "type" in rp:
                rp["rope_type"] = rp.pop("type")
            rp["rope_theta"] = kw.pop("rope_theta", 10000.0)
            if "original_max_position_embeddings" in kw:
                rp["original_max_position_embeddings"] = kw["original_max_position_embeddings"]
            kw["rope_parameters"] = rp
        return AutoConfig.for_model(spec["model_type"], **kw)


def randomize(model, seed, gemma):
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                # Gemma RMSNorm multiplies by (1 + w): keep the effective weight near 1 too.
                base = 0.0 if gemma else 1.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_((0.15 if gemma else 0.5) * torch.randn(p.shape, generator=g))
            elif name.endswith("gate.weight") and "proj" not in name:
                # MoE routers: spread the logits so routing is decisive (no near-ties).
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))


def router_hooks(model, store):
    """Forward hooks on every MoE router (module path ending in 'mlp.gate' / 'block_sparse_moe.gate')."""
    import torch
    handles = []
    for name, mod in model.named_modules():
        if not (name.endswith(".mlp.gate") or name.endswith(".block_sparse_moe.gate")):
            continue
        layer = int(name.split(".layers.")[1].split(".")[0])

        def hook(_m, _inp, out, layer=layer):
            rec = {}
            if isinstance(out, tuple) and len(out) == 3:
                logits, scores, idx = out
                rec["source"] = "router output (logits, weights, ids)"
                if scores.dim() == 2 and scores.shape[1] != idx.shape[1]:
                    # dense [tokens x E] scores: gather the selected
                    scores = scores.gather(1, idx)
                rec["ids"] = idx.tolist()
                rec["weights"] = scores.float().tolist()
            else:
                logits = out[0] if isinstance(out, tuple) else out
                rec["source"] = "router logits; softmax + topk recomputed by the script"
            rec["logits"] = logits.reshape(-1, logits.shape[-1]).float().tolist()
            store[str(layer)] = rec
        handles.append(mod.register_forward_hook(hook))
    return handles


def tensor_table(path):
    from safetensors import safe_open
    out = {}
    with safe_open(path, "pt") as f:
        for k in f.keys():
            out[k] = list(f.get_slice(k).get_shape())
    return out


def unfuse_if_needed(d, spec, names, log):
    """If transformers wrote fused 3-D experts, rewrite per-expert 2-D tensors (the Hub layout)."""
    import torch
    from safetensors.torch import load_file, save_file
    fused = [k for k, s in names.items() if len(s) == 3]
    if not fused:
        return False
    log.append(f"{spec['name']}: transformers wrote FUSED 3-D expert tensors {fused}; rewriting "
               "the per-expert 2-D layout of published checkpoints (fp4q reads that one)")
    sd = load_file(os.path.join(d, "model.safetensors"))
    out = {}
    mixtral = spec["model_type"] == "mixtral"
    for k, v in sd.items():
        if k.endswith("experts.gate_up_proj"):
            pre = k[: -len("gate_up_proj")]
            inter = v.shape[1] // 2
            for e in range(v.shape[0]):
                g, u = v[e, :inter], v[e, inter:]
                if mixtral:
                    pre2 = pre.replace("mlp.experts.", "block_sparse_moe.experts.")
                    out[f"{pre2}{e}.w1.weight"] = g.contiguous()
                    out[f"{pre2}{e}.w3.weight"] = u.contiguous()
                else:
                    out[f"{pre}{e}.gate_proj.weight"] = g.contiguous()
                    out[f"{pre}{e}.up_proj.weight"] = u.contiguous()
        elif k.endswith("experts.down_proj"):
            pre = k[: -len("down_proj")]
            for e in range(v.shape[0]):
                if mixtral:
                    pre2 = pre.replace("mlp.experts.", "block_sparse_moe.experts.")
                    out[f"{pre2}{e}.w2.weight"] = v[e].contiguous()
                else:
                    out[f"{pre}{e}.down_proj.weight"] = v[e].contiguous()
        elif mixtral and k.endswith("mlp.gate.weight"):
            out[k.replace("mlp.gate.weight", "block_sparse_moe.gate.weight")] = v
        else:
            out[k] = v
    save_file(out, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    return True


def write_f32(path, t):
    t = t.float().contiguous().flatten().tolist()
    with open(path, "wb") as f:
        f.write(struct.pack("<%df" % len(t), *t))


def make_tiny(spec, out_dir, log):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    dt = getattr(torch, spec["dtype"])
    torch.manual_seed(spec["seed"])
    cfg = build_config(spec, log)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float()
    randomize(model, spec["seed"], spec.get("gemma", False))
    model = model.to(dt)
    d = os.path.join(out_dir, spec["name"])
    model.save_pretrained(d)
    for extra in ("generation_config.json",):
        p = os.path.join(d, extra)
        if os.path.exists(p):
            os.remove(p)
    names = tensor_table(os.path.join(d, "model.safetensors"))
    log.append(f"{spec['name']}: saved {len(names)} tensors; sample "
               f"{sorted(names.items())[:6]} ... experts: "
               f"{[k for k in sorted(names) if 'expert' in k][:6]}")
    unfused = unfuse_if_needed(d, spec, names, log) if spec.get("moe") else False
    if unfused:
        names_written = names
        names = tensor_table(os.path.join(d, "model.safetensors"))
    m32, info = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                                     output_loading_info=True)
    m32.eval()
    bad = {k: v for k, v in info.items() if v}
    log.append(f"{spec['name']}: loading info {bad}")
    assert not info.get("missing_keys") and not info.get("unexpected_keys"), bad
    g = torch.Generator().manual_seed(1000 + spec["seed"])
    ids = torch.randint(3, VOCAB, (1, T_INPUT), generator=g)
    ids[0, 0] = spec["cfg"].get("bos_token_id", 1)
    routing = {}
    handles = router_hooks(m32, routing) if spec.get("moe") else []
    with torch.no_grad():
        logits = m32(ids).logits[0].float().contiguous()
    for h in handles:
        h.remove()
    # float64 forward: only a diagnostic of the float32 golden's own rounding. transformers 5.17's
    # MoE experts run through torch grouped_mm, which refuses float64 ("Expected mat_a to be
    # Float32, BFloat16 or Float16"): then the diagnostic is recorded as unavailable.
    try:
        with torch.no_grad():
            m64 = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64, attn_implementation="eager")
            m64.eval()
            l64 = m64(ids).logits[0]
        diff64 = (logits.double() - l64).abs().max().item()
    except RuntimeError as e:
        diff64 = None
        log.append(f"{spec['name']}: float64 diagnostic unavailable: {e}")
    write_f32(os.path.join(d, "golden_logits.bin"), logits)
    meta = dict(name=spec["name"], model_type=spec["model_type"], storage_dtype=spec["dtype"],
                input_ids=ids[0].tolist(), T=T_INPUT, vocab=VOCAB, logits_file="golden_logits.bin",
                logits_layout="float32 little-endian row-major [T x vocab]",
                fp32_vs_fp64_max_abs=diff64, max_abs_logit=logits.abs().max().item(),
                tensor_names=names, experts_unfused_by_script=unfused,
                torch_version=torch.__version__, transformers_version=transformers.__version__,
                seed=spec["seed"])
    if unfused:
        meta["tensor_names_as_written_by_transformers"] = names_written
    if spec.get("moe"):
        # Complete records that only had logits: softmax in float32 then topk, as the routers do.
        k = spec["cfg"]["num_experts_per_tok"]
        renorm = spec["model_type"] == "mixtral" or spec["cfg"].get("norm_topk_prob", False)
        for rec in routing.values():
            if "ids" not in rec:
                lg = torch.tensor(rec["logits"], dtype=torch.float32)
                p = torch.softmax(lg, dim=-1, dtype=torch.float32)
                w, i = torch.topk(p, k, dim=-1)
                if renorm:
                    w = w / w.sum(dim=-1, keepdim=True)
                rec["ids"], rec["weights"] = i.tolist(), w.tolist()
            # smallest gap between the k-th and (k+1)-th probability (routing decisiveness)
            lg = torch.tensor(rec["logits"], dtype=torch.float32)
            p = torch.softmax(lg, dim=-1, dtype=torch.float32)
            srt = torch.sort(p, dim=-1, descending=True).values
            if srt.shape[1] > k:
                rec["min_topk_gap"] = (srt[:, k - 1] - srt[:, k]).min().item()
        with open(os.path.join(d, "routing.json"), "w") as f:
            json.dump(dict(input_ids=ids[0].tolist(), num_experts_per_tok=k, renormalize=renorm,
                           layers=routing), f)
        counts = {l: [sum(e in row for row in r["ids"]) for e in range(len(r["logits"][0]))]
                  for l, r in routing.items()}
        log.append(f"{spec['name']}: routing layers {sorted(routing)}; tokens per expert {counts}; "
                   f"min top-k gaps {[r.get('min_topk_gap') for r in routing.values()]}")
    if spec.get("short_T"):
        sids = ids[:, : spec["short_T"]]
        with torch.no_grad():
            sl = m32(sids).logits[0].float()
        write_f32(os.path.join(d, "golden_short_logits.bin"), sl)
        meta.update(short_input_ids=sids[0].tolist(), short_T=spec["short_T"],
                    short_logits_file="golden_short_logits.bin")
        # The same rows from the long pass differ (other rope factors): prove both regimes differ.
        meta["short_vs_long_prefix_max_abs"] = (sl - logits[: spec["short_T"]]).abs().max().item()
        log.append(f"{spec['name']}: short ({spec['short_T']}) vs long-pass prefix logits max diff "
                   f"{meta['short_vs_long_prefix_max_abs']:.4g}")
    rot = getattr(m32.model, "rotary_emb", None)
    if rot is not None:
        inv = {k: v.float().tolist() for k, v in rot.named_buffers() if k.endswith("inv_freq")}
        meta["rotary_inv_freq"] = inv
        meta["rotary_attention_scaling"] = {k: float(v) for k, v in vars(rot).items()
                                            if k.endswith("attention_scaling")}
    if spec.get("sliding"):
        import copy
        c2 = copy.deepcopy(m32.config)
        c2.sliding_window = None
        if hasattr(c2, "layer_types") and c2.layer_types:
            c2.layer_types = ["full_attention"] * len(c2.layer_types)
        try:
            m_nw = AutoModelForCausalLM.from_config(c2, attn_implementation="eager").float()
            m_nw.load_state_dict(m32.state_dict(), strict=False)
            m_nw.eval()
            with torch.no_grad():
                lnw = m_nw(ids).logits[0].float()
            meta["no_window_max_abs_diff"] = (lnw - logits).abs().max().item()
            log.append(f"{spec['name']}: logits without the sliding window differ by "
                       f"{meta['no_window_max_abs_diff']:.4g} (the window is in effect)")
        except Exception as e:  # noqa: BLE001 -- diagnostic only
            log.append(f"{spec['name']}: no-window comparison skipped ({e!r})")
    if spec.get("gemma"):
        import copy
        c3 = copy.deepcopy(m32.config)
        c3.attn_logit_softcapping = None
        m_nc = AutoModelForCausalLM.from_config(c3, attn_implementation="eager").float()
        m_nc.load_state_dict(m32.state_dict(), strict=False)
        m_nc.eval()
        with torch.no_grad():
            lnc = m_nc(ids).logits[0].float()
        meta["attn_softcap_effect_max_abs"] = (lnc - logits).abs().max().item()
        log.append(f"{spec['name']}: removing attn_logit_softcapping changes the logits by "
                   f"{meta['attn_softcap_effect_max_abs']:.4g} (0 = transformers ignores it)")
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(meta, f, indent=1)
    with open(os.path.join(d, "config.json")) as f:
        log.append(f"{spec['name']} config.json: {f.read()}")
    log.append(f"{spec['name']}: max|logit| {meta['max_abs_logit']:.4f} fp32-vs-fp64 " + (f"{diff64:.3g}" if diff64 is not None else "n/a"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=".", help="output directory ($OUT on the device)")
    ap.add_argument("--check", action="store_true", help="validate and list the specs (no torch)")
    ap.add_argument("--only", default="", help="comma-separated model names (default: all)")
    ap.add_argument("--no-tar", action="store_true", help="leave tiny_models/ unpacked")
    a = ap.parse_args()
    if a.check:
        check_specs()
        return 0
    import torch
    import transformers
    check_specs()
    work = os.path.join(a.out, "tiny_models")
    os.makedirs(work, exist_ok=True)
    torch.set_num_threads(4)
    log = [f"torch {torch.__version__} transformers {transformers.__version__}"]
    t0 = time.time()
    only = set(filter(None, a.only.split(",")))
    failed = []
    try:
        for spec in MODELS:
            if only and spec["name"] not in only:
                continue
            try:
                make_tiny(spec, work, log)
            except Exception:  # noqa: BLE001 -- keep going, report everything in one run
                failed.append(spec["name"])
                log.append(f"{spec['name']} FAILED:\n{traceback.format_exc()}")
    finally:
        log.append(f"done in {time.time() - t0:.1f} s; failed: {failed}")
        with open(os.path.join(a.out, "golden_models_moe_log.txt"), "w") as f:
            f.write("\n".join(log) + "\n")
        print("\n".join(log))
    total = 0
    for r, _, fs in os.walk(work):
        for fn in fs:
            total += os.path.getsize(os.path.join(r, fn))
    print(f"total bytes {total}")
    if not a.no_tar:
        tar_path = os.path.join(a.out, "tiny_models_moe.tar.gz")
        with tarfile.open(tar_path, "w:gz") as tf:
            for spec in MODELS:
                p = os.path.join(work, spec["name"])
                if os.path.isdir(p):
                    tf.add(p, arcname=os.path.join("tiny_models", spec["name"]))
        import shutil
        shutil.rmtree(work)
        print(f"wrote {tar_path} ({os.path.getsize(tar_path)} bytes)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
