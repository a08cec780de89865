#!/usr/bin/env python3
"""Run FP-Quant's model_quant.py on fp4q's exact calibration windows and evaluation ids.

FP-Quant (public IST-DASLab/FP-Quant) is NOT part of fp4q and is never copied into this
repository: pass the path of an unmodified checkout with --fpquant. This shim changes nothing on
disk; at run time it

  * puts stand-ins for modules model_quant.py imports but this comparison never uses into
    sys.modules when they are not installed: `lm_eval` (OpenLLM evaluation), `datasets` (hub
    downloads), `wandb`; `fast_hadamard_transform` (a CUDA extension) is replaced, only when it is
    missing, by an exact PyTorch Walsh-Hadamard transform with the same interface
    (hadamard_transform(x, scale) = (x_blocks @ H_n) * scale in fp32, returned in x's dtype);
    FP-Quant's Triton Hessian kernel is kept when triton imports, else replaced by H += XᵀX in
    fp32 (--hessian torch forces that);
  * replaces model_quant.get_data by a reader of fp4q's `--dump-calib` JSON (the exact windows,
    one [1, seqlen] tensor each, in file order), and model_quant.compute_perplexity by an
    evaluation of the given id files in non-overlapping windows of --eval-seqlen tokens (exactly
    what `fp4q eval --ids FILE --seqlen N` scores), with fp32 logits and float64 NLL sums, first
    with the model as quantized, upcast to fp32, then cast to bf16 (--eval-dtypes);
  * with --kl-reference MODEL (the unquantized model) also scores, per evaluation dtype and text,
    KL(P_ref || P_q) of the next-token distributions per scored token (log-softmax of fp32 logits
    in float64; mean, standard error, median/90 %/99 % quantiles, max), top-1 agreement and the
    reference's perplexity on the same windows, as `fp4q eval --kl-reference` does. The reference is
    the unquantized model in float32; its fp32 logits per text are computed once and cached in
    --kl-cache (raw float32 [windows x seqlen x vocab], keyed by model files, ids and seqlen,
    written atomically, so concurrent cells share it safely); a cell that finds no cache computes
    them itself (same function, same result);
  * records per quantized Linear the proxy loss fp4q reports (h_err = tr(ΔW H ΔWᵀ)/tr(W H Wᵀ)
    with FP-Quant's own, undamped, rotated Hessian; w_err = ‖ΔW‖/‖W‖) and the NVFP4 weight global
    scale, by wrapping GPTQ.quantize;
  * then calls model_quant.main() with the arguments after `--`.

Results go to --results as one JSON object per line (appended). Usage (on a CUDA machine with
torch + transformers):

  python3 tools/fpquant_shim.py --fpquant .ref/FP-Quant --calib-windows W/calib.json \\
      --eval wikitext2=W/eval-wikitext2.json --eval frankenstein=W/eval-frankenstein.json \\
      --eval-seqlen 512 --results OUT/fpquant.jsonl --tag nvfp4-w4a16-mrgptq -- \\
      --model_name_or_path MODEL --dataset_name_or_path fp4q-windows --format nvfp --w_bits 4 \\
      --a_bits 16 --gptq --w_observer mse --quantization_order activation \\
      --transform_class hadamard --hadamard_group_size 16 --dtype float32 --eval_perplexity

Only the standard library is needed to import this file and to run --self-test (argument parsing,
the windows/ids readers, the KL statistics against a pure-Python definition), so it can be checked
on machines without torch.
"""
import argparse
import hashlib
import importlib
import json
import math
import os
import sys
import tempfile
import time
import types


# ---------------------------------------------------------------------------------------------
# Pure-Python parts (tested without torch)

def read_windows(path):
    """fp4q --dump-calib JSON (or a bare [[ids...], ...]) -> (list of id lists, meta dict)."""
    with open(path) as f:
        j = json.load(f)
    meta = {}
    samples = j
    if isinstance(j, dict):
        if j.get("format", "fp4q-calib-windows") != "fp4q-calib-windows":
            raise ValueError(f"{path}: format is {j.get('format')!r}, expected 'fp4q-calib-windows'")
        if "samples" not in j:
            raise ValueError(f"{path}: no 'samples'")
        samples = j["samples"]
        meta = {k: v for k, v in j.items() if k != "samples"}
    if not isinstance(samples, list) or not samples:
        raise ValueError(f"{path}: 'samples' must be a non-empty list of windows")
    n = len(samples[0]) if isinstance(samples[0], list) else -1
    for i, w in enumerate(samples):
        if not isinstance(w, list) or len(w) != n or n < 2:
            raise ValueError(f"{path}: samples[{i}] is not a list of {n} (>= 2) token ids")
        for k, t in enumerate(w):
            if not isinstance(t, int) or isinstance(t, bool) or t < 0:
                raise ValueError(f"{path}: samples[{i}][{k}] = {t!r} is not a token id")
    if "seqlen" in meta and meta["seqlen"] != n:
        raise ValueError(f"{path}: seqlen {meta['seqlen']} but windows have {n} tokens")
    return samples, meta


def read_ids(path):
    """fp4q tokenize JSON array (or whitespace/comma separated integers) -> list of ids."""
    with open(path) as f:
        text = f.read()
    s = text.lstrip()
    if s.startswith("["):
        ids = json.loads(s)
    else:
        ids = [int(t) for t in text.replace(",", " ").split()]
    if not ids or not all(isinstance(t, int) and t >= 0 for t in ids):
        raise ValueError(f"{path}: expected a non-empty list of token ids")
    return ids


def eval_windows(ids, seqlen):
    """Non-overlapping windows of seqlen ids, remainder dropped (fp4q eval --ids semantics)."""
    if seqlen < 2:
        raise ValueError("eval seqlen must be >= 2")
    n = len(ids) // seqlen
    if n == 0:
        raise ValueError(f"{len(ids)} ids are fewer than one window of {seqlen}")
    return [ids[i * seqlen:(i + 1) * seqlen] for i in range(n)]


def kl_row(ref_logits, q_logits):
    """Pure-Python definition for one position: (KL(P_ref || P_q), argmax agree, log-partition of ref, of q).

    log-softmax in float (Python floats are float64); argmax ties -> lowest index. The torch code in
    evaluate() computes the same per row; self_test() checks kl_stats on values from this."""
    def log_softmax(x):
        m = max(x)
        lz = m + math.log(sum(math.exp(v - m) for v in x))
        return [v - lz for v in x]
    lr, lq = log_softmax(ref_logits), log_softmax(q_logits)
    kl = sum(math.exp(a) * (a - b) for a, b in zip(lr, lq))
    argmax = lambda x: max(range(len(x)), key=lambda j: (x[j], -j))  # noqa: E731  first maximum
    return kl, argmax(ref_logits) == argmax(q_logits), lr, lq


def quantile(sorted_values, q):
    """Element at rank floor(q * (n - 1)) of an ascending list (fp4q eval's definition)."""
    return sorted_values[int(math.floor(q * (len(sorted_values) - 1)))]


def kl_stats(kl, agree, dnll, ref_nll_sum):
    """Summary of per-token values, as `fp4q eval --kl-reference` prints them.

    kl: KL(P_ref || P_q) per scored token; agree: 0/1 top-1 agreement per token; dnll: NLL_q - NLL_ref
    per token; ref_nll_sum: the reference's summed NLL. Standard errors treat tokens as independent."""
    n = len(kl)
    if n == 0 or len(agree) != n or len(dnll) != n:
        raise ValueError("kl_stats: per-token lists must be non-empty and of equal length")

    def mean_se(v):
        m = math.fsum(v) / n
        return m, (math.sqrt(math.fsum((x - m) ** 2 for x in v) / (n - 1) / n) if n > 1 else 0.0)
    kl_mean, kl_se = mean_se(kl)
    d_mean, d_se = mean_se(dnll)
    s = sorted(kl)
    p = sum(agree) / n
    return {"kl": kl_mean, "kl_se": kl_se, "kl_median": quantile(s, 0.5), "kl_p90": quantile(s, 0.9),
            "kl_p99": quantile(s, 0.99), "kl_max": s[-1], "top1": p, "top1_se": math.sqrt(p * (1 - p) / n),
            "ref_ppl": math.exp(ref_nll_sum / n), "ref_nll": ref_nll_sum / n,
            "ln_ppl_ratio": d_mean, "ln_ppl_ratio_se": d_se, "tokens": n}


def ref_cache_key(model_dir, ids, seqlen):
    """Cache key of a reference's logits: its config/weights (content), the ids, the window length."""
    h = hashlib.sha256()
    for f in sorted(os.listdir(model_dir)):
        if f == "config.json" or f.endswith(".safetensors") or f.endswith(".bin"):
            h.update(f.encode())
            with open(os.path.join(model_dir, f), "rb") as fh:
                for b in iter(lambda: fh.read(1 << 24), b""):
                    h.update(b)
    h.update(json.dumps([seqlen, ids], separators=(",", ":")).encode())
    return h.hexdigest()[:24]


def parse_args(argv):
    if "--" in argv:
        k = argv.index("--")
        ours, theirs = argv[:k], argv[k + 1:]
    else:
        ours, theirs = argv, []
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fpquant", help="path of an unmodified FP-Quant checkout (model_quant.py, src/)")
    p.add_argument("--calib-windows", help="fp4q --dump-calib JSON")
    p.add_argument("--eval", action="append", default=[], metavar="NAME=IDS.json",
                   help="evaluation ids (fp4q tokenize output); repeatable")
    p.add_argument("--eval-seqlen", type=int, default=512)
    p.add_argument("--eval-dtypes", default="fp32,bf16", help="comma list of fp32, bf16, as-is")
    p.add_argument("--results", help="append one JSON line with the results here")
    p.add_argument("--tag", default="", help="name of this cell in the results")
    p.add_argument("--hessian", choices=["auto", "triton", "torch"], default="auto",
                   help="FP-Quant's Triton Hessian kernel (auto: when triton imports) or H += XᵀX in torch fp32")
    p.add_argument("--fix-inplace-hessian", action="store_true",
                   help="give GPTQ.update a copy of the layer input. FP-Quant's update() does "
                        "input.reshape(...).float().mul_(sqrt(alpha)): for a float32 model .float() is no copy, so "
                        "the in-place scaling changes the hidden states that the next Linear of the same input "
                        "(k after q, v after k, up after gate) then sees, during the Hessian pass only. "
                        "k's Hessian then weights sequence i by alpha_i, v's by alpha_i^2 (alpha_i = 2/i), and the "
                        "attention/MLP outputs of that pass (inputs of o_proj, down_proj) are wrong. bf16 models "
                        "are not affected (.float() copies)")
    p.add_argument("--kl-reference", metavar="MODEL_DIR",
                   help="unquantized model: also score KL(P_ref || P_q), top-1 agreement and its perplexity")
    p.add_argument("--dump-tokens", metavar="DIR",
                   help="with --kl-reference: write DIR/TAG-TEXT-DTYPE.tsv, one line per scored token "
                        "(window, nll, ref_nll, kl, ent, ref_ent), the format of `fp4q eval --dump-tokens`")
    p.add_argument("--kl-cache", metavar="DIR",
                   help="directory for the reference's fp32 logits per text (shared by cells; default: none, "
                        "each cell computes them)")
    p.add_argument("--self-test", action="store_true", help="test the readers (no torch needed) and exit")
    a = p.parse_args(ours)
    if not a.self_test:
        for need in ("fpquant", "calib_windows", "results"):
            if not getattr(a, need):
                p.error(f"--{need.replace('_', '-')} is required")
        if not theirs:
            p.error("model_quant.py arguments are required after --")
    evals = []
    for e in a.eval:
        if "=" not in e:
            p.error(f"--eval wants NAME=FILE, got {e!r}")
        name, path = e.split("=", 1)
        evals.append((name, path))
    a.eval = evals
    a.eval_dtypes = [d for d in a.eval_dtypes.split(",") if d]
    for d in a.eval_dtypes:
        if d not in ("fp32", "bf16", "as-is"):
            p.error(f"--eval-dtypes: unknown {d!r}")
    return a, theirs


def self_test():
    import tempfile
    d = tempfile.mkdtemp()
    p = os.path.join(d, "w.json")
    with open(p, "w") as f:
        f.write('{"format": "fp4q-calib-windows", "version": 1, "seed": 42, "seqlen": 3, "n": 2, '
                '"bos": 1, "offsets": [0, 5], "samples": [\n  [1,2,3],\n  [1,7,8]\n ]}\n')
    w, m = read_windows(p)
    assert w == [[1, 2, 3], [1, 7, 8]] and m["seed"] == 42, (w, m)
    with open(p, "w") as f:
        f.write("[[1,2],[3]]")
    try:
        read_windows(p)
        raise AssertionError("ragged windows accepted")
    except ValueError:
        pass
    with open(p, "w") as f:
        f.write("[1, 2, 3, 4, 5]\n")
    assert read_ids(p) == [1, 2, 3, 4, 5]
    assert eval_windows(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5]]
    a, theirs = parse_args(["--fpquant", "x", "--calib-windows", "c", "--results", "r", "--eval", "wt=e.json",
                            "--", "--format", "nvfp"])
    assert a.eval == [("wt", "e.json")] and theirs == ["--format", "nvfp"] and a.eval_dtypes == ["fp32", "bf16"]
    # KL math: identical logits -> exactly 0; a two-token case by hand; shift invariance; stats.
    kl, agree, _, _ = kl_row([1.5, -2.0, 0.25], [1.5, -2.0, 0.25])
    assert kl == 0.0 and agree, kl
    # p = (0.5, 0.5), q = (0.9, 0.1): KL = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1)
    kl, agree, _, _ = kl_row([0.0, 0.0], [math.log(0.9), math.log(0.1)])
    assert abs(kl - (0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(5.0))) < 1e-15 and agree, kl
    kl2, _, _, _ = kl_row([7.0, 7.0], [math.log(0.9) - 3.0, math.log(0.1) - 3.0])
    assert abs(kl2 - kl) < 1e-14
    kl, agree, _, _ = kl_row([0.0, 1.0, 0.0], [2.0, 1.0, 0.0])
    assert kl > 0 and not agree
    st = kl_stats([0.0, 0.1, 0.2, 0.3], [1, 1, 0, 1], [0.0, 0.5, -0.5, 1.0], 4 * math.log(10.0))
    assert abs(st["kl"] - 0.15) < 1e-15 and st["kl_median"] == 0.1 and st["kl_max"] == 0.3, st
    assert abs(st["kl_se"] - math.sqrt((0.0225 + 0.0025 + 0.0025 + 0.0225) / 3 / 4)) < 1e-15, st
    assert st["top1"] == 0.75 and abs(st["ref_ppl"] - 10.0) < 1e-12 and abs(st["ln_ppl_ratio"] - 0.25) < 1e-15, st
    a, _ = parse_args(["--fpquant", "x", "--calib-windows", "c", "--results", "r", "--kl-reference", "m",
                       "--kl-cache", "k", "--", "--format", "nvfp"])
    assert a.kl_reference == "m" and a.kl_cache == "k"
    print("fpquant_shim self-test: ok")


# ---------------------------------------------------------------------------------------------
# Runtime parts (torch)

def _stub(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


def _unavailable(what):
    def f(*a, **k):
        raise RuntimeError(f"{what} is not available in the fp4q side-by-side shim")
    return f


def install_stubs(hessian_mode, log):
    import torch

    def have(mod):
        try:
            importlib.import_module(mod)
            return True
        except Exception:
            return False

    if not have("lm_eval"):
        lm = _stub("lm_eval", simple_evaluate=_unavailable("lm_eval"))
        _stub("lm_eval.utils", make_table=_unavailable("lm_eval.make_table"))
        _stub("lm_eval.models")
        _stub("lm_eval.models.huggingface", HFLM=_unavailable("lm_eval.HFLM"))
        _stub("lm_eval.tasks", TaskManager=_unavailable("lm_eval.TaskManager"))
        lm.utils = sys.modules["lm_eval.utils"]
        lm.tasks = sys.modules["lm_eval.tasks"]
        log["stubs"].append("lm_eval")
    if not have("datasets"):
        _stub("datasets", load_dataset=_unavailable("datasets.load_dataset"))
        log["stubs"].append("datasets")
    if not have("fast_hadamard_transform"):
        def hadamard_transform(x, scale=1.0):
            n = x.shape[-1]
            if n & (n - 1):
                raise ValueError(f"hadamard_transform: size {n} is not a power of two")
            y = x.reshape(-1, n).to(torch.float32)
            h = 1
            while h < n:  # in-place butterflies of the Sylvester (natural order) H_n
                y = y.reshape(-1, n // (2 * h), 2, h)
                a, b = y[:, :, 0, :], y[:, :, 1, :]
                y = torch.stack((a + b, a - b), dim=2)
                h *= 2
            return (y.reshape(x.shape) * scale).to(x.dtype)
        _stub("fast_hadamard_transform", hadamard_transform=hadamard_transform)
        log["stubs"].append("fast_hadamard_transform (PyTorch FWHT)")
    use_torch_h = hessian_mode == "torch" or (hessian_mode == "auto" and not have("triton"))
    if use_torch_h:
        def accumulate_hessian(mat_hessian, mat_input, save_lower_only=False, compute_lower_only=True):
            x = mat_input.reshape(-1, mat_input.shape[-1]).to(torch.float32)
            mat_hessian.add_(x.T @ x)
            return mat_hessian
        _stub("src.quantization.accumulate_hessian", accumulate_hessian=accumulate_hessian)
        log["hessian"] = "torch fp32"
    else:
        log["hessian"] = "FP-Quant triton kernel"


def main(argv):
    a, theirs = parse_args(argv)
    if a.self_test:
        self_test()
        return 0
    t0 = time.time()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    windows, meta = read_windows(a.calib_windows)
    evals = [(name, read_ids(path)) for name, path in a.eval]
    import torch
    import torch.nn.functional as F
    log = {"stubs": []}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    sys.path.insert(0, os.path.abspath(a.fpquant))
    install_stubs(a.hessian, log)
    mq = importlib.import_module("model_quant")
    gptq_mod = importlib.import_module("src.quantization.gptq")
    mu = importlib.import_module("src.utils.model_utils")

    # The block-0 input collector must look like the decoder layer it wraps (transformers may read
    # attributes such as attention_type from it).
    def _collector_getattr(self, name):
        try:
            return torch.nn.Module.__getattr__(self, name)
        except AttributeError:
            return getattr(torch.nn.Module.__getattr__(self, "module"), name)
    mu.InputCollector.__getattr__ = _collector_getattr

    state = {"model": None, "layers": [], "evals": {}}

    # Model loading: plain from_pretrained (no device_map, which needs accelerate) + .to(device).
    real_auto = mq.AutoModelForCausalLM

    class _Auto:
        @staticmethod
        def from_pretrained(path, torch_dtype=None, device_map=None, low_cpu_mem_usage=True, **kw):
            model = real_auto.from_pretrained(path, dtype=torch_dtype if torch_dtype is not None else "auto", **kw)
            if device_map is not None:
                model = model.to(device_map)
            state["model"] = model
            return model
    mq.AutoModelForCausalLM = _Auto

    def get_data(dataset_name, tokenizer, seqlen, n, seed=42):
        if n != len(windows) or seqlen != len(windows[0]):
            raise SystemExit(f"fpquant_shim: model_quant asked for {n} x {seqlen} but {a.calib_windows} has "
                             f"{len(windows)} x {len(windows[0])}; pass --num_sequences/--sequence_length to match")
        return [torch.tensor([w], dtype=torch.long) for w in windows]
    mq.get_data = get_data
    mq.get_wikitext2 = lambda tokenizer, seqlen: []

    if a.fix_inplace_hessian:
        orig_update = gptq_mod.GPTQ.update

        def update_on_copy(self, input):
            return orig_update(self, input.clone())
        gptq_mod.GPTQ.update = update_on_copy
        log["fix_inplace_hessian"] = True

    orig_quantize = gptq_mod.GPTQ.quantize

    def quantize(self):
        H0 = self.H.detach().to(torch.float64).clone()           # undamped, rotated, unpermuted
        W0 = self.layer.weight.detach().to(torch.float64).clone()  # rotated weight before GPTQ
        out = orig_quantize(self)
        D = out[0].detach().to(torch.float64) - W0
        num = float(((D @ H0) * D).sum())
        den = float(((W0 @ H0) * W0).sum())
        name = next((n for n, m in state["model"].named_modules() if m is self.layer), "?") if state["model"] else "?"
        q = self.quantizer
        gs = float(q.global_scale.reshape(-1)[0]) if q is not None and hasattr(q, "global_scale") else None
        state["layers"].append({"name": name, "h_err": num / den if den > 0 else float("nan"),
                                "w_err": float(D.norm() / W0.norm()) if float(W0.norm()) > 0 else 0.0,
                                "weight_global_scale": gs})
        return out
    gptq_mod.GPTQ.quantize = quantize

    ref_state = {"model": None}

    @torch.no_grad()
    def reference_logits(name, ids, dev):
        """The reference's fp32 logits [T, V] of every window of ids, in order (one at a time):
        read from the --kl-cache file when there, else computed by the unquantized float32 model
        (and cached for the other cells when --kl-cache is given)."""
        wins = eval_windows(ids, a.eval_seqlen)
        T = a.eval_seqlen
        path = None
        if a.kl_cache:
            path = os.path.join(a.kl_cache, f"ref-{name}-{ref_cache_key(a.kl_reference, ids, T)}.f32")
        if path and os.path.exists(path):
            size = os.path.getsize(path)
            V = size // (len(wins) * T * 4)
            if V * len(wins) * T * 4 != size:
                raise SystemExit(f"fpquant_shim: {path}: {size} bytes is not {len(wins)} x {T} x V float32")
            log.setdefault("kl_cache_read", []).append(path)
            buf = bytearray(T * V * 4)  # one window; .to(dev) copies it before the next read
            with open(path, "rb") as f:
                for _ in wins:
                    if f.readinto(buf) != len(buf):
                        raise SystemExit(f"fpquant_shim: {path}: short read")
                    yield torch.frombuffer(buf, dtype=torch.float32).view(T, V).to(dev)
            return
        if ref_state["model"] is None:
            rm = real_auto.from_pretrained(a.kl_reference, dtype=torch.float32).to(dev).eval()
            rm.config.use_cache = False  # as model_quant.main sets it for the evaluated model
            rm.requires_grad_(False)
            ref_state["model"] = rm
            log["kl_reference_loaded"] = a.kl_reference
        rm = ref_state["model"]
        out = None
        if path:
            os.makedirs(a.kl_cache, exist_ok=True)
            fd, tmp_path = tempfile.mkstemp(dir=a.kl_cache, prefix=f".ref-{name}-")
            out = os.fdopen(fd, "wb")
        try:
            for w in wins:
                lg = rm(torch.tensor([w], dtype=torch.long, device=dev)).logits[0].float()
                if out is not None:
                    out.write(lg.cpu().contiguous().numpy())  # float32, row-major [T, V] (buffer protocol)
                yield lg
            if out is not None:
                out.close()
                out = None
                os.replace(tmp_path, path)  # atomic: readers never see a partial file
                log.setdefault("kl_cache_written", []).append(path)
        finally:
            if out is not None:
                out.close()
                os.unlink(tmp_path)

    @torch.no_grad()
    def evaluate(model, _data, batch_size=1):
        dev = next(model.parameters()).device
        first = None
        for dt in a.eval_dtypes:
            m = model if dt == "as-is" else model.to(torch.float32 if dt == "fp32" else torch.bfloat16)
            for name, ids in evals:
                total, count = 0.0, 0
                kl, agree, dnll, ref_total = [], [], [], 0.0
                tok_rows = []  # (window, nll, ref_nll, ent, ref_ent) per scored token, for --dump-tokens
                refs = reference_logits(name, ids, dev) if a.kl_reference else None
                for wi, w in enumerate(eval_windows(ids, a.eval_seqlen)):
                    x = torch.tensor([w], dtype=torch.long, device=dev)
                    logits = m(x).logits.float()
                    nll = F.cross_entropy(logits[0, :-1], x[0, 1:], reduction="sum")
                    total += float(nll)
                    count += len(w) - 1
                    if refs is not None:
                        # Per scored position t (predicting w[t+1]), as kl_row(): log-softmax of the
                        # fp32 logits in float64, KL(P_ref || P_q) = sum_j p_ref (log p_ref - log p_q),
                        # argmax agreement (torch.argmax: first maximum), NLL difference.
                        lr32 = next(refs)[:-1]
                        lq32 = logits[0, :-1]
                        lr = torch.log_softmax(lr32.double(), dim=-1)
                        lq = torch.log_softmax(lq32.double(), dim=-1)
                        kl += (lr.exp() * (lr - lq)).sum(dim=-1).tolist()
                        agree += (lr32.argmax(dim=-1) == lq32.argmax(dim=-1)).int().tolist()
                        tgt = x[0, 1:].unsqueeze(1)
                        nq, nr = -lq.gather(1, tgt).squeeze(1), -lr.gather(1, tgt).squeeze(1)
                        dnll += (nq - nr).tolist()
                        if a.dump_tokens:  # with the entropies -sum p log p of both distributions
                            hq = -(lq.exp() * lq).sum(dim=-1)
                            hr = -(lr.exp() * lr).sum(dim=-1)
                            tok_rows += list(zip([wi] * len(w), nq.tolist(), nr.tolist(), hq.tolist(), hr.tolist()))
                        ref_total += float(nr.sum())
                mean = total / count
                rec = {"ppl": math.exp(mean), "nll": mean, "tokens": count}
                msg = ""
                if refs is not None:
                    for _ in refs:  # exhausts the generator (closes/renames a cache file being written)
                        pass
                    rec["kl"] = kl_stats(kl, agree, dnll, ref_total)
                    if a.dump_tokens:
                        os.makedirs(a.dump_tokens, exist_ok=True)
                        path = os.path.join(a.dump_tokens, f"{a.tag}-{name}-{dt}.tsv")
                        with open(path + ".part", "w") as f:
                            f.write("window\tnll\tref_nll\tkl\tent\tref_ent\n")
                            for (wi, x, y, hq, hr), k in zip(tok_rows, kl):
                                f.write(f"{wi}\t{x!r}\t{y!r}\t{k!r}\t{hq!r}\t{hr!r}\n")
                        os.replace(path + ".part", path)
                    rec["kl"]["reference"] = a.kl_reference
                    msg = (f", KL {rec['kl']['kl']:.6g} +- {rec['kl']['kl_se']:.2g}, top-1 {rec['kl']['top1']:.4f}, "
                           f"reference ppl {rec['kl']['ref_ppl']:.4f}")
                state["evals"].setdefault(name, {})[dt] = rec
                print(f"fpquant_shim: {a.tag} {name} {dt}: ppl {math.exp(mean):.4f} ({count} tokens){msg}", flush=True)
                if first is None:
                    first = math.exp(mean)
        return first if first is not None else float("nan")
    mq.compute_perplexity = evaluate

    sys.argv = ["model_quant.py"] + theirs
    status = "ok"
    try:
        mq.main()
    except SystemExit as e:
        if e.code not in (0, None):
            status = f"exit {e.code}"
            raise
    except BaseException as e:
        status = f"error: {e!r}"
        raise
    finally:
        rec = {"tag": a.tag, "status": status, "args": theirs, "eval": state["evals"], "layers": state["layers"],
               "calib": {"file": a.calib_windows, "n": len(windows), "seqlen": len(windows[0]),
                         "seed": meta.get("seed"), "source": meta.get("source")},
               "eval_seqlen": a.eval_seqlen, "seconds": time.time() - t0, "torch": torch.__version__,
               "shim": log}
        try:
            import transformers
            rec["transformers"] = transformers.__version__
        except Exception:
            pass
        snap = os.path.join(a.fpquant, "SNAPSHOT.txt")
        if os.path.exists(snap):
            rec["fpquant"] = open(snap).read().strip()
        os.makedirs(os.path.dirname(os.path.abspath(a.results)), exist_ok=True)
        with open(a.results, "a") as f:
            f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
