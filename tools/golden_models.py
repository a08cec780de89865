#!/usr/bin/env python3
"""Golden files for the fp4q model module (tests/model/), produced with PyTorch + transformers.

Run ONCE on the GPU machine (the `run` tool; everything here runs on the CPU in float32, which is
exact IEEE fp32 arithmetic without TF32), from the repository root:

    python3 tools/golden_models.py "$OUT"

Writes, under <out>/tiny_models/:
  <name>/config.json, <name>/model.safetensors   tiny random-initialised HF models (fixed seeds),
                                                 one per supported architecture / feature:
      qwen3_tiny   Qwen3ForCausalLM, bf16 storage, q_norm/k_norm, 8 heads x head_dim 16 (= 128 != hidden
                   64), 2 KV heads, tied embeddings
      qwen2_tiny   Qwen2ForCausalLM, fp16 storage, q/k/v bias, 4 heads / 2 KV heads, tied embeddings
      mistral_tiny MistralForCausalLM, bf16 storage, 4 heads / 1 KV head (MQA), sliding_window 4096
                   (larger than any sequence used: not in effect), untied lm_head, head_dim null
      llama3_tiny  LlamaForCausalLM, bf16 storage, llama3 rope scaling (factor 8, low 1, high 4,
                   original_max_position_embeddings 64, theta 10000 -> all three frequency regimes
                   occur for head_dim 16), 4 heads / 2 KV heads, untied lm_head
  <name>/golden.json        {"input_ids": [T ints], "T", "vocab", "logits_file", "storage_dtype",
                             "inv_freq": HF's rotary inv_freq (float32 values), versions,
                             "fp32_vs_fp64_max_abs": max |logits_fp32 - logits_fp64| (HF itself)}
  <name>/golden_logits.bin  float32 little-endian, row-major [T x vocab]: HF logits of the model
                            reloaded from disk with dtype=float32 (storage bf16/fp16 -> fp32 exactly),
                            eager attention, CPU.
  ppl_ids.json              {"ids": [...]}: AutoTokenizer(stories260K) on the first 20000 characters
                            (Python code points) of data/text/wikitext2-test.txt, default
                            add_special_tokens (LlamaTokenizer: one BOS at the start).
  stories260K_ppl.json      for seqlen 128 and 512: non-overlapping windows over those ids (remainder
                            dropped), NLL of positions 1..L-1 of each window from float32 logits,
                            accumulated in float64: {"windows", "tokens", "mean_nll", "ppl",
                            "window_nll_sum": [per-window float64 sums]}.
Sizes: all files together stay below 1 MB.
With FP4Q_GOLDEN_DEBUG=1 also <out>/debug/<name>_hidden.bin: HF output_hidden_states
[(n_layers+1) x T x hidden] float32 (debugging aid, not committed; note HF's last entry is after
the final norm).
"""
import json
import math
import os
import struct
import sys
import traceback

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T_INPUT = 16
VOCAB = 256

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    bos_token_id=1,
    eos_token_id=2,
)

MODELS = [
    dict(name="qwen3_tiny", model_type="qwen3", dtype=torch.bfloat16, seed=11,
         cfg=dict(num_attention_heads=8, num_key_value_heads=2, head_dim=16, rope_theta=1000000.0,
                  tie_word_embeddings=True, attention_bias=False, use_sliding_window=False)),
    dict(name="qwen2_tiny", model_type="qwen2", dtype=torch.float16, seed=12,
         cfg=dict(num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                  tie_word_embeddings=True, use_sliding_window=False)),
    dict(name="mistral_tiny", model_type="mistral", dtype=torch.bfloat16, seed=13,
         cfg=dict(num_attention_heads=4, num_key_value_heads=1, head_dim=None, rope_theta=10000.0,
                  sliding_window=4096, tie_word_embeddings=False)),
    dict(name="llama3_tiny", model_type="llama", dtype=torch.bfloat16, seed=14,
         cfg=dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10000.0,
                  rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                    high_freq_factor=4.0, original_max_position_embeddings=64),
                  tie_word_embeddings=False, attention_bias=False, mlp_bias=False)),
]


def llama3_inv_freq_expected(theta, dim, factor, low, high, old_ctx):
    out = []
    for i in range(0, dim, 2):
        f = 1.0 / theta ** (i / dim)
        wl = 2 * math.pi / f
        if wl < old_ctx / high:
            out.append(f)
        elif wl > old_ctx / low:
            out.append(f / factor)
        else:
            s = (old_ctx / wl - low) / (high - low)
            out.append((1 - s) * f / factor + s * f)
    return out


def build_config(spec, log):
    kw = dict(COMMON)
    kw.update(spec["cfg"])
    try:
        return AutoConfig.for_model(spec["model_type"], **kw)
    except Exception as e:  # noqa: BLE001 -- new-style rope_parameters fallback
        log.append(f"{spec['name']}: AutoConfig with legacy keys failed ({e!r}); using rope_parameters")
        rp = dict(kw.pop("rope_scaling", None) or {"rope_type": "default"})
        rp["rope_theta"] = kw.pop("rope_theta")
        kw["rope_parameters"] = rp
        return AutoConfig.for_model(spec["model_type"], **kw)


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))


def rotary_inv_freq(model):
    rot = model.model.rotary_emb
    return rot.inv_freq.detach().float().cpu().tolist()


def make_tiny(spec, out_dir, log):
    torch.manual_seed(spec["seed"])
    cfg = build_config(spec, log)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float()
    if spec["name"] == "llama3_tiny":
        inv = rotary_inv_freq(model)
        exp = llama3_inv_freq_expected(10000.0, 16, 8.0, 1.0, 4.0, 64)
        err = max(abs(a - b) / b for a, b in zip(inv, exp))
        log.append(f"llama3 inv_freq rel err vs formula at build: {err:.3g}")
        if err > 1e-5:
            # transformers >= 5 may want the new-style rope_parameters; rebuild with it.
            kw = dict(COMMON)
            kw.update(spec["cfg"])
            rs = kw.pop("rope_scaling")
            rp = dict(rs)
            rp["rope_theta"] = kw.pop("rope_theta")
            kw["rope_parameters"] = rp
            cfg = AutoConfig.for_model(spec["model_type"], **kw)
            model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float()
            inv = rotary_inv_freq(model)
            err = max(abs(a - b) / b for a, b in zip(inv, exp))
            log.append(f"llama3 inv_freq rel err after rope_parameters rebuild: {err:.3g}")
            assert err < 1e-5, "llama3 rope scaling not applied"
    randomize(model, spec["seed"])
    model = model.to(spec["dtype"])
    d = os.path.join(out_dir, spec["name"])
    model.save_pretrained(d)
    for extra in ("generation_config.json",):
        p = os.path.join(d, extra)
        if os.path.exists(p):
            os.remove(p)

    # Reload from disk in float32 (exact widening of the stored bf16/fp16 values).
    m32, info = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                                     output_loading_info=True)
    m32.eval()
    bad = {k: v for k, v in info.items() if v}
    log.append(f"{spec['name']}: loading info {bad}")
    assert not info.get("missing_keys") and not info.get("unexpected_keys"), bad
    g = torch.Generator().manual_seed(1000 + spec["seed"])
    ids = torch.randint(3, VOCAB, (1, T_INPUT), generator=g)
    ids[0, 0] = 1
    with torch.no_grad():
        logits = m32(ids).logits[0].float().contiguous()
        m64 = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64, attn_implementation="eager")
        m64.eval()
        l64 = m64(ids).logits[0]
    diff64 = (logits.double() - l64).abs().max().item()
    if os.environ.get("FP4Q_GOLDEN_DEBUG"):
        # Not committed: per-layer hidden states [(n_layers+1) x T x hidden] float32 for debugging.
        dbg = os.path.join(os.path.dirname(out_dir), "debug")
        os.makedirs(dbg, exist_ok=True)
        with torch.no_grad():
            hs = torch.stack(m32(ids, output_hidden_states=True).hidden_states)[:, 0].float().contiguous()
        with open(os.path.join(dbg, spec["name"] + "_hidden.bin"), "wb") as f:
            f.write(struct.pack("<%df" % hs.numel(), *hs.flatten().tolist()))
    with open(os.path.join(d, "golden_logits.bin"), "wb") as f:
        f.write(struct.pack("<%df" % logits.numel(), *logits.flatten().tolist()))
    meta = dict(
        name=spec["name"], model_type=spec["model_type"], storage_dtype=str(spec["dtype"]),
        input_ids=ids[0].tolist(), T=T_INPUT, vocab=VOCAB, logits_file="golden_logits.bin",
        logits_layout="float32 little-endian row-major [T x vocab]",
        inv_freq=rotary_inv_freq(m32), fp32_vs_fp64_max_abs=diff64,
        max_abs_logit=logits.abs().max().item(),
        torch_version=torch.__version__, transformers_version=transformers.__version__,
        seed=spec["seed"])
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(meta, f, indent=1)
    with open(os.path.join(d, "config.json")) as f:
        log.append(f"{spec['name']} config.json: {f.read()}")
    log.append(f"{spec['name']}: max|logit| {meta['max_abs_logit']:.4f} fp32-vs-fp64 {diff64:.3g}")


def stories_ppl(out_dir, log):
    mdir = os.path.join(ROOT, "data", "models", "stories260K")
    tok = AutoTokenizer.from_pretrained(mdir)
    with open(os.path.join(ROOT, "data", "text", "wikitext2-test.txt"), encoding="utf-8") as f:
        text = f.read()[:20000]
    ids = tok(text).input_ids
    log.append(f"ppl ids: {len(ids)} tokens, first {ids[:10]}, tokenizer {type(tok).__name__}")
    with open(os.path.join(out_dir, "ppl_ids.json"), "w") as f:
        json.dump(dict(source="data/text/wikitext2-test.txt, first 20000 characters",
                       tokenizer="AutoTokenizer(data/models/stories260K), add_special_tokens default",
                       transformers_version=transformers.__version__, ids=ids), f)
    model = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    res = {}
    for L in (128, 512):
        n = len(ids) // L
        sums = []
        with torch.no_grad():
            for w in range(n):
                x = torch.tensor([ids[w * L:(w + 1) * L]])
                lg = model(x).logits[0].double()
                lp = torch.log_softmax(lg, dim=-1)
                tgt = x[0, 1:]
                nll = -lp[:-1].gather(1, tgt[:, None])[:, 0]
                sums.append(nll.sum().item())
        tokens = n * (L - 1)
        mean = sum(sums) / tokens
        res[str(L)] = dict(windows=n, tokens=tokens, mean_nll=mean, ppl=math.exp(mean), window_nll_sum=sums)
        log.append(f"stories260K seqlen {L}: windows {n} tokens {tokens} mean_nll {mean:.6f} ppl {math.exp(mean):.4f}")
    with open(os.path.join(out_dir, "stories260K_ppl.json"), "w") as f:
        json.dump(dict(ids_file="ppl_ids.json", method="non-overlapping windows, remainder dropped, "
                       "NLL of positions 1..L-1 per window, fp32 model/logits, float64 log_softmax and sums",
                       transformers_version=transformers.__version__, torch_version=torch.__version__,
                       seqlens=res), f, indent=1)


def main():
    out = os.path.join(sys.argv[1] if len(sys.argv) > 1 else ".", "tiny_models")
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(4)
    log = [f"torch {torch.__version__} transformers {transformers.__version__}"]
    try:
        for spec in MODELS:
            try:
                make_tiny(spec, out, log)
            except Exception:  # noqa: BLE001 -- keep going, report everything in one run
                log.append(f"{spec['name']} FAILED:\n{traceback.format_exc()}")
        stories_ppl(out, log)
    finally:
        with open(os.path.join(out, "golden_log.txt"), "w") as f:
            f.write("\n".join(log) + "\n")
        print("\n".join(log))
    total = 0
    for r, _, fs in os.walk(out):
        for fn in fs:
            total += os.path.getsize(os.path.join(r, fn))
    print(f"total bytes {total}")


if __name__ == "__main__":
    main()
