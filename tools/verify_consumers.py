#!/usr/bin/env python3
"""Runs fp4q's outputs through the REAL runtime libraries and compares with fp4q's predictions.

Runs on the GPU machine (PyTorch, transformers, triton); installs nothing. Input: a folder made
here by tools/make_consumer_exports.sh (manifest.json, ppl_ids.json, logits_ids.json and, per
case, ct/ = compressed-tensors layout, fpq/ = fp-quant-pseudo layout with float32 dqweight, and
fp4q's logits per emulated runtime and dtype).

Checks, per case (format x method x rotation, all W4A4):
  original   the unquantized model in plain transformers, fp32 and bf16 (eager attention) vs
             `fp4q eval --dtype f32|bf16`: fp4q's bf16 emulation alone.
  fp_quant   transformers.AutoModelForCausalLM on fpq/ (quant_method fp_quant,
             pseudoquantization: true -> FPQuantLinear + FP-Quant's Triton kernels), eager
             attention; bf16 (as transformers requires) and fp32 (the bf16-loaded model cast to
             float32 with every tensor re-read exactly from the checkpoint, Triton dots in IEEE
             fp32 via TRITON_F32_DEFAULT=ieee). Logits on logits_ids and perplexity on ppl_ids vs
             `fp4q eval --runtime fp-quant --dtype f32|bf16`.
  ct         compressed-tensors' own code, imported from its source tree (with stand-ins for
             pydantic/loguru when they are not installed, logged): weights decompressed by
             NVFP4PackedCompressor/MXFP4PackedCompressor.decompress (compared with fp4q's dqweight),
             then a transformers model from ct/ config (quantization_config dropped) with those
             weights, the online rotation by compressed-tensors' HadamardTransform and the
             activation fake-quantisation by compute_dynamic_scales_and_zp + fake_quantize as
             forward pre-hooks (what set_forward_quantized does), for two argument sets: "preset"
             (scale_dtype float8_e4m3fn / uint8, as compressed-tensors' NVFP4/MXFP4 presets and
             vLLM) and "as-configured" (scale_dtype absent, as parsed from fp4q's config.json).
             vs `fp4q eval --runtime compressed-tensors --dtype f32|bf16`.
  kernels    fp_quant's forward_pseudoquantize on random and tie-crafted activations vs the
             documented fp-quant rule written here in torch (count of differing elements), with the
             GPU's own reciprocal / floor(log2) and with RN(1/b); probes of Triton's float32 division
             (the reciprocal of every bf16 mantissa -> OUT_DIR/triton_rcp_table.inc, compared with
             fp4q's src/pipeline/triton_rcp_table.inc), of floor(log2) near powers of two and of
             MXFP4's scale expression.
  captured   (per case and dtype) the kernel vs that rule on every FPQuantLinear's real input.
  dumps      (when tools/make_consumer_dumps.sh ran) fp4q's own activation transforms of the same
             logits forward: the kernel on fp4q's inputs vs fp4q's outputs (fp4q's C++ rule, chaos-
             free, must be 0), the library's inputs/x̂ vs fp4q's group by group (the first diverging
             Linear), and cuBLAS's GEMM vs fp4q's summation order on fp4q's x̂.
  floor      the library's perplexity under other float32 summation orders (all windows batched;
             every Linear in fp4q's seq-fma order; every Linear in float64) next to fp4q's under
             other OpenBLAS kernels (fp4q_order_floor.json): the floor below which a CPU emulation
             of a W4A4 model cannot promise agreement (docs/issue10-notes.md).
Targets (issue 10): fp32 logits relative L2 <= 1e-5 and perplexity within 0.01 %; bf16
perplexity within 0.05 %.

  python3 tools/verify_consumers.py --root .device/consumers/stories260K \
      --out $OUT/consumers.json --log $OUT/consumers_log.txt [--ct-src .ref/compressed-tensors/src]
  python3 tools/verify_consumers.py --kernels-only --skip-ct --out $OUT/consumers.json --log $OUT/consumers_log.txt

fp_quant must be importable (e.g. pip install --no-deps --no-index --no-build-isolation
--target /tmp/site .ref/FP-Quant/inference_lib and PYTHONPATH=/tmp/site, or --site DIR).
--dry-run only reads the manifest and checks the files (runs without torch).
"""
import argparse
import json
import math
import os
import sys
import time
import traceback
import types

# Before triton compiles anything: fp32 tl.dot in IEEE fp32, not TF32 (only affects fp32 inputs).
os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")

TARGETS = {"f32_rel_l2": 1e-5, "f32_ppl_rel": 1e-4, "bf16_ppl_rel": 5e-4}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default="", help="folder written by tools/make_consumer_exports.sh (required unless "
                   "--kernels-only)")
    p.add_argument("--out", default="consumers.json", help="JSON results")
    p.add_argument("--log", default="consumers_log.txt", help="human-readable log")
    p.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--site", default="/tmp/site", help="extra sys.path entry holding fp_quant (if it exists)")
    p.add_argument("--ct-src", default="", help="compressed-tensors source tree (its src/ folder)")
    p.add_argument("--skip-fpq", action="store_true")
    p.add_argument("--skip-ct", action="store_true")
    p.add_argument("--skip-kernels", action="store_true")
    p.add_argument("--skip-floor", action="store_true",
                   help="skip the library's perplexity under other summation orders (batched, seq-fma, float64 Linears)")
    p.add_argument("--kernels-only", action="store_true",
                   help="only the kernel checks and probes (reciprocal table, floor(log2) bands, MXFP4 band groups): "
                        "no model, no --root needed")
    p.add_argument("--dry-run", action="store_true", help="check the manifest and files only (no torch)")
    a = p.parse_args(argv)
    if not a.root and not a.kernels_only:
        p.error("--root is required (unless --kernels-only)")
    return a


class Log:
    def __init__(self, path):
        self.f = open(path, "w")

    def __call__(self, *a):
        s = " ".join(str(x) for x in a)
        print(s, flush=True)
        self.f.write(s + "\n")
        self.f.flush()


def load_manifest(root, cases_filter):
    man = json.load(open(os.path.join(root, "manifest.json")))
    want = [c for c in cases_filter.split(",") if c]
    if want:
        man["cases"] = [c for c in man["cases"] if c["name"] in want]
    missing = []
    for d in man.get("original", {}).get("fp4q", {}).values():
        if not os.path.exists(os.path.join(root, d["logits"])):
            missing.append(d["logits"])
    for rel in (man["ppl_ids"], man["logits_ids"]):
        if not os.path.exists(os.path.join(root, rel)):
            missing.append(rel)
    for c in man["cases"]:
        for rel in (c["ct"] + "/config.json", c["fpq"] + "/config.json"):
            if not os.path.exists(os.path.join(root, rel)):
                missing.append(rel)
        for rt in c["fp4q"].values():
            for d in rt.values():
                if not os.path.exists(os.path.join(root, d["logits"])):
                    missing.append(d["logits"])
    return man, missing


# ---------------------------------------------------------------------------------------------
# comparisons


def rel_l2(a, b):
    import torch
    a = a.double()
    b = b.double()
    return float(torch.linalg.norm(a - b) / max(float(torch.linalg.norm(b)), 1e-300))


def read_logits(path, vocab):
    import numpy as np
    import torch
    a = np.fromfile(path, dtype="<f4")
    return torch.from_numpy(a.reshape(-1, vocab).copy())


@__import__("contextlib").contextmanager
def no_grad():
    import torch
    with torch.no_grad():
        yield


def model_logits(model, ids, device):
    import torch
    with no_grad():
        x = torch.tensor([ids], dtype=torch.long, device=device)
        return model(input_ids=x, use_cache=False).logits[0].float().cpu()


def perplexity(model, ids, seqlen, device):
    """Non-overlapping windows, NLL of positions 1..seqlen-1 in float64 (as fp4q eval --ids)."""
    import torch
    total, tokens = 0.0, 0
    for w in range(len(ids) // seqlen):
        win = ids[w * seqlen:(w + 1) * seqlen]
        lg = model_logits(model, win, device).double()
        tgt = torch.tensor(win[1:], dtype=torch.long)
        total += float(torch.nn.functional.cross_entropy(lg[:-1], tgt, reduction="sum"))
        tokens += seqlen - 1
    return math.exp(total / tokens), total / tokens, tokens


def repeat_check(log, model, ids, seqlen, device, ppl, tag):
    """The library's own run-to-run reproducibility: the same perplexity computed again in the same
    process. A W4A4 model amplifies any nondeterministic last bit (a flipped FP4 rounding), so a
    difference here bounds how closely any emulation can match the library."""
    again, _, _ = perplexity(model, ids, seqlen, device)
    r = {"ppl_first": ppl, "ppl_again": again, "rel": (again - ppl) / ppl}
    log(f"  library repeat {tag}: ppl {ppl:.6f} then {again:.6f} ({100 * r['rel']:+.5f} %)")
    return r


def compare(log, tag, logits, ppl, pred, vocab, root, target_rel_l2, target_ppl):
    """logits/ppl from the library vs fp4q's prediction entry {logits, ppl}."""
    ref = read_logits(os.path.join(root, pred["logits"]), vocab)
    r = {"rel_l2": rel_l2(logits, ref), "top1_agree": float((logits.argmax(-1) == ref.argmax(-1)).double().mean()),
         "ppl_lib": ppl, "ppl_fp4q": pred["ppl"], "ppl_rel": (pred["ppl"] - ppl) / ppl}
    ok = r["rel_l2"] <= target_rel_l2 if target_rel_l2 else True
    ok = ok and abs(r["ppl_rel"]) <= target_ppl
    r["pass"] = bool(ok)
    log(f"  {tag:<44} rel_l2 {r['rel_l2']:.3e}  top1 {r['top1_agree']:.4f}  ppl lib {ppl:.4f}  fp4q "
        f"{pred['ppl']:.4f}  ({100 * r['ppl_rel']:+.4f} %)  {'PASS' if ok else 'FAIL'}")
    return r


# ---------------------------------------------------------------------------------------------
# the original model in plain transformers (checks fp4q's bf16 model emulation alone)


def run_original(log, man, root, device, res):
    import torch
    from transformers import AutoModelForCausalLM
    o = man["original"]
    ppl_ids = json.load(open(os.path.join(root, man["ppl_ids"])))
    lg_ids = json.load(open(os.path.join(root, man["logits_ids"])))
    out = {}
    for tag, dt in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        if tag not in o["fp4q"]:
            continue
        model = AutoModelForCausalLM.from_pretrained(os.path.join(root, o["dir"]), dtype=dt, device_map=device,
                                                     attn_implementation="eager").eval()
        lg = model_logits(model, lg_ids, device)
        ppl, _, _ = perplexity(model, ppl_ids, man["seqlen"], device)
        out[tag] = compare(log, f"transformers {tag} (original) vs fp4q {tag}", lg, ppl, o["fp4q"][tag],
                           model.config.vocab_size, root, TARGETS["f32_rel_l2"] if tag == "f32" else None,
                           TARGETS["f32_ppl_rel"] if tag == "f32" else TARGETS["bf16_ppl_rel"])
        del model
        torch.cuda.empty_cache()
    res["original"] = out


# ---------------------------------------------------------------------------------------------
# fp_quant (transformers + FP-Quant inference_lib, pseudo-quantization)


def safetensors_dict(d, device):
    from safetensors.torch import load_file
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(d, f), device=device))
    return out


def load_exact(model, sd):
    """Copies every checkpoint tensor into the module's parameter/buffer of the same name, in the
    module's current dtype (float32 after model.float()): undoes transformers' bf16 load cast."""
    n = 0
    for mname, mod in model.named_modules():
        for local, t in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
            full = f"{mname}.{local}" if mname else local
            if full in sd and t is not None and tuple(t.shape) == tuple(sd[full].shape):
                t.data.copy_(sd[full].to(t.dtype))
                n += 1
    return n


def run_fpq_case(log, case, man, root, device, res, floor=True, order_floor=None):
    import torch
    from transformers import AutoModelForCausalLM
    from fp_quant import FPQuantLinear
    d = os.path.join(root, case["fpq"])
    ppl_ids = json.load(open(os.path.join(root, man["ppl_ids"])))
    lg_ids = json.load(open(os.path.join(root, man["logits_ids"])))
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, device_map=device,
                                                 attn_implementation="eager")
    model.eval()
    fq = [(n, m) for n, m in model.named_modules() if isinstance(m, FPQuantLinear)]
    n0, m0 = fq[0]
    info = {"fpquant_linears": len(fq), "buffers_bf16": {
        "act_global_scale": [str(m0.act_global_scale.dtype), float(m0.act_global_scale.float()[0])],
        "forward_hadamard_matrix": [str(m0.forward_hadamard_matrix.dtype),
                                    float(m0.forward_hadamard_matrix.float().abs().max())],
        "dqweight": str(m0.dqweight.dtype)}}
    log(f"  fp_quant: {len(fq)} FPQuantLinear; {n0}: act_global_scale {info['buffers_bf16']['act_global_scale']}, "
        f"max|H| {info['buffers_bf16']['forward_hadamard_matrix']}, dqweight {info['buffers_bf16']['dqweight']}")
    vocab = model.config.vocab_size
    out = {"info": info}
    lg = model_logits(model, lg_ids, device)
    ppl, nll, tok = perplexity(model, ppl_ids, man["seqlen"], device)
    out["bf16_repeat"] = repeat_check(log, model, ppl_ids, man["seqlen"], device, ppl, "bf16")
    out["bf16"] = compare(log, "fp_quant bf16 vs fp4q fp-quant bf16", lg, ppl, case["fp4q"]["fp-quant"]["bf16"],
                          vocab, root, None, TARGETS["bf16_ppl_rel"])
    try:
        out["captured_bf16"] = captured_check(log, model, lg_ids, device, "bf16")
    except Exception:  # noqa: BLE001
        log(traceback.format_exc())
    try:
        out["dumps_bf16"] = dumps_check(log, case, root, model, lg_ids, device, "bf16")
    except Exception:  # noqa: BLE001
        log(traceback.format_exc())
    if floor:
        try:
            out["floor_bf16"] = library_floor(log, model, ppl_ids, man["seqlen"], device, ppl,
                                              case["fp4q"]["fp-quant"]["bf16"]["ppl"], "bf16")
        except Exception:  # noqa: BLE001
            log(traceback.format_exc())
    out["bf16_vs_fp4q_f32"] = compare(log, "fp_quant bf16 vs fp4q fp-quant f32 (info)", lg, ppl,
                                      case["fp4q"]["fp-quant"]["f32"], vocab, root, None, float("inf"))
    # nn.Module.float directly: transformers refuses .float() on a quantized model (is_quantized).
    model = torch.nn.Module.float(model)
    copied = load_exact(model, safetensors_dict(d, device))
    log(f"  fp32: model.float() + {copied} tensors re-read exactly; act_global_scale "
        f"{float(m0.act_global_scale[0])!r}, H[0,0] {float(m0.forward_hadamard_matrix[0, 0])!r}")
    lg = model_logits(model, lg_ids, device)
    ppl, nll, tok = perplexity(model, ppl_ids, man["seqlen"], device)
    out["f32_repeat"] = repeat_check(log, model, ppl_ids, man["seqlen"], device, ppl, "fp32")
    out["f32"] = compare(log, "fp_quant fp32 vs fp4q fp-quant f32", lg, ppl, case["fp4q"]["fp-quant"]["f32"],
                         vocab, root, TARGETS["f32_rel_l2"], TARGETS["f32_ppl_rel"])
    try:
        out["captured_f32"] = captured_check(log, model, lg_ids, device, "fp32")
    except Exception:  # noqa: BLE001
        log(traceback.format_exc())
    try:
        out["dumps_f32"] = dumps_check(log, case, root, model, lg_ids, device, "f32")
    except Exception:  # noqa: BLE001
        log(traceback.format_exc())
    cpu_floor = order_floor.get(case["name"], {}).get("fp-quant") if order_floor else None
    if cpu_floor:  # the library's logits vs fp4q's under other CPU summation orders
        for core, v in cpu_floor.items():
            v["lib_rel_l2"] = rel_l2(lg, read_logits(os.path.join(root, v["logits"]), vocab))
        log("  fp_quant fp32 logits vs fp4q's under other OpenBLAS orders: " + ", ".join(
            f"{core} rel_l2 {v['lib_rel_l2']:.3e}" for core, v in cpu_floor.items())
            + f" (vs fp4q's own: {out['f32']['rel_l2']:.3e})")
    if floor:
        try:
            out["floor_f32"] = library_floor(log, model, ppl_ids, man["seqlen"], device, ppl,
                                             case["fp4q"]["fp-quant"]["f32"]["ppl"], "fp32", cpu_floor)
        except Exception:  # noqa: BLE001
            log(traceback.format_exc())
    out["f32_vs_fp4q_ct"] = compare(log, "fp_quant fp32 vs fp4q compressed-tensors f32 (info)", lg, ppl,
                                    case["fp4q"]["compressed-tensors"]["f32"], vocab, root, None, float("inf"))
    res["fp_quant"] = out
    del model
    torch.cuda.empty_cache()


def floor_log2_rn32(a):
    """floor(RN32(log2 a)): log2 in float64, rounded once to float32, floored: fp4q's model of
    MXFP4's `tl.floor(tl.log2(amax))` (src/pipeline/act_quant.cpp triton_floor_log2; issue 10)."""
    import torch
    return torch.floor(torch.log2(a.double()).float())


def floor_log2_exact(a):
    """The exact floor(log2 a) (frexp): fp4q's MXFP4 exponent before the third device run."""
    import torch
    return (torch.frexp(a.float())[1] - 1).float()


def fp4q_rcp(b):
    """fp4q's model of Triton's reciprocal, from its table (src/pipeline/triton_rcp_table.inc):
    the entry of b's bf16 mantissa scaled by 2^-e for a bf16-exact normal b, RN(1/b) otherwise."""
    import torch
    tab = read_rcp_table()
    if len(tab) != 128:
        raise RuntimeError(f"{RCP_TABLE}: {len(tab)} entries, not 128")
    t = torch.tensor([tab[i][0] for i in range(128)], dtype=torch.int64, device=b.device)
    tabf = (t - (t >= 2 ** 31).long() * 2 ** 32).int().view(torch.float32)
    bf = b.float().contiguous()
    u = bf.view(torch.int32).long() & 0xffffffff
    e = (u >> 23) & 0xff
    use = ((u & 0xffff) == 0) & (e >= 2) & (e <= 252)
    r = tabf[(u >> 16) & 0x7f] * torch.exp2((127 - e).float())
    r = torch.where((u >> 31) == 1, -r, r)
    return torch.where(use, r, 1.0 / bf)


def fpq_rule(x, H, gs, fmt, rcp=None, floor_log2=None):
    """The fp-quant rule of docs/FORMAT.md §13 in torch (reference for the kernels). Triton's
    float32 `/` is div.full.f32 = fl(a * rcp(b)); `rcp` maps a divisor tensor to its reciprocal:
    None = RN(1/b) (torch's CUDA 1.0 / b is IEEE), TritonOps.rcp = the GPU's own reciprocal
    (MUFU.RCP, not always RN: issue 10), or fp4q_rcp = fp4q's table. `floor_log2` likewise (None:
    torch.floor(torch.log2), TritonOps.floor_log2, floor_log2_rn32 = fp4q's model).
    The float32 rotation is tl.dot 'ieee' = a sequential fma over k (each step summed in float64
    and rounded once: the fma, barring a rare double rounding for h >= 32); bf16 inputs: exact
    products summed, rounded once."""
    import torch
    h = H.shape[0]
    xb = x.reshape(-1, h)
    if x.dtype == torch.float32:
        Hd = H.double()
        acc = torch.zeros(xb.shape, dtype=torch.float32, device=x.device)
        for k in range(h):
            acc = (acc.double() + xb[:, k:k + 1].double() * Hd[k:k + 1, :]).float()
        xh = acc
    else:
        xh = (xb.double() @ H.double()).float()
    xh = xh.reshape(-1, 16 if fmt == "nvfp4" else 32)
    a = xh.abs().amax(-1, keepdim=True)
    thr = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], device=x.device)
    grid = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6], device=x.device)

    def tz(v):
        idx = (v.abs().unsqueeze(-1) > thr).sum(-1)
        q = grid[idx]
        return torch.where(v > 0, q, -q)

    def dv(num, den):  # div.full.f32
        den = den.float().expand_as(num) if torch.is_tensor(den) else torch.full_like(num, den)
        r = (1.0 / den) if rcp is None else rcp(den.contiguous())
        return num * r

    if fmt == "nvfp4":
        g = gs.float()
        S = dv(g * a, 6.0).clamp(max=448).to(torch.float8_e4m3fn).float()
        v = dv(xh * g, S)
        out = dv(tz(v) * S, g)
        out = torch.where(S > 0, out, torch.zeros_like(out))
    else:
        fl2 = torch.floor(torch.log2(a)) if floor_log2 is None else floor_log2(a.contiguous())
        s = dv(torch.exp2(fl2 - 2), 0.75)
        v = dv(xh, s)
        out = tz(v) * s
        out = torch.where(a > 0, out, torch.zeros_like(out))
    return out.reshape(x.shape).to(x.dtype)


_TRITON_OPS = {}


class TritonOps:
    """Elementwise float32 Triton kernels with the operations of FP-Quant's kernels, to measure
    them: a / b (div.full.f32), 1.0 / b from a loaded 1.0, floor(log2(x)), exp2(x), and MXFP4's
    whole scale expression exp2(floor(log2(x)) - 2) / (3 / 4) (triton/mxfp4.py 61-63)."""

    def __init__(self):
        import triton
        import triton.language as tl

        @triton.jit
        def _div(a_ptr, b_ptr, o_ptr, n, BLOCK: tl.constexpr):
            i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            m = i < n
            tl.store(o_ptr + i, tl.load(a_ptr + i, mask=m, other=1.0) / tl.load(b_ptr + i, mask=m, other=1.0), mask=m)

        @triton.jit
        def _flog2(x_ptr, o_ptr, n, BLOCK: tl.constexpr):
            i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            m = i < n
            tl.store(o_ptr + i, tl.floor(tl.log2(tl.load(x_ptr + i, mask=m, other=1.0))), mask=m)

        @triton.jit
        def _exp2(x_ptr, o_ptr, n, BLOCK: tl.constexpr):
            i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            m = i < n
            tl.store(o_ptr + i, tl.exp2(tl.load(x_ptr + i, mask=m, other=0.0)), mask=m)

        @triton.jit
        def _mxscale(x_ptr, o_ptr, n, BLOCK: tl.constexpr):
            i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            m = i < n
            x = tl.load(x_ptr + i, mask=m, other=1.0)
            tl.store(o_ptr + i, tl.exp2(tl.floor(tl.log2(x)) - 2) / (3 / 4), mask=m)

        self.k = {"div": _div, "flog2": _flog2, "exp2": _exp2, "mxscale": _mxscale}

    def _run(self, name, *xs):
        import torch
        xs = [x.float().contiguous().reshape(-1) for x in xs]
        o = torch.empty_like(xs[0])
        n = o.numel()
        if n:
            self.k[name][((n + 1023) // 1024,)](*xs, o, n, BLOCK=1024)
        return o

    def div(self, a, b):
        return self._run("div", a, b).reshape(a.shape)

    def rcp(self, b):
        import torch
        return self._run("div", torch.ones_like(b, dtype=torch.float32), b).reshape(b.shape)

    def floor_log2(self, x):
        return self._run("flog2", x).reshape(x.shape)

    def exp2(self, x):
        return self._run("exp2", x).reshape(x.shape)

    def mxscale(self, x):
        return self._run("mxscale", x).reshape(x.shape)


def triton_ops():
    if "ops" not in _TRITON_OPS:
        _TRITON_OPS["ops"] = TritonOps()
    return _TRITON_OPS["ops"]


RCP_TABLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src", "pipeline",
                         "triton_rcp_table.inc")


def read_rcp_table(path=RCP_TABLE):
    """fp4q's table of the GPU reciprocal of the 128 bf16 mantissas: {i: (bits, status)}."""
    import re
    out = {}
    if os.path.exists(path):
        for line in open(path):
            m = re.match(r"\s*0x([0-9a-fA-F]{8})u,\s*//\s*(\d+)\s+(\w+)", line)
            if m:
                out[int(m.group(2))] = (int(m.group(1), 16), m.group(3))
    return out


def f32_bits(t):
    import torch
    return t.float().contiguous().view(torch.int32).long() & 0xffffffff


def probe_rcp(log, device, out, out_dir):
    """Triton's float32 division on every divisor the fp-quant rule can meet: the reciprocal
    (`1.0 / b` with a loaded 1.0) of the 128 bf16 mantissas 1 + i/128 at 9 exponents (it should
    depend on the mantissa only), of all E4M3 values, of 6, 0.75 and of MXFP4's 2^k·RN(4/3); then
    whether a / b == fl(a · rcp(b)) with the measured rcp (the div.full model fp4q uses), vs the
    nearest reciprocal and IEEE a / b. Compares with fp4q's table (src/pipeline/triton_rcp_table.inc)
    and writes the measured one, complete, to OUT_DIR/triton_rcp_table.inc."""
    import torch
    ops = triton_ops()
    i = torch.arange(128, dtype=torch.float32, device=device)
    m = 1 + i / 128
    exps = [-24, -12, -6, -2, 0, 3, 8, 10, 20]
    r = {e: ops.rcp(m * 2.0 ** e) for e in exps}
    r0 = r[0]
    scale_bad = sorted({int(k) for e in exps for k in torch.nonzero((r[e] * 2.0 ** e) != r0).flatten().tolist()})
    rn = 1.0 / m
    diff = (f32_bits(r0) - f32_bits(rn)).tolist()
    not_rn = {k: d for k, d in enumerate(diff) if d}
    tab = read_rcp_table()
    bits0 = f32_bits(r0).tolist()
    wrong = [(k, f"0x{tab[k][0]:08x}", f"0x{bits0[k]:08x}", tab[k][1]) for k in range(128)
             if k in tab and tab[k][0] != bits0[k]]
    res = {"not_rn": not_rn, "scale_violations": scale_bad, "table_entries_wrong": wrong,
           "table_found": len(tab) == 128, "faithful": bool(all(abs(d) <= 1 for d in diff))}
    log(f"  triton rcp of the 128 bf16 mantissas: {len(not_rn)} not RN(1/m) {sorted(not_rn.items())}; "
        f"scale-invariant across 2^{exps}: {'yes' if not scale_bad else 'NO for ' + str(scale_bad)}; "
        f"within one ulp: {res['faithful']}")
    log(f"  fp4q's table ({RCP_TABLE if tab else 'not found'}): {len(wrong)} entries differ "
        f"{wrong[:20]}" + (" -> copy the measured table from " + os.path.join(out_dir, "triton_rcp_table.inc")
                           + " to src/pipeline/" if wrong else ""))
    with open(os.path.join(out_dir, "triton_rcp_table.inc"), "w") as f:
        head = []
        if os.path.exists(RCP_TABLE):
            for line in open(RCP_TABLE):
                if line.lstrip().startswith("0x"):
                    break
                head.append(line)
        f.write("".join(head))
        for k in range(128):
            d = not_rn.get(k, 0)
            f.write(f"    0x{bits0[k]:08x}u,  // {k:3d} measured" + (f" RN{d:+d}" if d else "") + "\n")
    # E4M3 values (all finite positive codes), 6, 0.75, and MXFP4's 2^k·RN(4/3)
    e4 = torch.arange(1, 127, dtype=torch.uint8, device=device).view(torch.float8_e4m3fn).float()
    e4_bad = [(float(b), float(x), float(y)) for b, x, y in zip(e4.tolist(), ops.rcp(e4).tolist(), (1.0 / e4).tolist())
              if x != y]
    k = torch.arange(-8, 9, dtype=torch.float32, device=device)
    s = ops.div(torch.exp2(k), torch.full_like(k, 0.75))
    s_ok = bool((s == torch.exp2(k) * (1.0 / torch.tensor(0.75, device=device))).all())
    rs = ops.rcp(s)
    r43_ok = bool((rs == 0.75 * torch.exp2(-k)).all())
    res.update({"e4m3_not_rn": e4_bad, "mx_scale_is_2k_RN43": s_ok, "rcp_mx_scale_is_0.75": r43_ok,
                "rcp_mx_scale": [float(v) for v in (rs * torch.exp2(k)).tolist()[:3]]})
    log(f"  triton rcp of E4M3 values: {len(e4_bad)} not RN {e4_bad[:8]}; 2^k/0.75 == 2^k·RN(4/3): {s_ok}; "
        f"rcp(2^k·RN(4/3)) == 0.75·2^-k: {r43_ok} (rcp·2^k: {res['rcp_mx_scale']})")
    # the division model: a / b == fl(a * rcp(b)) for the measured rcp
    g = torch.Generator(device="cpu").manual_seed(5)
    bs = torch.cat([m * 2.0 ** e for e in (-6, 0, 8, 10)] + [e4, torch.tensor([6.0, 0.75], device=device), s])
    tot = bad_model = bad_rn = bad_ieee = 0
    for rep in range(48):
        a = ((torch.rand(bs.numel(), generator=g) * 8 + 0.1) * 2.0 ** (rep % 12 - 6)).to(device)
        o = ops.div(a, bs)
        tot += o.numel()
        bad_model += int((o != a * ops.rcp(bs)).sum())
        bad_rn += int((o != a * (1.0 / bs)).sum())
        bad_ieee += int((o != a / bs).sum())
    res.update({"trials": tot, "div_vs_a_times_rcp": bad_model, "div_vs_a_times_RN": bad_rn, "div_vs_ieee": bad_ieee})
    log(f"  triton fp32 a / b over {tot} (a, b): != fl(a·rcp(b)) {bad_model} (the model fp4q uses; must be 0), "
        f"!= fl(a·RN(1/b)) {bad_rn}, != IEEE a/b {bad_ieee}")
    out["div_full"] = res


def probe_log2(log, device, out):
    """floor(tl.log2(x)) and MXFP4's scale exp2(floor(log2 x) - 2) / (3/4) as Triton computes them,
    near every power of two 2^k (k = -40..40; x = 2^k·(1 - j·2^-24) and 2^k·(1 + j·2^-23),
    j = 0..16), in the whole band below every normal power of two (k = -125..127, j = 1..64: the
    rounded log2 reaches k for up to 44 floats below 2^k when |k| > 64) and on 2^20 log-uniform
    amax: vs the exact floor (frexp, fp4q before the third run) and vs floor(RN32(log2 x)) (a
    correctly rounded float32 log2: fp4q's rule since, src/pipeline/act_quant.cpp
    triton_floor_log2). fp4q's MXFP4 scale is 2^(E-2)·RN(4/3) with that E; any difference here is a
    group scale fp4q gets wrong."""
    import math
    import torch
    ops = triton_ops()
    xs, exact = [], []
    for k in range(-40, 41):
        for j in range(0, 17):
            xs.append(math.ldexp(1 - j * 2.0 ** -24, k))
            exact.append(k - 1 if j else k)
            if j:
                xs.append(math.ldexp(1 + j * 2.0 ** -23, k))
                exact.append(k)
    x = torch.tensor(xs, dtype=torch.float32, device=device)
    assert [float(v) for v in x.tolist()] == xs
    ex = torch.tensor(exact, dtype=torch.float32, device=device)
    kern = ops.floor_log2(x)
    rn32 = floor_log2_rn32(x)
    tfl = torch.floor(torch.log2(x))
    bad = torch.nonzero(kern != ex).flatten().tolist()
    rows = [(xs[i], exact[i], float(kern[i])) for i in bad]
    res = {"near_pow2": len(xs), "kernel_vs_exact": len(bad), "kernel_vs_rn32": int((kern != rn32).sum()),
           "torch_vs_kernel": int((tfl != kern).sum()), "examples": rows[:40]}
    r43 = 1.0 / torch.tensor(0.75, device=device)  # RN(4/3)
    # the whole scale expression vs fp4q's 2^(E-2)·RN(4/3), E = floor(RN32(log2)), and with the exact E
    res["mxscale_vs_fp4q"] = int((ops.mxscale(x) != torch.exp2(rn32 - 2) * r43).sum())
    res["mxscale_vs_exact_rule"] = int((ops.mxscale(x) != torch.exp2(ex - 2) * r43).sum())
    # every float in the band below each normal power of two, and a few above
    bx = [math.ldexp(1 - j * 2.0 ** -24, k) for k in range(-125, 128) for j in range(1, 65)]
    bx += [math.ldexp(1 + j * 2.0 ** -23, k) for k in range(-125, 128) for j in range(0, 9)]
    xb = torch.tensor(bx, dtype=torch.float32, device=device)
    kb = ops.floor_log2(xb)
    rb = floor_log2_rn32(xb)
    eb = floor_log2_exact(xb)
    bad_b = torch.nonzero(kb != rb).flatten().tolist()
    res["band"] = {"n": len(bx), "kernel_vs_rn32": len(bad_b), "kernel_vs_exact": int((kb != eb).sum()),
                   "rn32_vs_exact": int((rb != eb).sum()),
                   # (a scale below 2^-126 is subnormal: left out, no activation gets there)
                   "mxscale_vs_fp4q": int(((ops.mxscale(xb) != torch.exp2(rb - 2) * r43) & (rb >= -124)).sum()),
                   "examples_kernel_vs_rn32": [(bx[i], float(rb[i]), float(kb[i])) for i in bad_b[:20]]}
    g = torch.Generator(device="cpu").manual_seed(9)
    r = torch.exp2(torch.rand(1 << 20, generator=g, dtype=torch.float64) * 60 - 30).float().to(device)
    e_r = floor_log2_exact(r)
    k_r = ops.floor_log2(r)
    rn_r = floor_log2_rn32(r)
    res["random"] = {"n": r.numel(), "kernel_vs_exact": int((k_r != e_r).sum()),
                     "kernel_vs_rn32": int((k_r != rn_r).sum()),
                     "mxscale_vs_exact_rule": int((ops.mxscale(r) != torch.exp2(e_r - 2) * r43).sum()),
                     "mxscale_vs_fp4q": int((ops.mxscale(r) != torch.exp2(rn_r - 2) * r43).sum())}
    ints = torch.arange(-40, 41, dtype=torch.float32, device=device)
    res["exp2_int_exact"] = bool((ops.exp2(ints) == torch.exp2(ints.double()).float()).all())
    log(f"  triton floor(log2 x) near powers of two ({len(xs)} x): != exact floor {len(bad)} "
        f"(!= floor(RN32(log2)) {res['kernel_vs_rn32']}, torch's floor(log2) != kernel {res['torch_vs_kernel']}); "
        f"MXFP4 scale != fp4q's rule (floor(RN32 log2)) {res['mxscale_vs_fp4q']}, != the exact-floor rule "
        f"{res['mxscale_vs_exact_rule']}; random amax {res['random']}; exp2(int) exact "
        f"{res['exp2_int_exact']}" + (f"; first (x, exact, kernel): {rows[:12]}" if rows else ""))
    b_ = res["band"]
    log(f"  triton floor(log2 x) in the band below every normal power of two ({b_['n']} x, k = -125..127): "
        f"!= floor(RN32(log2)) {b_['kernel_vs_rn32']} (fp4q's rule; must be 0), != exact floor {b_['kernel_vs_exact']} "
        f"(RN32 != exact: {b_['rn32_vs_exact']}); MXFP4 scale != fp4q's {b_['mxscale_vs_fp4q']}"
        + (f"; first (x, rn32, kernel): {b_['examples_kernel_vs_rn32'][:8]}" if b_["examples_kernel_vs_rn32"] else ""))
    out["log2"] = res


def probe_mxfp4_band(log, device, out):
    """FP-Quant's real MXFP4 kernel (forward_pseudoquantize, float32, identity rotation so that the
    kernel's group max is the input's) on groups whose max lies in the band just below a power of
    two (k = -30..30, j = 1..48 floats below 2^k, the other 31 values fractions of it, signs
    mixed), against fpq_rule with fp4q's rule (table reciprocals, floor(RN32 log2): must be 0
    differing elements) and with the exact floor (fp4q before the third run). bf16 inputs cannot
    reach the band without a rotation (a bf16 group max is bf16-exact); the kernel takes the same
    float32 tl.log2 of the float32 tl.dot output in both dtypes."""
    import math
    import torch
    from fp_quant import FPQuantDtype
    from fp_quant.module.pseudoquant_linear_fns import forward_pseudoquantize
    amax = [math.ldexp(1 - j * 2.0 ** -24, k) for k in range(-30, 31) for j in range(1, 49)]
    a = torch.tensor(amax, dtype=torch.float64)
    fr = torch.tensor([0.1, -0.05, 0.3, -0.55, 0.9, 0.02, -0.7, 0.15], dtype=torch.float64)
    cols = (fr.repeat(4) * (1 - torch.arange(32, dtype=torch.float64) / 64))
    x = (a[:, None] * cols[None, :]).float()
    x[:, 7] = -a.float()
    x = x.to(device).contiguous()
    H = torch.eye(32, dtype=torch.float32, device=device)
    y = forward_pseudoquantize(x, H, torch.tensor([1.0], device=device), FPQuantDtype.MXFP4, "abs_max")[0]
    r_fp4q = fpq_rule(x, H, None, "mxfp4", rcp=fp4q_rcp, floor_log2=floor_log2_rn32)
    r_exact = fpq_rule(x, H, None, "mxfp4", rcp=fp4q_rcp, floor_log2=floor_log2_exact)
    rows_bumped = int((floor_log2_rn32(x.abs().amax(-1)) != floor_log2_exact(x.abs().amax(-1))).sum())
    res = {"groups": x.shape[0], "groups_in_band": rows_bumped,
           "kernel_vs_fp4q": int((y != r_fp4q).sum()), "kernel_vs_exact_rule": int((y != r_exact).sum()),
           "groups_kernel_vs_exact_rule": int((y != r_exact).any(-1).sum())}
    log(f"  kernel mxfp4/float32 on {res['groups']} groups with max 1..48 floats below 2^k (k = -30..30; "
        f"{rows_bumped} where floor(RN32 log2) != exact floor): != fp4q's rule {res['kernel_vs_fp4q']} elements "
        f"(must be 0), != the exact-floor rule {res['kernel_vs_exact_rule']} elements in "
        f"{res['groups_kernel_vs_exact_rule']} groups")
    out["mxfp4_band"] = res


def run_kernels(log, device, res, out_dir):
    import torch
    from fp_quant import FPQuantDtype
    from fp_quant.module.pseudoquant_linear_fns import forward_pseudoquantize
    from scipy.linalg import hadamard
    torch.manual_seed(0)
    out = {}
    ops = triton_ops()
    for fmt in ("nvfp4", "mxfp4"):
        for dt in (torch.bfloat16, torch.float32):
            for g in ((16, 128) if fmt == "nvfp4" else (32, 128)):
                H = torch.tensor(hadamard(g) * g ** -0.5, dtype=dt, device=device)
                x = (torch.randn(1024, 256, device=device) * torch.exp(torch.randn(1024, 1, device=device))).to(dt)
                key = f"{fmt}/{str(dt).split('.')[-1]}/g{g}"
                out[key] = {}
                for gsv in (1232.0, 498.0):
                    gs = torch.tensor([gsv], dtype=dt, device=device)
                    y = forward_pseudoquantize(x, H, gs, FPQuantDtype(fmt), "abs_max")[0]
                    for model, kw in (("rn", {}), ("hw", {"rcp": ops.rcp, "floor_log2": ops.floor_log2}),
                                      ("fp4q", {"rcp": fp4q_rcp, "floor_log2": floor_log2_rn32})):
                        r = fpq_rule(x, H, gs, fmt, **kw)
                        diff = (y.float() != r.float())
                        out[key][f"gs{gsv:g}/{model}"] = {"elements": diff.numel(), "differ": int(diff.sum()),
                                                          "max_abs_diff": float((y.float() - r.float()).abs().max())}
                    if fmt == "mxfp4":
                        break  # no global scale
                log(f"  kernel {key:<26} differing elements, rule with RN(1/b) / GPU reciprocals / fp4q's table and "
                    f"floor(RN32 log2): " + ", ".join(
                    f"gs {k.split('/')[0][2:]}: {v['differ']}" + {"rn": " (RN)", "hw": "", "fp4q": " (fp4q)"}[k.split('/')[1]]
                    for k, v in out[key].items()) + f"  of {diff.numel()}")
    # Ties: identity rotation, NVFP4 with gs = 1 and group max 6 (scale exactly 1): the kernel's
    # answer at 0.75, 1.75, 3.5 is the tie rule itself (toward zero: 0.5, 1.5, 3; RNE: 1, 2, 4).
    for dt in (torch.bfloat16, torch.float32):
        row = torch.tensor([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.75, -1.75, -3.5, 0.0, 1.0, 2.0, 3.0, 4.0],
                           dtype=dt, device=device).repeat(16, 1)
        y = forward_pseudoquantize(row, torch.eye(16, dtype=dt, device=device), torch.tensor([1.0], dtype=dt, device=device),
                                   FPQuantDtype.NVFP4, "abs_max")[0]
        got = [float(v) for v in y[0, 1:11]]
        out[f"ties/{str(dt).split('.')[-1]}"] = got
        log(f"  ties {str(dt):<15} 0.25 0.75 1.25 1.75 2.5 3.5 5 -0.75 -1.75 -3.5 -> {got}")
    for probe in (lambda: probe_rcp(log, device, out, out_dir), lambda: probe_log2(log, device, out),
                  lambda: probe_mxfp4_band(log, device, out)):
        try:
            probe()
        except Exception:  # noqa: BLE001
            log(traceback.format_exc())
    res["kernels"] = out


def capture_groups(model, ids, device):
    """One forward over `ids` with a pre-hook on every FPQuantLinear: [(names, module, x)] per input
    group in execution order (Linears called with the same input tensor share a group: q/k/v,
    gate/up), x as [tokens, in]."""
    from fp_quant import FPQuantLinear
    groups = []

    def pre(mod, inp, name=None):
        x = inp[0]
        # the same tensor object (q/k/v, gate/up); holding it keeps its memory from being reused
        if groups and groups[-1][3] is x:
            groups[-1][0].append(name)
            groups[-1][1].append(mod)
        else:
            groups.append(([name], [mod], x.detach().reshape(-1, x.shape[-1]).clone(), x))
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: pre(mod, inp, n))
             for n, m in model.named_modules() if isinstance(m, FPQuantLinear)]
    try:
        model_logits(model, ids, device)
    finally:
        for hk in hooks:
            hk.remove()
    return [(names, mods, x) for names, mods, x, _ in groups]


def kernel_of(mod, x):
    from fp_quant.module.pseudoquant_linear_fns import forward_pseudoquantize
    return forward_pseudoquantize(x.contiguous(), mod.forward_hadamard_matrix, mod.act_global_scale,
                                  mod.config.forward_dtype, mod.config.forward_method)[0]


def captured_check(log, model, lg_ids, device, tag):
    """Chaos-free check of the activation rule: every FPQuantLinear's real input during the logits
    run goes through the kernel (forward_pseudoquantize) and through fpq_rule, once with the GPU's
    own reciprocal and floor(log2) (the model fp4q implements: must be 0) and once with RN(1/b)
    (fp4q before issue 10's probe); differing elements are counted per Linear (q/k/v share an
    input, counted 3 times). Perplexity comparisons of a W4A4 model amplify ulp-level differences
    elsewhere (GEMM summation order) into flipped FP4 codes; this check does not."""
    ops = triton_ops()
    res = {}
    for model_name, kw in (("hw", {"rcp": ops.rcp, "floor_log2": ops.floor_log2}), ("rn", {}),
                           ("fp4q", {"rcp": fp4q_rcp, "floor_log2": floor_log2_rn32})):
        tot = diff = 0
        worst = []
        for names, mods, x in capture_groups(model, lg_ids, device):
            for name, mod in zip(names, mods):
                y = kernel_of(mod, x)
                r = fpq_rule(x, mod.forward_hadamard_matrix, mod.act_global_scale, mod.config.forward_dtype.value, **kw)
                d = int((y.float() != r.float()).sum())
                tot += y.numel()
                diff += d
                if d:
                    worst.append((name, d))
        res[model_name] = {"elements": tot, "differ": diff, "by_linear": worst[:32]}
        label = {"hw": "GPU reciprocals", "rn": "RN(1/b) (fp4q before the probe)",
                 "fp4q": "fp4q's table and floor(RN32 log2)"}[model_name]
        log(f"  captured inputs {tag}: kernel vs the rule with {label}: differing elements "
            f"{diff} / {tot}" + (f"  (first: {worst[:4]})" if worst else ""))
    res.update(res["hw"])
    return res


# ---------------------------------------------------------------------------------------------
# summation order: fp4q's OpenBLAS SGEMM (one fma chain over k per output, k ascending; checked
# on the CPU that makes the exports) vs cuBLAS


def linear_seqfma(x, w, b=None):
    """F.linear with fp4q's float32 GEMM order: per output acc = fma(x_k, w_k, acc), k ascending
    (each step exact in float64, one rounding to float32 = the fma barring a double rounding once
    in ~2^29). bf16 inputs: the same in float32 (products exact), the result rounded to bf16."""
    import torch
    K = x.shape[-1]
    x2 = x.reshape(-1, K)
    xd, wd = x2.double(), w.double()
    acc = torch.zeros(x2.shape[0], w.shape[0], dtype=torch.float32, device=x.device)
    for k in range(K):
        acc = (acc.double() + xd[:, k:k + 1] * wd[:, k].unsqueeze(0)).float()
    if b is not None:
        acc = acc + b.float()
    return acc.to(x.dtype).reshape(*x.shape[:-1], w.shape[0])


def linear_f64(x, w, b=None):
    """F.linear accumulated in float64, one rounding (the most accurate float32 result)."""
    y = x.reshape(-1, x.shape[-1]).double() @ w.double().T
    if b is not None:
        y = y + b.double()
    return y.float().to(x.dtype).reshape(*x.shape[:-1], w.shape[0])


@__import__("contextlib").contextmanager
def patched_linear(fn):
    """Every F.linear (nn.Linear and FPQuantLinear's PseudoQuant4x16NoMasterFn) through `fn`."""
    import torch.nn.functional as F
    orig = F.linear
    F.linear = fn
    try:
        yield
    finally:
        F.linear = orig


def perplexity_batched(model, ids, seqlen, device):
    """All windows in one forward (batch = windows): another equally valid cuBLAS order."""
    import torch
    n = len(ids) // seqlen
    x = torch.tensor(ids[:n * seqlen], dtype=torch.long, device=device).reshape(n, seqlen)
    with no_grad():
        lg = model(input_ids=x, use_cache=False).logits.double()
    nll = torch.nn.functional.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
    return math.exp(float(nll) / (n * (seqlen - 1)))


def library_floor(log, model, ppl_ids, seqlen, device, ppl_lib, pred_ppl, tag, cpu_floor=None):
    """(c) The library against itself under other, equally valid float32 summation orders: all
    windows batched (cuBLAS picks other kernels), every Linear in fp4q's order (seq-fma), every
    Linear accumulated in float64. A W4A4 model's perplexity moves with the order (ties and
    decision points met within an ulp); the spread is the floor any CPU emulation can reach.
    With seq-fma Linears the library does what fp4q does in its Linears: if that moves the
    library onto fp4q's perplexity, cuBLAS's order was the whole remaining difference."""
    out = {"per_window": ppl_lib, "fp4q": pred_ppl}
    for name, fn in (("batched", None), ("seqfma", linear_seqfma), ("f64", linear_f64)):
        try:
            if fn is None:
                out[name] = perplexity_batched(model, ppl_ids, seqlen, device)
            else:
                with patched_linear(fn):
                    out[name] = perplexity_batched(model, ppl_ids, seqlen, device)
        except Exception as e:  # noqa: BLE001
            out[name] = None
            log(f"  library floor {tag} {name}: {e!r}")
    vals = [v for k, v in out.items() if k != "fp4q" and v is not None]
    out["spread_rel"] = (max(vals) - min(vals)) / ppl_lib if vals else None
    out["fp4q_vs_seqfma_rel"] = (pred_ppl - out["seqfma"]) / out["seqfma"] if out.get("seqfma") else None
    txt = " | ".join(f"{k} {v:.4f} ({100 * (v - ppl_lib) / ppl_lib:+.4f} %)" for k, v in out.items()
                     if k in ("batched", "seqfma", "f64") and v is not None)
    log(f"  library floor {tag}: per-window {ppl_lib:.4f} | {txt}; spread {100 * (out['spread_rel'] or 0):.4f} %; "
        f"fp4q {pred_ppl:.4f} vs library with fp4q's Linear order (seqfma): "
        f"{100 * (out['fp4q_vs_seqfma_rel'] or float('nan')):+.4f} %")
    if cpu_floor:
        out["fp4q_cpu_orders"] = cpu_floor
        log(f"  fp4q {tag} under other OpenBLAS SGEMM orders (CPU): " + ", ".join(
            f"{k} {v['ppl']:.4f} ({100 * (v['ppl'] - pred_ppl) / pred_ppl:+.4f} %)" for k, v in cpu_floor.items()))
    return out


# ---------------------------------------------------------------------------------------------
# fp4q's own activation transforms (tools/make_consumer_dumps.sh, FP4Q_DUMP_ACT) vs the library


def read_dump(d):
    import numpy as np
    import torch
    rows = []
    for line in open(os.path.join(d, "index.tsv")):
        f = line.rstrip("\n").split("\t")
        r, c = int(f[1]), int(f[2])
        xi = torch.from_numpy(np.fromfile(os.path.join(d, f"act_{f[0]}.in.f32"), dtype="<f4").reshape(r, c).copy())
        xo = torch.from_numpy(np.fromfile(os.path.join(d, f"act_{f[0]}.out.f32"), dtype="<f4").reshape(r, c).copy())
        rows.append({"id": f[0], "hadamard": int(f[3]), "format": f[5], "gs": float.fromhex(f[8]), "in": xi, "out": xo})
    return rows


def dumps_check(log, case, root, model, lg_ids, device, tag):
    """For the dtype `tag` (f32 | bf16), Linear input group by group (execution order, q/k/v,
    o, gate/up per layer), with fp4q's dumped input/output of the same forward over logits_ids:
      rule   FP-Quant's kernel on fp4q's own input vs fp4q's output: differing elements (fp4q's
             C++ rule against the real kernel, bit for bit; must be 0)
      path   the library's input vs fp4q's (rel. L2, elements differing) and the library's x̂ vs
             fp4q's: elements and tokens differing. The first group whose x̂ differ is where the two
             forwards part (the 'first diverging Linear'); flips there at token 0 with inputs
             equal up to an ulp are decision points met within an ulp (ties)
      gemm   (f32) each Linear of the group on fp4q's x̂: cuBLAS vs fp4q's order (seq-fma) vs
             float64: differing outputs, at 128 and 256 rows (the logits and one window)"""
    import torch
    ddir = os.path.join(root, case["name"], f"dump.fp-quant.{tag}")
    if not os.path.exists(os.path.join(ddir, "index.tsv")):
        log(f"  dumps {tag}: none ({ddir}; tools/make_consumer_dumps.sh)")
        return None
    dump = read_dump(ddir)
    groups = capture_groups(model, lg_ids, device)
    if len(groups) != len(dump):
        log(f"  dumps {tag}: {len(dump)} fp4q transforms vs {len(groups)} library input groups: not aligned, skipped")
        return {"error": "not aligned"}
    dt = groups[0][2].dtype
    rows_out, first = [], None
    rule_total = 0
    gemm = {"rows": 0, "cublas_vs_seqfma": 0, "cublas_vs_f64": 0, "seqfma_vs_f64": 0, "outputs": 0}
    for gi, ((names, mods, xl), dmp) in enumerate(zip(groups, dump)):
        xi = dmp["in"].to(device)
        xo = dmp["out"].to(device)
        if tuple(xi.shape) != tuple(xl.shape):
            log(f"  dumps {tag}: group {gi} shape {tuple(xi.shape)} vs library {tuple(xl.shape)}: skipped")
            return {"error": "shape"}
        gss = sorted({float(m.act_global_scale.float()[0]) for m in mods})
        if len(gss) > 1:
            log(f"  dumps {tag}: group {gi} {names} has act_global_scale {gss} (fp4q uses one per group)")
        k_fp4q = kernel_of(mods[0], xi.to(dt)).float()
        rule = int((k_fp4q != xo).sum())
        rule_total += rule
        k_lib = kernel_of(mods[0], xl).float()
        dout = (k_lib != xo)
        tok = torch.nonzero(dout.any(-1)).flatten().tolist()
        xin_d = (xl.float() != xi)
        r = {"group": gi, "linears": names, "gs": dmp["gs"], "rule_differ": rule,
             "in_rel_l2": rel_l2(xl.float().cpu(), xi.cpu()), "in_differ": int(xin_d.sum()),
             "out_differ": int(dout.sum()), "out_tokens": tok[:16], "n_out_tokens": len(tok)}
        if r["out_differ"] and first is None:
            first = gi
            idx = torch.nonzero(dout)[:6].tolist()
            r["examples"] = [(t, c, float(xl[t, c]), float(xi[t, c]), float(k_lib[t, c]), float(xo[t, c]))
                             for t, c in idx]
        if tag == "f32":
            for mod in mods:
                W = mod.dqweight.float()
                for reps in (1, 2):
                    x2 = xo.repeat(reps, 1)
                    yc = torch.nn.functional.linear(x2, W)
                    ys = linear_seqfma(x2, W)
                    yf = linear_f64(x2, W)
                    gemm["rows"] += x2.shape[0]
                    gemm["outputs"] += yc.numel()
                    gemm["cublas_vs_seqfma"] += int((yc != ys).sum())
                    gemm["cublas_vs_f64"] += int((yc != yf).sum())
                    gemm["seqfma_vs_f64"] += int((ys != yf).sum())
        rows_out.append(r)
    res = {"groups": rows_out, "rule_differ": rule_total, "first_diverging_group": first, "gemm": gemm,
           "pass": rule_total == 0}
    log(f"  dumps {tag}: fp4q's rule vs FP-Quant's kernel on fp4q's own inputs: {rule_total} differing elements "
        f"over {len(dump)} input groups  {'PASS' if rule_total == 0 else 'FAIL'}"
        + ("" if not rule_total else "  " + str([(r['group'], r['linears'][0], r['gs'], r['rule_differ'])
                                                 for r in rows_out if r['rule_differ']][:6])))
    path = " ".join(f"{r['group']}:{r['in_differ']}/{r['out_differ']}" for r in rows_out)
    log(f"  dumps {tag}: library vs fp4q per input group (elements differing, input/x̂): {path}")
    if first is not None:
        r = rows_out[first]
        log(f"  dumps {tag}: first diverging x̂: group {first} {r['linears']} (gs {r['gs']:g}), {r['out_differ']} "
            f"elements in tokens {r['out_tokens']}; inputs differ in {r['in_differ']} elements (rel. L2 "
            f"{r['in_rel_l2']:.2e}); (token, col, x lib, x fp4q, x̂ lib, x̂ fp4q): {r.get('examples')}")
    else:
        log(f"  dumps {tag}: every x̂ of the logits forward is identical")
    if tag == "f32":
        log(f"  gemm order on fp4q's x̂ ({gemm['outputs']} outputs): cuBLAS != fp4q's seq-fma "
            f"{gemm['cublas_vs_seqfma']}, cuBLAS != float64 {gemm['cublas_vs_f64']}, seq-fma != float64 "
            f"{gemm['seqfma_vs_f64']}")
    return res


# ---------------------------------------------------------------------------------------------
# compressed-tensors


def install_shims(log):
    """Minimal stand-ins so compressed-tensors' modules can be imported without pydantic/loguru:
    classes get defined and constructed (fields set from defaults and keyword arguments, no
    validation). Only used when the real packages are missing."""
    shimmed = []
    try:
        import loguru  # noqa: F401
    except ImportError:
        m = types.ModuleType("loguru")

        class _Logger:
            def __getattr__(self, name):
                return lambda *a, **k: self
        m.logger = _Logger()
        sys.modules["loguru"] = m
        shimmed.append("loguru")
    try:
        import pydantic  # noqa: F401
        import pydantic_core  # noqa: F401
    except ImportError:
        pd = types.ModuleType("pydantic")

        class _FieldInfo:
            def __init__(self, default=None, default_factory=None, **kw):
                self.default, self.default_factory = default, default_factory

        def Field(default=None, default_factory=None, **kw):
            return _FieldInfo(default, default_factory)

        class BaseModel:
            def __init_subclass__(cls, **kw):
                super().__init_subclass__()

            def __init__(self, **kw):
                for klass in reversed(type(self).__mro__):
                    for name in getattr(klass, "__annotations__", {}):
                        v = getattr(klass, name, None)
                        if isinstance(v, _FieldInfo):
                            v = v.default_factory() if v.default_factory else v.default
                        if not callable(v) or isinstance(v, type):
                            setattr(self, name, v)
                for k, v in kw.items():
                    setattr(self, k, v)

            def model_dump(self, **kw):
                return dict(self.__dict__)

        def _decorator(*a, **k):
            if len(a) == 1 and callable(a[0]) and not k:
                return a[0]
            return lambda f: f

        pd.BaseModel, pd.Field, pd.ConfigDict = BaseModel, Field, dict
        pd.field_validator = pd.model_validator = pd.field_serializer = _decorator
        pd.GetCoreSchemaHandler = pd.GetJsonSchemaHandler = object
        pd.ValidationError = type("ValidationError", (ValueError,), {})
        js = types.ModuleType("pydantic.json_schema")
        js.JsonSchemaValue = dict
        pd.json_schema = js
        core = types.ModuleType("pydantic_core")
        cs = types.ModuleType("pydantic_core.core_schema")
        def _cs_getattr(name):
            # Dunder lookups (inspect's __file__, copy's __reduce__, ...) must fail as on a real
            # module: a function returned for __file__ broke torch.library's source lookup (and
            # with it every later transformers import) on the GPU machine.
            if name.startswith("__"):
                raise AttributeError(name)
            return lambda *a, **k: None
        cs.__getattr__ = _cs_getattr
        cs.CoreSchema = dict
        core.core_schema = cs
        sys.modules.update({"pydantic": pd, "pydantic.json_schema": js, "pydantic_core": core,
                            "pydantic_core.core_schema": cs})
        shimmed.append("pydantic (class definitions only, no validation)")
    if shimmed:
        log(f"  compressed-tensors: stand-ins for missing packages: {', '.join(shimmed)}")
    return shimmed


def import_ct(log, ct_src):
    if ct_src:
        ver = os.path.join(ct_src, "compressed_tensors", "version.py")
        if not os.path.exists(ver):  # normally written by setuptools_scm at build time
            with open(ver, "w") as f:
                f.write("__version__ = version = '0.0.0+source'\n__version_tuple__ = version_tuple = (0, 0, 0)\n")
        sys.path.insert(0, ct_src)
    shims = install_shims(log)
    import compressed_tensors
    return compressed_tensors, shims


# Where the FP4 compressors live: compressed-tensors >= 0.12 has compressors/nvfp4 + mxfp4; the
# 2025-10 tree (52792be0) has both in compressors/quantized_compressors/fp4_quantized.py (MXFP4 an
# alias of NVFP4 whose decompress_weight wants a weight_global_scale MXFP4 does not have).
CT_FP4_MODULES = {
    "nvfp4": ["compressed_tensors.compressors.nvfp4.base",
              "compressed_tensors.compressors.quantized_compressors.fp4_quantized",
              "compressed_tensors.compressors"],
    "mxfp4": ["compressed_tensors.compressors.mxfp4.base",
              "compressed_tensors.compressors.quantized_compressors.fp4_quantized",
              "compressed_tensors.compressors"],
    "unpack": ["compressed_tensors.compressors.nvfp4.helpers",
               "compressed_tensors.compressors.quantized_compressors.fp4_quantized",
               "compressed_tensors.compressors"],
}


def ct_find(kind, attr):
    """(object, module name) of `attr` from the first module of CT_FP4_MODULES[kind] that has it."""
    import importlib
    errs = []
    for mod in CT_FP4_MODULES[kind]:
        try:
            m = importlib.import_module(mod)
            if hasattr(m, attr):
                return getattr(m, attr), mod
            errs.append(f"{mod}: no {attr}")
        except Exception as e:  # noqa: BLE001
            errs.append(f"{mod}: {e!r}")
    raise ImportError(f"{attr} not found in compressed-tensors ({'; '.join(errs)})")


def ct_source_id(ct_src):
    """Commit / version of the compressed-tensors source used (logged)."""
    import subprocess
    out = {}
    for d in (ct_src, os.path.dirname(ct_src.rstrip("/")) if ct_src else ""):
        if d and os.path.isdir(d):
            try:  # a git repository of the tree itself (not fp4q's, which holds .ref/ untracked)
                top = subprocess.run(["git", "-C", d, "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                                     timeout=10).stdout.strip()
                if top and os.path.realpath(top) in (os.path.realpath(d), os.path.realpath(os.path.dirname(d.rstrip("/")))):
                    out["commit"] = subprocess.run(["git", "-C", d, "rev-parse", "HEAD"], capture_output=True,
                                                   text=True, timeout=10).stdout.strip() or None
            except Exception:  # noqa: BLE001
                pass
            for f in ("SNAPSHOT.txt", "../SNAPSHOT.txt"):
                if os.path.exists(os.path.join(d, f)):
                    out["snapshot"] = open(os.path.join(d, f)).read().strip()[:300]
            if out.get("commit") or out.get("snapshot"):
                break
    return out


def ct_harness(log, case, man, root, device, res, ct):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    NVFP4PackedCompressor, nv_mod = ct_find("nvfp4", "NVFP4PackedCompressor")
    MXFP4PackedCompressor, mx_mod = ct_find("mxfp4", "MXFP4PackedCompressor")
    unpack_fp4_from_uint8, up_mod = ct_find("unpack", "unpack_fp4_from_uint8")
    log(f"  compressed-tensors: NVFP4PackedCompressor from {nv_mod}, MXFP4PackedCompressor from {mx_mod}, "
        f"unpack_fp4_from_uint8 from {up_mod}")
    from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.transform.utils.hadamard import deterministic_hadamard_matrix
    try:
        from compressed_tensors.transform.factory.hadamard import HadamardTransform
    except Exception:  # noqa: BLE001
        HadamardTransform = None
    d = os.path.join(root, case["ct"])
    cfg_json = json.load(open(os.path.join(d, "config.json")))
    qc = cfg_json["quantization_config"]
    grp = next(iter(qc["config_groups"].values()))
    fmt = case["format"]
    sd = safetensors_dict(d, device)
    fpq_sd = safetensors_dict(os.path.join(root, case["fpq"]), device)
    comp = NVFP4PackedCompressor if fmt == "nvfp4" else MXFP4PackedCompressor
    mods = sorted(k[:-len(".weight_packed")] for k in sd if k.endswith(".weight_packed"))
    from compressed_tensors.quantization.lifecycle.forward import dequantize
    weights, wdiff_lib, wdiff32 = {}, 0.0, 0.0
    decomp_note = None
    w_lib = None
    for m in mods:
        local = {k[len(m) + 1:]: v for k, v in sd.items() if k.startswith(m + ".") and "v_input" not in k}
        ref = fpq_sd[m + ".dqweight"].float()  # fp4q's dequantised weight of the same run
        # compressed-tensors' decompression as transformers runs it (unpacks to bf16 by default):
        # the class method of newer releases, decompress_weight of older ones
        try:
            if hasattr(comp, "decompress") and not hasattr(comp, "decompress_weight"):
                w_lib = comp.decompress(dict(local), None)["weight"]
            else:
                w_lib = comp().decompress_weight(compressed_data=dict(local))
            wdiff_lib = max(wdiff_lib, float((w_lib.float() - ref.to(w_lib.dtype).float()).abs().max()))
        except Exception as e:  # noqa: BLE001
            decomp_note = f"{comp.__name__} decompression failed on {m}: {e!r}"
        # the same functions asked for float32 (the fp32 comparison needs unrounded weights)
        packed = local["weight_packed"]
        xq = unpack_fp4_from_uint8(packed, packed.shape[0], 2 * packed.shape[1], dtype=torch.float32)
        raw = local["weight_scale"]
        if hasattr(comp, "_decompress_scale"):
            sc = comp._decompress_scale(raw, torch.float32)
        elif raw.dtype == torch.uint8:  # MXFP4 E8M0 exponent bytes
            sc = torch.exp2(raw.to(torch.float32) - 127)
        else:
            sc = raw.to(torch.float32)
        w32 = dequantize(x_q=xq, scale=sc, global_scale=local.get("weight_global_scale"), dtype=torch.float32)
        wdiff32 = max(wdiff32, float((w32 - ref).abs().max()))
        weights[m] = w32
    if decomp_note:
        log(f"  compressed-tensors: {decomp_note} (weights from unpack + dequantize below)")
    log(f"  compressed-tensors: {len(mods)} modules decompressed; max |W_ct - W_fp4q|: as the compressor "
        f"returns it ({getattr(w_lib, 'dtype', None)}) {wdiff_lib:.3e}, float32 {wdiff32:.3e}")
    out = {"modules": len(mods), "decompress_dtype": str(getattr(w_lib, "dtype", None)),
           "decompress_note": decomp_note, "max_abs_weight_diff_vs_fp4q": wdiff_lib,
           "max_abs_weight_diff_vs_fp4q_f32": wdiff32, "modules_used": [nv_mod, mx_mod, up_mod]}
    tcfg = qc.get("transform_config") or {}
    h = next(iter(tcfg.get("config_groups", {}).values()), {}).get("head_dim", 0) if tcfg else 0
    ia = grp["input_activations"]
    base = dict(num_bits=4, type="float", symmetric=True, strategy=ia["strategy"], group_size=ia["group_size"],
                dynamic=ia["dynamic"], block_structure=None, actorder=None, observer=None,
                zp_dtype=torch.float8_e4m3fn)  # what QuantizationArgs.validate_model_after sets for FP4
    variants = {"preset": dict(base, scale_dtype=torch.float8_e4m3fn if fmt == "nvfp4" else torch.uint8),
                "as-configured": dict(base, scale_dtype=None)}
    # Older compressed-tensors trees (the 2025-10 snapshot) compute a dynamic FP4 scale without a
    # global scale as amax/6 in float, with no E8M0 rounding (calculate_qparams knows no MX and no
    # scale_dtype): their MXFP4 activations are not the OCP/vLLM rule fp4q emulates, and both
    # variants below are the same computation. Such MXFP4 rows are information, not a test.
    import inspect
    from compressed_tensors.quantization.utils import helpers as ct_helpers
    qp_src = inspect.getsource(ct_helpers.calculate_qparams)
    mx_dynamic = "mx" in qp_src.lower() or "scale_dtype" in qp_src
    out["mx_dynamic_scales"] = mx_dynamic
    if fmt == "mxfp4" and not mx_dynamic:
        log("  compressed-tensors: this tree's calculate_qparams has no MX scale path (dynamic MXFP4 scale = "
            "amax/6, unrounded): MXFP4 rows below are information only (fp4q emulates vLLM's E8M0 rule)")
    ppl_ids = json.load(open(os.path.join(root, man["ppl_ids"])))
    lg_ids = json.load(open(os.path.join(root, man["logits_ids"])))
    cfg = AutoConfig.from_pretrained(d)
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    for vname, vargs in variants.items():
        args = types.SimpleNamespace(**vargs)
        for dt in (torch.float32, torch.bfloat16):
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
            msd = model.state_dict()
            load = {k: v for k, v in sd.items() if k in msd and msd[k].shape == v.shape}
            for m, w in weights.items():
                load[m + ".weight"] = w
            model.load_state_dict(load, strict=False)
            if "lm_head.weight" not in sd and getattr(cfg, "tie_word_embeddings", False):
                model.tie_weights()
            model = model.to(device=device, dtype=dt).eval()
            hooks = []
            for m in mods:
                lin = model.get_submodule(m)
                gsname = m + ".input_global_scale"
                gs = sd[gsname].float() if gsname in sd else None
                rot = None
                if h and h > 1:
                    H = torch.nn.Parameter(deterministic_hadamard_matrix(h, torch.float32, device), requires_grad=False)
                    if HadamardTransform is not None:
                        rot = HadamardTransform(H, None, types.SimpleNamespace(randomize=False),
                                                types.SimpleNamespace(inverse=False, location="input"),
                                                torch.nn.Linear)
                    else:  # the same three lines as HadamardTransform.forward
                        def rot(v, H=H):
                            from compressed_tensors.transform.utils.matrix import apply_transform_weight
                            return (apply_transform_weight(H, v.to(H.dtype), "input", torch.nn.Linear)
                                    / torch.tensor(H.shape[0], dtype=torch.float64).sqrt()).to(v.dtype)

                def hook(mod, inp, rot=rot, gs=gs, args=args):
                    x = inp[0]
                    if rot is not None:
                        x = rot(x)
                    s, zp = compute_dynamic_scales_and_zp(value=x, args=args, module=mod, global_scale=gs)
                    return (fake_quantize(x=x, scale=s, zero_point=zp, args=args, global_scale=gs),)
                hooks.append(lin.register_forward_pre_hook(hook))
            vocab = cfg.vocab_size
            lg = model_logits(model, lg_ids, device)
            ppl, _, _ = perplexity(model, ppl_ids, man["seqlen"], device)
            tag = "f32" if dt == torch.float32 else "bf16"
            pred = case["fp4q"]["compressed-tensors"][tag]
            tested = vname == "preset" and (fmt != "mxfp4" or mx_dynamic)
            target_l2 = TARGETS["f32_rel_l2"] if tag == "f32" and tested else None
            target_ppl = (TARGETS["f32_ppl_rel"] if tag == "f32" else TARGETS["bf16_ppl_rel"]) if tested \
                else float("inf")
            out[f"{vname}/{tag}"] = compare(log, f"compressed-tensors {vname} {tag} vs fp4q ct {tag}"
                                            + ("" if tested or vname != "preset" else " (info)"), lg, ppl, pred,
                                            vocab, root, target_l2, target_ppl)
            if not tested:
                out[f"{vname}/{tag}"]["info_only"] = True
            for hk in hooks:
                hk.remove()
            del model
            torch.cuda.empty_cache()
    res["compressed_tensors"] = out


# ---------------------------------------------------------------------------------------------


def main(argv=None):
    a = parse_args(argv)
    if a.kernels_only:
        man, missing = {"model": "(none: --kernels-only)", "seqlen": 0, "cases": []}, []
    else:
        man, missing = load_manifest(a.root, a.cases)
    if a.dry_run:
        print(json.dumps({"model": man["model"], "cases": [c["name"] for c in man["cases"]], "missing": missing}))
        return 1 if missing else 0
    if missing:
        sys.exit(f"missing files under {a.root}: {missing[:5]}")
    if a.site and os.path.isdir(a.site):
        sys.path.insert(0, a.site)
    log = Log(a.log)
    import torch
    import transformers
    # transformers imports lazily; load the modules used here (and torchvision through them) now,
    # before compressed-tensors' stand-ins for missing packages enter sys.modules.
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel  # noqa: F401
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    env = {"torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0],
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "TRITON_F32_DEFAULT": os.environ.get("TRITON_F32_DEFAULT")}
    try:
        import triton
        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        pass
    fpq_ok, ct, shims = False, None, []
    if not a.skip_fpq:
        try:
            import fp_quant
            from importlib.metadata import version
            env["fp_quant"] = version("fp_quant")
            env["fp_quant_file"] = fp_quant.__file__
            fpq_ok = True
        except Exception as e:  # noqa: BLE001
            env["fp_quant"] = f"not importable: {e!r}"
    if not a.skip_ct:
        try:
            ct, shims = import_ct(log, a.ct_src)
            env["compressed_tensors"] = getattr(ct, "__version__", "?") + f" ({ct.__file__})"
            env["compressed_tensors_source"] = ct_source_id(a.ct_src)
            env["compressed_tensors_shims"] = shims
        except Exception as e:  # noqa: BLE001
            env["compressed_tensors"] = f"not importable: {e!r}"
            log(traceback.format_exc())
    log("environment:", json.dumps(env))
    log(f"model {man['model']}, fp4q {man.get('fp4q_version')}, seqlen {man['seqlen']}, "
        f"targets {TARGETS}")
    results = {"env": env, "targets": TARGETS, "manifest": {k: v for k, v in man.items() if k != "cases"}, "cases": {}}
    if fpq_ok and not a.skip_kernels:
        log("== fp_quant Triton kernels vs the documented fp-quant rule")
        try:
            run_kernels(log, a.device, results, os.path.dirname(os.path.abspath(a.out)))
        except Exception:  # noqa: BLE001
            log(traceback.format_exc())
            results["kernels"] = {"error": traceback.format_exc()}
    t0 = time.time()
    order_floor = None
    of = os.path.join(a.root, "fp4q_order_floor.json")
    if a.root and os.path.exists(of):
        order_floor = json.load(open(of))["cases"]
        results["fp4q_order_floor"] = order_floor
    if "original" in man:
        log("== original model (plain transformers)")
        res = results["cases"].setdefault("original", {})
        try:
            run_original(log, man, a.root, a.device, res)
        except Exception:  # noqa: BLE001
            log(traceback.format_exc())
            res["original"] = {"error": traceback.format_exc()}
    for case in man["cases"]:
        log(f"== {case['name']}")
        res = results["cases"].setdefault(case["name"], {})
        if fpq_ok:
            try:
                run_fpq_case(log, case, man, a.root, a.device, res, not a.skip_floor, order_floor)
            except Exception:  # noqa: BLE001
                log(traceback.format_exc())
                res["fp_quant"] = {"error": traceback.format_exc()}
        if ct is not None:
            try:
                ct_harness(log, case, man, a.root, a.device, res, ct)
            except Exception:  # noqa: BLE001
                log(traceback.format_exc())
                res["compressed_tensors"] = {"error": traceback.format_exc()}
        json.dump(results, open(a.out, "w"), indent=1)
    passes = fails = 0
    for name, c in results["cases"].items():
        for libname, lib in c.items():
            if not isinstance(lib, dict):
                continue
            for k, v in lib.items():
                if isinstance(v, dict) and "pass" in v and "(info)" not in k and not k.startswith("as-configured") \
                        and "vs_" not in k and not v.get("info_only"):
                    passes += v["pass"]
                    fails += not v["pass"]
    results["summary"] = {"pass": passes, "fail": fails, "seconds": time.time() - t0}
    json.dump(results, open(a.out, "w"), indent=1)
    log(f"{passes} passed, {fails} failed ({time.time() - t0:.0f} s)")
    return 0 if fails == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
