#!/usr/bin/env python3
"""verify_export.py — independent PyTorch/transformers check of fp4q output directories.

Every subdirectory of --root that contains a config.json written by fp4q (top-level "fp4q"
object, or a compressed-tensors / fp_quant quantization_config) is checked against
docs/FORMAT.md with code that shares nothing with fp4q's C++:

  layout   tensor names / dtypes / shapes of every quantized module as in the FORMAT.md tables,
           no stray tensors, config.json quantization_config fields (exact key sets), scale
           bytes finite (no NaN E4M3 / E8M0 bytes), Hadamard tensors exactly as documented.
  decode   compressed-tensors and fp-quant real-quant: packed codes + scales decoded with the
           documented float32 formulas (NVFP4 e2m1 * (e4m3/gs), MXFP4 e2m1 * 2^(b-127),
           INT4 (u-8) * f16). fp-quant pseudo: dqweight read as stored.
  weights  byte-for-byte comparison between directories of the same quantization run (same
           config["fp4q"] provenance, or --pair A=B): the `dequant` export must equal
           round_dtype(float32(float64(W_rot @ H_pm1) / sqrt(h))) of the decoded codes, a
           pseudo export's dqweight must equal round_dtype(W_rot), and two coded exports
           (compressed-tensors vs fp-quant) must decode to identical float32 weights.
  logits   the model is built with transformers from config.json (quantization_config
           removed); quantized Linears get the decoded rotated weights and a forward pre-hook
           that rotates the input online (x -> x·B with the stored matrix) and, for W4A4,
           fake-quantises it (NVFP4 with input_global_scale / act_global_scale; MXFP4 with
           --mx-act-rule). `dequant` outputs are loaded with transformers' own
           AutoModelForCausalLM.from_pretrained. Logits for --ids are compared with the float32
           little-endian [T x vocab] file fp4q wrote (fp4q eval DIR --dump-logits FILE
           --logits-ids IDS); relative L2 error against --tol-w4a16 / --tol-w4a4, and top-1
           agreement is reported.

Prints a PASS/FAIL table; exit status 0 only when every check passed (SKIP does not fail).

Typical use (GPU machine, directories produced beforehand by fp4q on the CPU machine):
  python3 tools/verify_export.py --root /path/to/exports --ids /path/to/ids.txt
where /path/to/exports holds e.g. nvfp4-ct/, nvfp4-ct.logits.f32, nvfp4-dq/, nvfp4-dq.logits.f32.
"""

import argparse
import glob
import json
import math
import os
import struct
import subprocess
import sys

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__[__doc__.index("Every subdirectory"):],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="directory whose subdirectories are fp4q outputs")
    p.add_argument("--dirs", nargs="*", default=None,
                   help="only these subdirectory names (default: every fp4q output under --root)")
    p.add_argument("--ids", default=None,
                   help="token ids used for the fp4q logits dump (JSON array or whitespace-separated); "
                        "without it the logits check is skipped")
    p.add_argument("--logits", default="{dir}.logits.f32",
                   help="path template of fp4q's logits file per directory; {dir} = the output "
                        "directory path, {name} = its basename, {root} = --root "
                        "(default: %(default)s)")
    p.add_argument("--logits-dtype", default="float32", choices=["float32", "float64"],
                   help="element type of the logits file, little-endian, row-major [T x vocab]")
    p.add_argument("--fp4q", default=None,
                   help="fp4q binary: when a logits file is missing, run it to produce one")
    p.add_argument("--fp4q-eval-args", default="eval {dir} --dump-logits {out} --logits-ids {ids}",
                   help="argument template for --fp4q (default: %(default)s)")
    p.add_argument("--pair", action="append", default=[],
                   help="NAME_A=NAME_B: compare the weights of these two directories byte for byte "
                        "(in addition to automatic pairing by provenance)")
    p.add_argument("--mx-act-rule", default="ct", choices=["ct", "ocp", "fpquant"],
                   help="MXFP4 activation scale rule for W4A4: ct = compressed-tensors / fp4q eval "
                        "(2^(round_to_power_2(amax) exponent - 2)), ocp = 2^(floor(log2 amax)-2), "
                        "fpquant = QuTLASS/FP-Quant 2^floor(log2 amax)/3 (default: %(default)s)")
    p.add_argument("--tol-w4a16", type=float, default=1e-3,
                   help="max relative L2 logits error for weight-only models (default: %(default)s)")
    p.add_argument("--tol-w4a4", type=float, default=2e-2,
                   help="max relative L2 logits error for W4A4 models (default: %(default)s)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--no-logits", action="store_true", help="skip the logits checks")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------
# results table

class Results:
    def __init__(self):
        self.rows = []

    def add(self, d, check, status, detail=""):
        self.rows.append((d, check, status, detail))
        print(f"  [{status}] {d}: {check} {detail}", flush=True)

    def ok(self, d, check, cond, detail=""):
        self.add(d, check, "PASS" if cond else "FAIL", detail)
        return cond

    def table(self):
        w0 = max([len(r[0]) for r in self.rows] + [9])
        w1 = max([len(r[1]) for r in self.rows] + [5])
        lines = [f"{'directory':<{w0}}  {'check':<{w1}}  result  detail",
                 f"{'-' * w0}  {'-' * w1}  ------  ------"]
        for d, c, s, det in self.rows:
            lines.append(f"{d:<{w0}}  {c:<{w1}}  {s:<6}  {det}")
        return "\n".join(lines)

    def failed(self):
        return any(r[2] == "FAIL" for r in self.rows)


# ------------------------------------------------------------------------------------------------
# raw safetensors access (own header parser for dtype tags; torch for the data)

def st_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    meta = h.pop("__metadata__", {})
    return h, meta, 8 + n


class Checkpoint:
    """All tensors of a model directory (single file or sharded with an index)."""

    def __init__(self, d):
        self.dir = d
        idx = os.path.join(d, "model.safetensors.index.json")
        if os.path.exists(idx):
            wm = json.load(open(idx))["weight_map"]
            files = sorted(set(wm.values()))
        else:
            files = ["model.safetensors"]
        self.info = {}   # name -> (file, dtype tag, shape, begin, end, data_start)
        self.meta = {}
        for fn in files:
            path = os.path.join(d, fn)
            h, meta, start = st_header(path)
            self.meta[fn] = meta
            for k, v in h.items():
                self.info[k] = (path, v["dtype"], list(v["shape"]), v["data_offsets"][0],
                                v["data_offsets"][1], start)

    def names(self):
        return sorted(self.info)

    def dtype(self, n):
        return self.info[n][1]

    def shape(self, n):
        return self.info[n][2]

    def raw(self, n):
        path, _, _, b, e, start = self.info[n]
        with open(path, "rb") as f:
            f.seek(start + b)
            return f.read(e - b)

    def tensor(self, n):
        """CPU tensor with the stored element type (F8_E4M3 as uint8 bytes)."""
        import torch
        tag = self.dtype(n)
        dt = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "F64": torch.float64, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
              "I32": torch.int32, "I64": torch.int64, "F8_E4M3": torch.uint8,
              "BOOL": torch.bool}[tag]
        b = bytearray(self.raw(n))
        t = torch.frombuffer(b, dtype=dt) if len(b) else torch.empty(0, dtype=dt)
        return t.reshape(self.shape(n)).clone()

    def f32(self, n):
        import torch
        return self.tensor(n).to(torch.float32)


# ------------------------------------------------------------------------------------------------
# model description from config.json

class Export:
    def __init__(self, d):
        self.dir = d
        self.name = os.path.basename(os.path.normpath(d))
        self.cfg = json.load(open(os.path.join(d, "config.json")))
        self.prov = self.cfg.get("fp4q", {})
        qc = self.cfg.get("quantization_config")
        self.qc = qc
        if qc is None:
            self.layout = "dequant"
        elif qc.get("quant_method") == "compressed-tensors":
            self.layout = "compressed-tensors"
        elif qc.get("quant_method") == "fp_quant":
            self.layout = "fp-quant-pseudo" if qc.get("pseudoquantization") else "fp-quant"
        else:
            self.layout = "unknown"
        self.format = self.prov.get("format")
        self.h = int(self.prov.get("hadamard", 0) or 0)
        self.acts = self.prov.get("activations", "none")
        if self.layout == "compressed-tensors":
            w = qc["config_groups"]["group_0"]["weights"]
            self.format = {"tensor_group": "nvfp4"}.get(w["strategy"], "mxfp4" if w["type"] == "float" else "int4")
            tc = qc.get("transform_config") or {}
            v = (tc.get("config_groups") or {}).get("v")
            self.h = int(v["head_dim"]) if v else 0
            self.acts = "fp4" if qc["config_groups"]["group_0"].get("input_activations") else "none"
        elif self.layout.startswith("fp-quant"):
            self.format = qc["forward_dtype"]
            self.acts = "fp4"
        self.ckpt = Checkpoint(d)
        suffix = {"compressed-tensors": ".weight_packed", "fp-quant": ".qweight",
                  "fp-quant-pseudo": ".dqweight"}.get(self.layout)
        if suffix:
            self.modules = sorted(n[: -len(suffix)] for n in self.ckpt.names() if n.endswith(suffix))
        else:
            self.modules = []

    def key(self):
        p, c = self.prov, self.cfg
        return (c.get("model_type"), c.get("hidden_size"), c.get("num_hidden_layers"),
                c.get("vocab_size"), p.get("format"), p.get("method"), p.get("scales"), p.get("hadamard"),
                p.get("activations"), p.get("quantized_linears"), tuple(p.get("ignored_linears", [])))


def group_size(fmt):
    return 16 if fmt == "nvfp4" else 32


def fpq_g(fmt, h):
    return max(h if h > 1 else 1, 16 if fmt == "nvfp4" else 32)


def sylvester(h):
    import torch
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < h:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


def blockdiag_normalised(g, h):
    import torch
    hb = h if h > 1 else 1
    M = torch.zeros(g, g, dtype=torch.float64)
    Hn = sylvester(hb) / math.sqrt(hb)
    for b in range(g // hb):
        M[b * hb:(b + 1) * hb, b * hb:(b + 1) * hb] = Hn
    return M.to(torch.float32)  # entries float(±1/sqrt(h)) as FORMAT.md 4.1


# ------------------------------------------------------------------------------------------------
# layout checks (FORMAT.md tables)

def expected_tensors(e, out, inn, dq_dtype):
    f, h, a = e.format, e.h, e.acts
    t = {}
    if e.layout == "compressed-tensors":
        if f == "int4":
            t[".weight_packed"] = ("I32", [out, inn // 8])
            t[".weight_scale"] = ("F16", [out, inn // 32])
            t[".weight_shape"] = ("I64", [2])
        else:
            G = group_size(f)
            t[".weight_packed"] = ("U8", [out, inn // 2])
            t[".weight_scale"] = ("F8_E4M3" if f == "nvfp4" else "U8", [out, inn // G])
            if f == "nvfp4":
                t[".weight_global_scale"] = ("F32", [1])
                if a == "fp4":
                    t[".input_global_scale"] = ("F32", [1])
        if h > 1:
            t[".v_input.weight"] = ("F32", [h, h])
    elif e.layout in ("fp-quant", "fp-quant-pseudo"):
        G = group_size(f)
        g = fpq_g(f, h)
        if e.layout == "fp-quant":
            t[".qweight"] = ("U8", [out, inn // 2])
            t[".scales"] = ("U8", [out, inn // G])
        else:
            t[".dqweight"] = (dq_dtype, [out, inn])
        t[".weight_global_scale"] = ("F32", [1])
        t[".act_global_scale"] = ("F32", [1])
        t[".forward_hadamard_matrix"] = ("F32", [g, g])
        t[".backward_hadamard_matrix"] = ("F32", [g, g])
    return t


def module_shape(e, m):
    c = e.ckpt
    if e.layout == "compressed-tensors":
        o, k = c.shape(m + ".weight_packed")
        return o, k * (8 if e.format == "int4" else 2)
    if e.layout == "fp-quant":
        o, k = c.shape(m + ".qweight")
        return o, 2 * k
    return tuple(c.shape(m + ".dqweight"))


def check_config(e, res):
    qc = e.qc
    ign_ok = True
    if e.layout == "compressed-tensors":
        top = {"config_groups", "format", "global_compression_ratio", "ignore", "kv_cache_scheme",
               "quant_method", "quantization_status", "sparsity_config", "transform_config", "version"}
        res.ok(e.name, "config: quantization_config keys", set(qc) == top, str(sorted(set(qc) ^ top)))
        g = qc["config_groups"]["group_0"]
        fmt = {"nvfp4": "nvfp4-pack-quantized", "mxfp4": "mxfp4-pack-quantized", "int4": "pack-quantized"}[e.format]
        res.ok(e.name, "config: format (global, group)", qc["format"] == fmt and g["format"] == fmt,
               f"{qc['format']} / {g['format']}")
        res.ok(e.name, "config: quantization_status", qc["quantization_status"] == "compressed")
        wk = {"num_bits", "type", "symmetric", "strategy", "group_size", "dynamic", "actorder"}
        res.ok(e.name, "config: weights args (no extra keys)", set(g["weights"]) == wk and g["weights"]["actorder"] is None
               and g["weights"]["dynamic"] is False and g["weights"]["num_bits"] == 4,
               json.dumps(g["weights"], sort_keys=True))
        ia = g.get("input_activations")
        if ia is not None:
            ak = {"num_bits", "type", "symmetric", "strategy", "group_size", "dynamic"}
            want_dyn = "local" if e.format == "nvfp4" else True
            res.ok(e.name, "config: input_activations args", set(ia) == ak and ia["dynamic"] == want_dyn,
                   json.dumps(ia, sort_keys=True))
        ignore = qc["ignore"]
    elif e.layout.startswith("fp-quant"):
        keys = {"quant_method", "forward_dtype", "forward_method", "backward_dtype", "store_master_weights",
                "hadamard_group_size", "pseudoquantization", "transform_init", "modules_to_not_convert"}
        res.ok(e.name, "config: fp_quant keys", set(qc) == keys, str(sorted(set(qc) ^ keys)))
        res.ok(e.name, "config: hadamard_group_size", qc["hadamard_group_size"] == fpq_g(e.format, e.h),
               f"{qc['hadamard_group_size']} (rotation {e.h})")
        res.ok(e.name, "config: transform_init", qc["transform_init"] == ("hadamard" if e.h > 1 else "identity"))
        ignore = qc["modules_to_not_convert"]
    else:
        res.ok(e.name, "config: no quantization_config", qc is None)
        return
    # fused shards: all or none ignored
    groups = [("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("w1", "w3")]
    mods = set(e.modules)
    for m in mods:
        parent, leaf = m.rsplit(".", 1) if "." in m else ("", m)
        for gset in groups:
            if leaf in gset:
                for other in gset:
                    if parent + "." + other in ignore:
                        ign_ok = False
    res.ok(e.name, "config: ignore consistent across fused shards", ign_ok and "lm_head" in ignore)


def check_layout(e, res):
    c = e.ckpt
    dq_dtype = None
    if e.layout == "fp-quant-pseudo" and e.modules:
        dq_dtype = c.dtype(e.modules[0] + ".dqweight")
    owned = set()
    bad = []
    for m in e.modules:
        o, k = module_shape(e, m)
        for suf, (dt, shape) in expected_tensors(e, o, k, dq_dtype).items():
            n = m + suf
            owned.add(n)
            if n not in c.info:
                bad.append(f"{n} missing")
            elif c.dtype(n) != dt or c.shape(n) != shape:
                bad.append(f"{n}: {c.dtype(n)} {c.shape(n)} != {dt} {shape}")
        if m + ".weight" in c.info and e.layout != "dequant":
            bad.append(f"{m}.weight present")
    # stray per-module tensors (anything else under a quantized module but .bias)
    for n in c.names():
        if n not in owned and any(n.startswith(m + ".") for m in e.modules) and not n.endswith(".bias"):
            bad.append(f"unexpected {n}")
    res.ok(e.name, f"layout: {len(e.modules)} modules, tensor table", not bad, "; ".join(bad[:5]))
    meta = next(iter(c.meta.values()), {})
    res.ok(e.name, "layout: __metadata__", meta.get("format") == "pt" and "fp4q_version" in meta,
           json.dumps(meta, sort_keys=True)[:120])


# ------------------------------------------------------------------------------------------------
# decoding (FORMAT.md 2.5), float32 on CPU

def unpack_nibbles(packed):
    import torch
    p = packed.to(torch.int32)
    lo, hi = p & 0xF, (p >> 4) & 0xF
    return torch.stack([lo, hi], -1).reshape(p.shape[0], -1)  # low nibble = even column


def e4m3_value(b):
    """E4M3fn byte -> float32, by the bit formula of FORMAT.md 2.4 (no float8 dtype needed)."""
    import torch
    b = b.to(torch.int32)
    e, m = (b >> 3) & 0xF, (b & 7).to(torch.float64)
    v = torch.where(e == 0, torch.ldexp(m, torch.full_like(e, -9)),
                    torch.ldexp(1.0 + m / 8.0, e - 7))
    v = torch.where((b & 0x80) != 0, -v, v)
    v = torch.where((b & 0x7F) == 0x7F, torch.full_like(v, float("nan")), v)
    return v.to(torch.float32)


def e4m3_round(a):
    """float32 a in [0, 448] -> nearest E4M3 value (RNE), as float32."""
    import torch
    _, ex = torch.frexp(a)
    e = torch.clamp(ex - 1, min=-6)                 # floor(log2 a); subnormal step below 2^-6
    step = torch.ldexp(torch.ones_like(a), e - 3)
    return torch.where(a > 0, torch.round(a / step) * step, torch.zeros_like(a))


def e8m0_value(b):
    import torch
    b = b.to(torch.int32)
    bits = torch.where(b > 0, b << 23, torch.full_like(b, 0x00400000))  # 2^(b-127); b=0 -> 2^-127
    return bits.view(torch.float32)


def decode_module(e, m, res, nan_flags):
    """Rotated-domain dequantised weight W_rot (float32 [out, in]) of a coded module."""
    import torch
    c = e.ckpt
    lut = torch.tensor(E2M1, dtype=torch.float32)
    if e.layout == "compressed-tensors" and e.format == "int4":
        w = c.tensor(m + ".weight_packed")  # int32 [out, in/8]
        out = w.shape[0]
        u = torch.stack([(w >> (4 * k)) & 0xF for k in range(8)], -1).reshape(out, -1)
        v = (u - 8).to(torch.float32)
        s = c.tensor(m + ".weight_scale").to(torch.float32)
        if not torch.isfinite(s).all() or (s < 0).any():
            nan_flags.append(m)
        shp = c.tensor(m + ".weight_shape").tolist()
        if shp != [out, v.shape[1]]:
            nan_flags.append(m + " weight_shape")
        return v * s.repeat_interleave(32, dim=1)
    if e.layout == "compressed-tensors":
        codes = unpack_nibbles(c.tensor(m + ".weight_packed"))
        sb = c.tensor(m + ".weight_scale")
    else:
        codes = unpack_nibbles(c.tensor(m + ".qweight"))
        sb = c.tensor(m + ".scales")
    q = lut[codes.long()]
    G = group_size(e.format)
    if e.format == "nvfp4":
        if ((sb & 0x7F) == 0x7F).any() or (sb & 0x80).any():
            nan_flags.append(m)
        gs = c.tensor(m + ".weight_global_scale").to(torch.float32)
        s = e4m3_value(sb) / gs  # division first, float32
    else:
        if (sb == 0xFF).any():
            nan_flags.append(m)
        s = e8m0_value(sb)
        if e.layout == "fp-quant":
            wgs = c.tensor(m + ".weight_global_scale").to(torch.float32)
            if float(wgs) != 1.0:
                nan_flags.append(m + f" weight_global_scale {float(wgs)} (fp4q writes 1.0)")
            s = s / wgs
        s = torch.where(sb == 0, torch.zeros_like(s), s)
    return q * s.repeat_interleave(G, dim=1)


def rotated_weight(e, m, res, flags):
    import torch
    if e.layout == "fp-quant-pseudo":
        return e.ckpt.f32(m + ".dqweight")
    return decode_module(e, m, res, flags)


def unrotate(w, h):
    """FORMAT.md section 6: float32(float64(W @ H_pm1) / sqrt(h))."""
    import torch
    if h <= 1:
        return w.clone()
    out, inn = w.shape
    H = sylvester(h)
    s = w.to(torch.float64).reshape(out, inn // h, h) @ H
    return (s / math.sqrt(h)).to(torch.float32).reshape(out, inn)


def to_dtype_tag(t, tag):
    import torch
    return t.to({"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[tag])


def check_decode(e, res):
    import torch
    if e.layout not in ("compressed-tensors", "fp-quant", "fp-quant-pseudo"):
        return
    flags, bad_mat = [], []
    for m in e.modules:
        w = rotated_weight(e, m, res, flags)
        if not torch.isfinite(w).all():
            flags.append(m + " non-finite")
        c = e.ckpt
        if e.layout == "compressed-tensors" and e.h > 1:
            v = c.f32(m + ".v_input.weight")
            if not torch.equal(v, sylvester(e.h).to(torch.float32)):
                bad_mat.append(m)
        if e.layout.startswith("fp-quant"):
            g = fpq_g(e.format, e.h)
            want = blockdiag_normalised(g, e.h)
            for nm in (".forward_hadamard_matrix", ".backward_hadamard_matrix"):
                if not torch.equal(c.f32(m + nm), want):
                    bad_mat.append(m + nm)
            if e.format == "mxfp4" and float(c.f32(m + ".act_global_scale")) != 3.0:
                flags.append(m + " act_global_scale != 3")
            if e.format == "nvfp4":
                for nm in (".weight_global_scale", ".act_global_scale"):
                    x = c.f32(m + nm)
                    if not torch.equal(x, x.to(torch.bfloat16).to(torch.float32)):
                        flags.append(m + nm + " not bf16-exact")
    res.ok(e.name, "decode: scales finite, global scales", not flags, "; ".join(flags[:5]))
    res.ok(e.name, "decode: rotation matrices", not bad_mat, "; ".join(bad_mat[:5]))


# ------------------------------------------------------------------------------------------------
# byte-for-byte weight comparisons between exports of one run

def compare_pair(a, b, res):
    import torch
    label = f"{a.name} vs {b.name}"
    coded = ("compressed-tensors", "fp-quant")
    if a.layout not in coded and b.layout in coded:
        a, b = b, a
    if a.layout not in coded:
        return
    if b.layout == "dequant":
        mism = []
        for m in a.modules:
            ref = unrotate(decode_module(a, m, res, []), a.h)
            n = m + ".weight"
            if n not in b.ckpt.info:
                mism.append(f"{n} missing")
                continue
            tag = b.ckpt.dtype(n)
            want = to_dtype_tag(ref, tag).contiguous().view(torch.uint8)
            got = b.ckpt.tensor(n).contiguous().view(torch.uint8)
            if not torch.equal(want.reshape(-1), got.reshape(-1)):
                nd = int((want.reshape(-1) != got.reshape(-1)).sum())
                mism.append(f"{m}: {nd} bytes differ")
        res.ok(label, "weights: dequant == W_rot·B (bytes)", not mism, "; ".join(mism[:5]))
        # passthrough tensors identical (dtype permitting)
        diffs = []
        qset = set(a.modules)
        for n in b.ckpt.names():
            if n.rsplit(".", 1)[0] in qset:
                continue
            if n not in a.ckpt.info:
                diffs.append(f"{n} missing in {a.name}")
            elif a.ckpt.dtype(n) == b.ckpt.dtype(n) and a.ckpt.raw(n) != b.ckpt.raw(n):
                diffs.append(n)
        res.ok(label, "weights: passthrough tensors", not diffs, "; ".join(diffs[:5]))
    elif b.layout == "fp-quant-pseudo":
        mism = []
        for m in a.modules:
            ref = decode_module(a, m, res, [])
            n = m + ".dqweight"
            tag = b.ckpt.dtype(n)
            want = to_dtype_tag(ref, tag).contiguous().view(torch.uint8)
            got = b.ckpt.tensor(n).contiguous().view(torch.uint8)
            if not torch.equal(want.reshape(-1), got.reshape(-1)):
                mism.append(m)
        res.ok(label, "weights: dqweight == round(W_rot) (bytes)", not mism, "; ".join(mism[:5]))
    elif b.layout in coded:
        mism = [m for m in a.modules
                if m not in b.modules or not torch.equal(
                    decode_module(a, m, res, []).view(torch.int32), decode_module(b, m, res, []).view(torch.int32))]
        res.ok(label, "weights: identical decoded W_rot", not mism, "; ".join(mism[:5]))


# ------------------------------------------------------------------------------------------------
# activation fake-quantisation (the rotated input), float32

def e2m1_round(a):
    """|a| -> index on the E2M1 grid, RNE ties to even mantissa (FORMAT.md 2.1)."""
    return ((a > 0.25).int() + (a >= 0.75).int() + (a > 1.25).int() + (a >= 1.75).int()
            + (a > 2.5).int() + (a >= 3.5).int() + (a > 5.0).int())


def fake_quant(x, fmt, gs, rule):
    import torch
    mag = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], device=x.device)
    G = group_size(fmt)
    shp = x.shape
    xg = x.reshape(-1, G)
    amax = xg.abs().amax(-1, keepdim=True)
    if fmt == "nvfp4":
        S = e4m3_round(torch.clamp((amax / 6.0) * gs, max=448.0))
        s = S / gs
    else:
        bits = amax.view(torch.int32)
        if rule == "ct":
            field = ((bits + (1 << 21)) >> 23) & 0xFF
            ex = torch.where(field == 0, torch.full_like(field, -127), field - 129).clamp(-127, 127)
            s = e8m0_value(ex + 127)
        elif rule == "ocp":
            field = (bits >> 23) & 0xFF
            ex = torch.where(field == 0, torch.full_like(field, -127), field - 129).clamp(-127, 127)
            s = e8m0_value(ex + 127)
        else:  # fpquant: 2^floor(log2 amax) / 3
            s = (bits & 0x7F800000).view(torch.float32) / 3.0
    ok = s > 0
    safe = torch.where(ok, s, torch.ones_like(s))
    idx = e2m1_round((xg / safe).abs()).long()
    q = torch.where(torch.signbit(xg), -mag[idx], mag[idx])
    return torch.where(ok, q * s, torch.zeros_like(xg)).reshape(shp)


# ------------------------------------------------------------------------------------------------
# logits

def read_ids(path):
    txt = open(path).read().strip()
    if txt.startswith("["):
        return [int(v) for v in json.loads(txt)]
    return [int(v) for v in txt.split()]


def first_ok(make):
    """transformers 5 spells the dtype argument `dtype`, 4.x `torch_dtype`; eager attention
    keeps the float32 computation close to fp4q's."""
    import torch
    last = None
    for kw in ({"dtype": torch.float32, "attn_implementation": "eager"},
               {"torch_dtype": torch.float32, "attn_implementation": "eager"},
               {"torch_dtype": torch.float32}):
        try:
            return make(kw).to(torch.float32)
        except TypeError as ex:
            last = ex
    raise last


def build_model(e, device):
    """transformers model (float32) with the export's weights; hooks for the online transform."""
    import tempfile
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    if e.layout == "dequant":
        model = first_ok(lambda kw: AutoModelForCausalLM.from_pretrained(e.dir, **kw))
        return model.to(device).eval(), []
    cfg = dict(e.cfg)
    cfg.pop("quantization_config", None)
    with tempfile.TemporaryDirectory() as td:
        json.dump(cfg, open(os.path.join(td, "config.json"), "w"))
        config = AutoConfig.from_pretrained(td)
    model = first_ok(lambda kw: AutoModelForCausalLM.from_config(config, **kw))
    sd = {}
    owned = set()
    for m in e.modules:
        sd[m + ".weight"] = rotated_weight(e, m, None, [])
        for n in e.ckpt.names():
            if n.startswith(m + ".") and not n.endswith(".bias"):
                owned.add(n)
    for n in e.ckpt.names():
        if n in owned:
            continue
        t = e.ckpt.tensor(n)
        sd[n] = t.to(torch.float32) if t.is_floating_point() else t
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    problems = [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected]
    model = model.to(device).eval()
    # online transform hooks
    modules = dict(model.named_modules())
    for m in e.modules:
        lin = modules[m]
        if e.layout == "compressed-tensors":
            M = (e.ckpt.f32(m + ".v_input.weight") / math.sqrt(e.h)) if e.h > 1 else None
        else:
            M = e.ckpt.f32(m + ".forward_hadamard_matrix")
        gs = None
        if e.acts == "fp4" and e.format == "nvfp4":
            nm = ".input_global_scale" if e.layout == "compressed-tensors" else ".act_global_scale"
            gs = float(e.ckpt.f32(m + nm))
        lin.register_forward_pre_hook(make_hook(M.to(device) if M is not None else None, e, gs))
    return model, problems


def make_hook(M, e, gs):
    def hook(mod, args):
        x = args[0]
        y = x
        if M is not None:
            b = M.shape[0]
            y = (x.reshape(-1, x.shape[-1] // b, b) @ M).reshape(x.shape)
        if e.acts == "fp4":
            y = fake_quant(y, e.format, gs, ARGS.mx_act_rule)
        return (y,) + tuple(args[1:])
    return hook


def check_logits(e, res, ids, args):
    import numpy as np
    import torch
    if e.layout == "unknown":
        return
    path = args.logits.format(dir=os.path.normpath(e.dir), name=e.name, root=args.root)
    if not os.path.exists(path) and args.fp4q:
        cmd = [args.fp4q] + args.fp4q_eval_args.format(dir=e.dir, out=path, ids=args.ids).split()
        subprocess.run(cmd, check=False)
    if not os.path.exists(path):
        res.add(e.name, "logits", "SKIP", f"no fp4q logits file {path}")
        return
    ref = np.fromfile(path, dtype="<f4" if args.logits_dtype == "float32" else "<f8").astype(np.float64)
    T = len(ids)
    if ref.size % T:
        res.ok(e.name, "logits", False, f"{path}: {ref.size} values not a multiple of T={T}")
        return
    ref = torch.from_numpy(ref.reshape(T, -1))
    model, problems = build_model(e, args.device)
    if problems:
        res.ok(e.name, "logits: state dict", False, "; ".join(problems[:5]))
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], device=args.device)).logits[0].double().cpu()
    if out.shape != ref.shape:
        res.ok(e.name, "logits", False, f"shape {tuple(out.shape)} != fp4q {tuple(ref.shape)}")
        return
    rel = float((out - ref).norm() / ref.norm().clamp_min(1e-30))
    mx = float((out - ref).abs().max())
    top1 = float((out.argmax(-1) == ref.argmax(-1)).double().mean())
    tol = args.tol_w4a4 if (e.acts == "fp4" and e.layout != "dequant") else args.tol_w4a16
    res.ok(e.name, "logits vs fp4q", rel <= tol,
           f"rel L2 {rel:.2e} (tol {tol:.0e}), max|d| {mx:.3e}, top-1 agree {100 * top1:.1f}%")


# ------------------------------------------------------------------------------------------------

ARGS = None


def main(argv=None):
    global ARGS
    args = parse_args(argv)
    ARGS = args
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    res = Results()
    dirs = []
    for d in sorted(glob.glob(os.path.join(args.root, "*"))):
        if not os.path.isdir(d) or not os.path.exists(os.path.join(d, "config.json")):
            continue
        if args.dirs and os.path.basename(d) not in args.dirs:
            continue
        cfg = json.load(open(os.path.join(d, "config.json")))
        if "fp4q" not in cfg and "quantization_config" not in cfg:
            continue
        dirs.append(d)
    if not dirs:
        print(f"no fp4q output directories under {args.root}", file=sys.stderr)
        return 2
    exports = []
    for d in dirs:
        name = os.path.basename(d)
        try:
            e = Export(d)
        except Exception as ex:  # noqa: BLE001 - report and continue
            res.ok(name, "open", False, repr(ex))
            continue
        print(f"== {name}: layout {e.layout}, format {e.format}, hadamard {e.h}, activations {e.acts}", flush=True)
        exports.append(e)
        for fn in (check_config, check_layout, check_decode):
            try:
                fn(e, res)
            except Exception as ex:  # noqa: BLE001
                res.ok(name, fn.__name__, False, repr(ex))
    # pairs: same provenance key, or explicit --pair
    by_name = {e.name: e for e in exports}
    pairs = set()
    for i, a in enumerate(exports):
        for b in exports[i + 1:]:
            if a.prov and a.prov.get("method") and a.key() == b.key():
                pairs.add((a.name, b.name))
    for p in args.pair:
        a, b = p.split("=", 1)
        if a in by_name and b in by_name:
            pairs.add((a, b))
        else:
            res.ok(p, "pair", False, "unknown directory name")
    for a, b in sorted(pairs):
        try:
            compare_pair(by_name[a], by_name[b], res)
        except Exception as ex:  # noqa: BLE001
            res.ok(f"{a} vs {b}", "weights", False, repr(ex))
    if not args.no_logits:
        if args.ids is None:
            res.add("*", "logits", "SKIP", "no --ids")
        else:
            ids = read_ids(args.ids)
            for e in exports:
                try:
                    check_logits(e, res, ids, args)
                except Exception as ex:  # noqa: BLE001
                    res.ok(e.name, "logits", False, repr(ex))
    print()
    print(res.table())
    print()
    print("RESULT:", "FAIL" if res.failed() else "PASS")
    return 1 if res.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
