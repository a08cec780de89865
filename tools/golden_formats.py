#!/usr/bin/env python3
"""Golden files for fp4q's format module, computed independently with PyTorch (>= 2.1).

Usage:  python3 tools/golden_formats.py OUT_DIR
Writes into OUT_DIR (consumed by tests/format/golden_test.cpp, committed under
tests/data/golden_formats/):

  manifest.json            list of cases (see below)
  <case>.in.f32            input matrix [rows x cols], float32 little-endian, row-major
                           (for rotated cases: the ROTATED matrix, x @ blockdiag(H_b/sqrt b),
                           computed in float64 and rounded once to float32)
  <case>.<fmt>.packed.u8   element codes, 2 per byte [rows x cols/2]: byte j of a row holds
                           column 2j in the low nibble, column 2j+1 in the high nibble
                           (compressed-tensors pack_fp4_to_uint8 order; INT4 two's-complement
                           nibbles packed the same way)
  <case>.<fmt>.scales.u8   nvfp4: FP8 E4M3fn bytes [rows x cols/16];
                           mxfp4: E8M0 bytes (exponent + 127) [rows x cols/32];
                           int4 : IEEE f16 little-endian, 2 bytes per scale [rows x cols/32]
  <case>.<fmt>.deq.f32     dequantized matrix (raw cases only), float32 little-endian
  manifest case entry: {"name", "rows", "cols", "hadamard" (block, 0 = none), "source"
  (for rotated cases the unrotated input case), "formats": {fmt: {"global_scale_bits" (uint32
  bits of the float32 NVFP4 weight_global_scale; 1.0 for the others), "files"...}}}

Everything is computed on the CPU with torch ops (no code shared with the C++):
  * E2M1 rounding: nearest grid point of {0,.5,1,1.5,2,3,4,6} by exact float64 distance,
    ties to the even mantissa (even grid index), |v| clamped to 6; the sign bit of the code is
    torch.signbit of the input (so -0.0 and small negatives give code 8).
  * NVFP4 (compressed-tensors math, fp32):  gs = 2688 / amax(W);  S = fp8_e4m3fn(min(amax_g/6 * gs,
    448)) via torch's float8_e4m3fn cast;  effective scale S/gs;  codes of W / (S/gs).
    DOCUMENTED DEVIATION (fp4q convention, implemented here on purpose): gs is rounded DOWN to a
    bfloat16-representable float (torch bf16 RNE cast, stepped down one bf16 ulp if it rounded
    up), so the same number is exact in every consumer (e.g. transformers' fp_quant loader that
    casts to bf16) and every group scale stays <= 448. A group whose S is 0 gets codes 0 and
    dequantizes to exact zeros (fp4q convention; FP-Quant would write a NaN byte there).
  * MXFP4: compressed-tensors generate_mx_scales(amax fp32, num_bits=4), i.e. round_to_power_2
    (amax rounded UP to the next power of two when its mantissa is >= 1.75, else down) then
    exponent - 2; written here with torch.frexp: E = floor(log2 amax), f = amax / 2^E,
    e = E - 2 + (f >= 1.75), clamped to [-127, 127]; byte = e + 127; all-zero group -> byte 0,
    codes 0, dequant 0.
  * INT4: s = float16(amax_g / 7.5) (torch RNE cast), q = clamp(round_half_even(W / s), -8, 7).
  * Block Hadamard: Sylvester recursion H_2n = [[H, H], [H, -H]] (= scipy.linalg.hadamard),
    normalized by 1/sqrt(b), applied to consecutive b-column blocks of each row (x @ H).
"""
import json
import math
import os
import sys

import torch

E2M1_GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float64)


def sylvester(n):
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)], dim=0)
    return h


def block_hadamard(x, b):
    h = sylvester(b) / math.sqrt(b)
    rows, cols = x.shape
    y = x.double().reshape(rows, cols // b, b) @ h
    return y.reshape(rows, cols).float()


def e2m1_codes(v):
    """v: float32 tensor of already-scaled values. Returns uint8 codes (sign<<3 | index)."""
    a = v.double().abs().clamp(max=6.0)
    d = (a.unsqueeze(-1) - E2M1_GRID).abs()
    dmin = d.min(dim=-1, keepdim=True).values
    cand = d == dmin
    even_bonus = torch.tensor([2, 1, 2, 1, 2, 1, 2, 1], dtype=torch.int64)
    idx = (cand.long() * even_bonus).argmax(dim=-1)
    sign = torch.signbit(v).long()
    return (idx | (sign << 3)).to(torch.uint8)


def e2m1_values(codes):
    mag = E2M1_GRID.float()[(codes & 7).long()]
    return torch.where((codes & 8) != 0, -mag, mag)


def int4_values(codes):
    c = codes.long()
    return torch.where(c >= 8, c - 16, c).float()


def bf16_round_down(x):
    """Largest bfloat16 value <= x (x > 0 finite float32 scalar tensor)."""
    b = x.to(torch.bfloat16)
    if b.float().item() > x.item():
        bits = b.view(torch.int16) - 1
        b = bits.view(torch.bfloat16)
    return b.float()


def quant_nvfp4(w):
    rows, cols = w.shape
    amax = w.abs().max()
    if amax.item() == 0:
        gs = torch.tensor(1.0, dtype=torch.float32)
    else:
        gs = bf16_round_down(torch.tensor(2688.0, dtype=torch.float32) / amax)
    g = w.reshape(rows, cols // 16, 16)
    amax_g = g.abs().amax(dim=-1)
    s = ((amax_g / 6.0) * gs).clamp(max=448.0)
    S = s.to(torch.float8_e4m3fn)
    sbytes = S.view(torch.uint8)
    eff = S.float() / gs
    zero = eff == 0
    sbytes = torch.where(zero, torch.zeros_like(sbytes), sbytes)
    safe = torch.where(zero, torch.ones_like(eff), eff)
    codes = e2m1_codes(g / safe.unsqueeze(-1))
    codes = torch.where(zero.unsqueeze(-1), torch.zeros_like(codes), codes)
    deq = e2m1_values(codes) * torch.where(zero, torch.zeros_like(eff), eff).unsqueeze(-1)
    return codes.reshape(rows, cols), sbytes.contiguous(), float(gs.item()), deq.reshape(rows, cols)


def quant_mxfp4(w):
    rows, cols = w.shape
    g = w.reshape(rows, cols // 32, 32)
    amax_g = g.abs().amax(dim=-1)
    zero = amax_g == 0
    m, E = torch.frexp(torch.where(zero, torch.ones_like(amax_g), amax_g))  # amax = m * 2^E
    frac = m.double() * 2.0                                                 # in [1, 2)
    e = (E.long() - 1) - 2 + (frac >= 1.75).long()
    e = e.clamp(-127, 127)
    sbytes = torch.where(zero, torch.zeros_like(e), e + 127).to(torch.uint8)
    eff = torch.pow(torch.tensor(2.0, dtype=torch.float64), e.double()).float()
    eff = torch.where(zero, torch.zeros_like(eff), eff)
    safe = torch.where(zero, torch.ones_like(eff), eff)
    codes = e2m1_codes(g / safe.unsqueeze(-1))
    codes = torch.where(zero.unsqueeze(-1), torch.zeros_like(codes), codes)
    deq = e2m1_values(codes) * eff.unsqueeze(-1)
    return codes.reshape(rows, cols), sbytes.contiguous(), 1.0, deq.reshape(rows, cols)


def quant_int4(w):
    rows, cols = w.shape
    g = w.reshape(rows, cols // 32, 32)
    amax_g = g.abs().amax(dim=-1)
    s16 = (amax_g / 7.5).to(torch.float16)
    eff = s16.float()
    zero = eff == 0
    safe = torch.where(zero, torch.ones_like(eff), eff)
    q = torch.round(g / safe.unsqueeze(-1)).clamp(-8, 7).long()   # torch.round: half to even
    q = torch.where(zero.unsqueeze(-1), torch.zeros_like(q), q)
    codes = (q & 0xF).to(torch.uint8)
    s16 = torch.where(zero, torch.zeros_like(s16), s16)
    sbytes = s16.contiguous().view(torch.int16).numpy().astype("<i2").tobytes()
    deq = q.float() * torch.where(zero, torch.zeros_like(eff), eff).unsqueeze(-1)
    return codes.reshape(rows, cols), sbytes, 1.0, deq.reshape(rows, cols)


def pack(codes):
    c = codes.to(torch.int32)
    return ((c[:, 1::2] << 4) | c[:, 0::2]).to(torch.uint8)


def f32_bytes(t):
    return t.contiguous().float().numpy().astype("<f4").tobytes()


def make_inputs():
    gen = torch.Generator().manual_seed(20240611)
    # M1 [16 x 128]: N(0, 0.02) with ~1% outliers x15 (LLM-like).
    m1 = torch.randn(16, 128, generator=gen) * 0.02
    mask = torch.rand(16, 128, generator=gen) < 0.01
    m1 = torch.where(mask, m1 * 15.0, m1)
    # M2 [8 x 256]: Laplace rows, plus hand-made edge rows.
    u = (torch.rand(8, 256, generator=gen) - 0.5).clamp(-0.499, 0.499)  # no log1p(-1) = -inf
    m2 = -0.05 * torch.sign(u) * torch.log1p(-2 * u.abs())
    ties_e2m1 = torch.tensor([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0,
                              -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5.0, -6.0,
                              0.0, -0.0, 0.1, -0.1, 0.5, 1.0, 1.5, 2.0,
                              3.0, 4.0, 5.5, -5.5, 4.5, -4.5, 2.75, -2.75])
    m2[0, 0:32] = ties_e2m1                      # MXFP4 scale exactly 1 -> exact E2M1 ties
    ties_int = torch.tensor([7.5, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5,
                             -0.5, -1.5, -2.5, -3.5, -4.5, -5.5, -6.5, -7.5,
                             0.0, -0.0, 7.0, -7.0, 0.49, 0.51, -0.49, -0.51,
                             1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -1.0, -2.0])
    m2[1, 0:32] = ties_int                       # INT4 scale f16(7.5/7.5) = 1 -> exact ties
    m2[2, 32:64] = 0.0                           # all-zero group (nvfp4 x2, mxfp4, int4)
    m2[2, 40] = -0.0
    m2[3, 64:80] = 1e-9                          # NVFP4 group scale underflows E4M3 -> 0
    m2[3, 100] = 9.0                             # raises amax so gs is small
    m2[4, :] = m2[4, :] * 1e-3
    # M3 [32 x 64]: rows spanning many binades (scale selection across exponents).
    m3 = torch.randn(32, 64, generator=gen)
    m3 = m3 * torch.pow(torch.tensor(2.0), torch.arange(32, dtype=torch.float32) - 20.0).unsqueeze(1)
    return [("m1", m1.float(), 16), ("m2", m2.float(), 32), ("m3", m3.float(), 64)]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "golden_formats"
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    manifest = {"generator": "tools/golden_formats.py", "torch": torch.__version__, "cases": []}
    quantizers = {"nvfp4": quant_nvfp4, "mxfp4": quant_mxfp4, "int4": quant_int4}
    errors = []
    for name, x, had in make_inputs():
        for rot in (0, had):
            case = name if rot == 0 else f"{name}_had{rot}"
            xin = x if rot == 0 else block_hadamard(x, rot)
            rows, cols = xin.shape
            with open(os.path.join(out, f"{case}.in.f32"), "wb") as f:
                f.write(f32_bytes(xin))
            entry = {"name": case, "rows": rows, "cols": cols, "hadamard": rot,
                     "source": name, "formats": {}}
            for fmt, fn in quantizers.items():
                try:
                    codes, sbytes, gs, deq = fn(xin)
                    # self-checks: the packed bytes unpack to the codes, dequant is finite
                    packed = pack(codes)
                    lo, hi = packed & 0xF, packed >> 4
                    assert torch.equal(torch.stack([lo, hi], dim=-1).reshape(rows, cols), codes)
                    assert torch.isfinite(deq).all()
                    if isinstance(sbytes, torch.Tensor):
                        sbytes = sbytes.numpy().tobytes()
                    files = {"packed": f"{case}.{fmt}.packed.u8", "scales": f"{case}.{fmt}.scales.u8"}
                    with open(os.path.join(out, files["packed"]), "wb") as f:
                        f.write(packed.numpy().tobytes())
                    with open(os.path.join(out, files["scales"]), "wb") as f:
                        f.write(sbytes)
                    if rot == 0:
                        files["deq"] = f"{case}.{fmt}.deq.f32"
                        with open(os.path.join(out, files["deq"]), "wb") as f:
                            f.write(f32_bytes(deq))
                    gs_bits = int(torch.tensor([gs], dtype=torch.float32).view(torch.int32).item()) & 0xFFFFFFFF
                    entry["formats"][fmt] = {"global_scale_bits": gs_bits, "global_scale": gs, **files}
                except Exception as e:  # keep going: one bad case must not cost the whole run
                    errors.append(f"{case} {fmt}: {e!r}")
            manifest["cases"].append(entry)
    manifest["errors"] = errors
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    total = sum(os.path.getsize(os.path.join(out, p)) for p in os.listdir(out))
    print(f"wrote {len(manifest['cases'])} cases, {total} bytes, errors: {errors}")


if __name__ == "__main__":
    main()
