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
             documented fp-quant rule written here in torch (count of differing elements).
Targets (issue 10): fp32 logits relative L2 <= 1e-5 and perplexity within 0.01 %; bf16
perplexity within 0.05 %.

  python3 tools/verify_consumers.py --root .device/consumers/stories260K \
      --out $OUT/consumers.json --log $OUT/consumers_log.txt [--ct-src .ref/compressed-tensors/src]

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
    p.add_argument("--root", required=True, help="folder written by tools/make_consumer_exports.sh")
    p.add_argument("--out", default="consumers.json", help="JSON results")
    p.add_argument("--log", default="consumers_log.txt", help="human-readable log")
    p.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--site", default="/tmp/site", help="extra sys.path entry holding fp_quant (if it exists)")
    p.add_argument("--ct-src", default="", help="compressed-tensors source tree (its src/ folder)")
    p.add_argument("--skip-fpq", action="store_true")
    p.add_argument("--skip-ct", action="store_true")
    p.add_argument("--skip-kernels", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="check the manifest and files only (no torch)")
    return p.parse_args(argv)


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


def run_fpq_case(log, case, man, root, device, res):
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
    out["f32_vs_fp4q_ct"] = compare(log, "fp_quant fp32 vs fp4q compressed-tensors f32 (info)", lg, ppl,
                                    case["fp4q"]["compressed-tensors"]["f32"], vocab, root, None, float("inf"))
    res["fp_quant"] = out
    del model
    torch.cuda.empty_cache()


def fpq_rule(x, H, gs, fmt):
    """The fp-quant rule of docs/FORMAT.md §13 in torch (reference for the kernels): Triton's float32
    `/` is div.full.f32 = a * RN(1/b) (torch's CUDA 1.0 / b is IEEE, i.e. RN); the float32
    rotation is tl.dot 'ieee' = a sequential fma over k (each step summed in float64 and
    rounded once: the fma, barring a rare double rounding for h >= 32); bf16 inputs: exact products summed, rounded once."""
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
        return num * (1.0 / den)

    if fmt == "nvfp4":
        g = gs.float()
        S = dv(g * a, 6.0).clamp(max=448).to(torch.float8_e4m3fn).float()
        v = dv(xh * g, S)
        out = dv(tz(v) * S, g)
        out = torch.where(S > 0, out, torch.zeros_like(out))
    else:
        s = dv(torch.exp2(torch.floor(torch.log2(a)) - 2), torch.tensor(0.75, device=x.device))
        v = dv(xh, s)
        out = tz(v) * s
        out = torch.where(a > 0, out, torch.zeros_like(out))
    return out.reshape(x.shape).to(x.dtype)


def probe_rcp(log, device, out):
    """Triton's float32 division on the divisors fp-quant uses (E4M3 mantissas, 6, 0.75, bf16
    global scales): is div.full.f32(a, b) = fl(a * RN(1/b)) (what fp4q emulates)?"""
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def _div(a_ptr, b_ptr, o_ptr, n: tl.constexpr):
        i = tl.arange(0, n)
        tl.store(o_ptr + i, tl.load(a_ptr + i) / tl.load(b_ptr + i))

    bs = [1 + m / 8 for m in range(8)] + [6.0, 0.75, 498.0, 644.0, 1232.0, 3.0] + \
        [float(v) for v in torch.arange(1, 256, dtype=torch.float32) * 8]  # bf16-exact integers
    n = 1
    while n < len(bs):
        n *= 2
    b = torch.tensor(bs + [1.0] * (n - len(bs)), dtype=torch.float32, device=device)
    g = torch.Generator(device="cpu").manual_seed(5)
    worst = {"rcp_mismatch": 0, "div_mismatch": 0, "ieee_mismatch": 0, "trials": 0}
    for rep in range(64):
        a = (torch.rand(n, generator=g) * 8 + 0.1).to(device)
        if rep == 0:
            a = torch.ones(n, device=device)  # 1/b itself
        o = torch.empty_like(a)
        _div[(1,)](a, b, o, n)
        want = a * (1.0 / b)  # RN reciprocal, one product rounding
        worst["div_mismatch"] += int((o != want).sum())
        worst["ieee_mismatch"] += int((o != a / b).sum())
        worst["trials"] += n
        if rep == 0:
            worst["rcp_mismatch"] = int((o != 1.0 / b).sum())
            bad = [(bs[i], float(o[i]), float(1.0 / b[i])) for i in range(len(bs)) if float(o[i]) != float(1.0 / b[i])]
            worst["rcp_bad"] = bad[:20]
    out["div_full"] = worst
    log(f"  triton fp32 '/': rcp(b) != RN(1/b) for {worst['rcp_mismatch']} of {len(bs)} divisors "
        f"{worst.get('rcp_bad', [])}; a/b != fl(a*RN(1/b)) {worst['div_mismatch']} / {worst['trials']} "
        f"(vs IEEE a/b: {worst['ieee_mismatch']} differ)")


def run_kernels(log, device, res):
    import torch
    from fp_quant import FPQuantDtype
    from fp_quant.module.pseudoquant_linear_fns import forward_pseudoquantize
    from scipy.linalg import hadamard
    torch.manual_seed(0)
    out = {}
    for fmt in ("nvfp4", "mxfp4"):
        for dt in (torch.bfloat16, torch.float32):
            for g in ((16, 128) if fmt == "nvfp4" else (32, 128)):
                H = torch.tensor(hadamard(g) * g ** -0.5, dtype=dt, device=device)
                x = (torch.randn(1024, 256, device=device) * torch.exp(torch.randn(1024, 1, device=device))).to(dt)
                gs = torch.tensor([1232.0], dtype=dt, device=device)
                y = forward_pseudoquantize(x, H, gs, FPQuantDtype(fmt), "abs_max")[0]
                r = fpq_rule(x, H, gs, fmt)
                diff = (y.float() != r.float())
                key = f"{fmt}/{str(dt).split('.')[-1]}/g{g}"
                out[key] = {"elements": diff.numel(), "differ": int(diff.sum()),
                            "max_abs_diff": float((y.float() - r.float()).abs().max())}
                log(f"  kernel {key:<26} differing elements {int(diff.sum())} / {diff.numel()}  "
                    f"max |diff| {out[key]['max_abs_diff']:.3e}")
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
    try:
        probe_rcp(log, device, out)
    except Exception:  # noqa: BLE001
        log(traceback.format_exc())
    res["kernels"] = out


def captured_check(log, model, lg_ids, device, tag):
    """Chaos-free check of the activation rule: every FPQuantLinear's real input during the logits
    run goes through the kernel (forward_pseudoquantize) and through fpq_rule; differing elements
    are counted (0 = fp4q's rule is the kernel's, bit for bit). Perplexity comparisons of a W4A4
    model amplify ulp-level differences elsewhere (GEMM summation order) into flipped FP4 codes;
    this check does not."""
    import torch
    from fp_quant import FPQuantLinear
    from fp_quant.module.pseudoquant_linear_fns import forward_pseudoquantize
    seen = {}

    def pre(mod, inp, name=None):
        if name not in seen:
            seen[name] = (mod, inp[0].detach().reshape(-1, inp[0].shape[-1]).clone())
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: pre(mod, inp, n))
             for n, m in model.named_modules() if isinstance(m, FPQuantLinear)]
    try:
        model_logits(model, lg_ids, device)
    finally:
        for hk in hooks:
            hk.remove()
    tot = diff = 0
    worst = []
    for name, (mod, x) in seen.items():
        fmt = mod.config.forward_dtype.value
        y = forward_pseudoquantize(x, mod.forward_hadamard_matrix, mod.act_global_scale, mod.config.forward_dtype,
                                   mod.config.forward_method)[0]
        r = fpq_rule(x, mod.forward_hadamard_matrix, mod.act_global_scale, fmt)
        d = int((y.float() != r.float()).sum())
        tot += y.numel()
        diff += d
        if d:
            worst.append((name, d))
    log(f"  captured inputs {tag}: {len(seen)} Linears, kernel vs fp4q rule differing elements {diff} / {tot}"
        + (f"  (first: {worst[:4]})" if worst else ""))
    return {"linears": len(seen), "elements": tot, "differ": diff, "by_linear": worst[:32]}


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
            try:
                out["commit"] = subprocess.run(["git", "-C", d, "rev-parse", "HEAD"], capture_output=True, text=True,
                                               timeout=10).stdout.strip() or None
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
            target_l2 = TARGETS["f32_rel_l2"] if tag == "f32" and vname == "preset" else None
            target_ppl = (TARGETS["f32_ppl_rel"] if tag == "f32" else TARGETS["bf16_ppl_rel"]) if vname == "preset" \
                else float("inf")
            out[f"{vname}/{tag}"] = compare(log, f"compressed-tensors {vname} {tag} vs fp4q ct {tag}", lg, ppl, pred,
                                            vocab, root, target_l2, target_ppl)
            for hk in hooks:
                hk.remove()
            del model
            torch.cuda.empty_cache()
    res["compressed_tensors"] = out


# ---------------------------------------------------------------------------------------------


def main(argv=None):
    a = parse_args(argv)
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
            run_kernels(log, a.device, results)
        except Exception:  # noqa: BLE001
            log(traceback.format_exc())
            results["kernels"] = {"error": traceback.format_exc()}
    t0 = time.time()
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
                run_fpq_case(log, case, man, a.root, a.device, res)
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
                        and "vs_" not in k:
                    passes += v["pass"]
                    fails += not v["pass"]
    results["summary"] = {"pass": passes, "fail": fails, "seconds": time.time() - t0}
    json.dump(results, open(a.out, "w"), indent=1)
    log(f"{passes} passed, {fails} failed ({time.time() - t0:.0f} s)")
    return 0 if fails == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
