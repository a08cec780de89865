// src/format/scales.cpp — per-group scale selection (absmax and format-aware MSE) and the NVFP4
// global scale.
//
// Stored scale codes (GroupScales::codes, see format.h):
//   NVFP4: FP8 E4M3fn byte S of (group scale * global_scale), 0x00..0x7e (never NaN 0x7f).
//   MXFP4: E8M0 byte e + 127 of the power of two 2^e, 0x00..0xfe.
//   MXFP4-fit: code q in 1..255 of s = 2^(fit_beta + (q-1)/fit_steps) (format.h), 0 = zero group.
//   INT4 : IEEE binary16 bits of the positive scale, 0x0000..0x7bff (never Inf/NaN).
// A zero group scale (all-zero group, or a scale that underflows the scale type) is code 0 with
// value 0: its elements quantize to code 0 and dequantize to exact zeros.
//
// MSE search ("format-aware"): per group, we evaluate ONLY scales the format can store and keep
// the one with the smallest sum_j (x_j - x_hat_j)^2 (x_hat exactly as dequantize() computes it,
// error accumulated in double), ties -> the larger scale. Candidate sets (all contain the absmax
// choice, so MSE is never worse than absmax on any group; they also contain every scale that the
// FP-Quant reference search -- 100 shrink factors f = 1 - i*0.8/100 of the absmax scale, rounded
// to the format afterwards -- can end on, so it is never worse than that either):
//   NVFP4: every E4M3 code from e4m3(0.2 * amax/6 * gs) up to e4m3(amax/6 * gs) + 1 (<= 0x7e),
//          code 0 excluded unless the absmax scale itself is zero (~20 codes).
//   MXFP4: exponents e_abs - 3 .. e_abs + 1 (clamped to [-127, 127]); 2^(e_abs-3) is below the
//          smallest rounded reference candidate mxfp4_absmax_exponent(0.208 * amax).
//   MXFP4-fit: every code of the tensor's fitted grid with scale in [2^(e_abs-4), 2^(e_abs+1)]
//          (e_abs = mxfp4_absmax_exponent(amax)); contains MXFP4's five candidates exactly.
//   INT4 : f16(amax/7.5 * f) for f in {float(1 - i*0.8/100), i = 0..99} (the reference grid),
//          f = 1 + j*0.008 (j = 1..9) and f = 7.5/7 (group max maps exactly to 7).
// NVFP4 without a fixed global scale additionally searches the global scale among the bf16
// values gs0 * ~2^(-k/128) (bf16 bit pattern of gs0 minus k, k = 0..127, i.e. gs0 down to about
// gs0/2: one full period of the E4M3 relative grid). Search: coarse k = 0, 16, ..., 112, then
// refine around the best k with steps 8, 4, 2, 1 (k -+ step, strict improvement only). Each
// candidate's total squared error re-picks every group code with a narrowed window (codes from
// e4m3(0.5 * amax/6 * gs) to absmax+1, which still contains the absmax code), evaluated on a
// deterministic evenly spaced subset of rows (all rows when rows*cols <= 2^20, else
// 2^20/cols rows). Totals are summed per row and then over rows in order, so the result does
// not depend on the thread count. Finally the chosen gs is compared with gs0 on ALL rows under
// the full window (ties -> gs0), so total(result) <= total(per-group MSE at gs0) <=
// total(absmax), and also <= the reference search at gs0 (it is per group).
// Exact pruning: candidates are scanned from the largest scale down and the scan stops once the
// clipping error of the group's largest element alone reaches the best error so far
// (clip_lower_bound); this never changes the chosen code, it only skips hopeless candidates.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "detail.h"
#include "fp4q/core/error.h"
#include "fp4q/core/half.h"
#include "fp4q/core/parallel.h"
#include "fp4q/format/format.h"

namespace fp4q::format {
namespace {

struct Choice {
  uint16_t code = 0;
  float value = 0.0f;
  double err = 0.0;
};

float group_amax(const float* x, int g) {
  float m = 0.0f;
  for (int j = 0; j < g; ++j) m = std::max(m, std::fabs(x[j]));
  return m;
}

// E2M1 group error: e2m1_group_errors8 below evaluates sum_j (x_j - x_hat_j)^2 of a group for 8
// candidate effective scales s > 0 at once (x_hat exactly as quantize_rtn/dequantize compute it,
// differences exact in double, summed in element order; takes ax = |x|, since x_hat has the sign
// of x, |x - x_hat| = | |x| - |x_hat| |). cw (optional, kMseHess/kMseGptq): per-element weights
// c_j >= 0; the error is then sum_j (c_j * diff) * diff.

double int4_group_error(const float* x, int g, float s, const float* cw = nullptr) {
  double e = 0.0;
  float d;
  for (int j = 0; j < g; ++j) {
    detail::int4_quant(x[j], s, &d);
    const double diff = static_cast<double>(x[j]) - static_cast<double>(d);
    e += cw ? static_cast<double>(cw[j]) * diff * diff : diff * diff;
  }
  return e;
}

double zero_scale_error(const float* x, int g, const float* cw = nullptr) {
  double e = 0.0;
  for (int j = 0; j < g; ++j) {
    const double d = static_cast<double>(x[j]);
    e += cw ? static_cast<double>(cw[j]) * d * d : d * d;
  }
  return e;
}

// Weight of the group's largest-magnitude element (first one on ties; 1 without weights).
double amax_weight(const float* x, int g, float amax, const float* cw) {
  if (!cw) return 1.0;
  for (int j = 0; j < g; ++j)
    if (std::fabs(x[j]) == amax) return cw[j];
  return 0.0;
}

// Exact lower bound of a group's error at scale s from its largest-magnitude element alone:
// no dequantized value exceeds `top` = fl(element_max * s) in magnitude, so that element's
// term is >= (amax - top)^2 (computed with the same double rounding as the error sums, which are
// sums of non-negative terms). Non-decreasing as s decreases, so a descending candidate scan may
// stop as soon as the bound reaches the best error (strict improvement is then impossible):
// pruning never changes the result.
double clip_lower_bound(float amax, float top, double c = 1.0) {
  if (!(amax > top)) return 0.0;
  const double d = static_cast<double>(amax) - static_cast<double>(top);
  return c == 1.0 ? d * d : c * d * d;
}

// Keeps the better of `best` and candidate (code, value, err); candidates arrive in descending
// value order, so strict < implements "ties -> larger scale".
void keep_better(uint16_t code, float value, double err, Choice* best, bool* have) {
  if (!*have || err < best->err) {
    *best = {code, value, err};
    *have = true;
  }
}

// Errors of 8 candidate scales s[0..7] of one group at once (lanes are candidates; each lane sums
// over the elements in element order with exactly e2m1_group_error's operations, so every lane's
// value is bit-identical to e2m1_group_error(ax, g, s[k], cw): no FMA contraction in ISO C++
// mode, IEEE division/multiplication/conversion in every clone). Unused lanes need s = 1.
// Compiled for AVX-512, AVX2 and baseline x86-64 (the library's baseline has no AVX): the
// vectorised clones make the MSE scale search ~5x faster.
typedef float V8f __attribute__((vector_size(32)));
typedef int32_t V8i __attribute__((vector_size(32)));
typedef double V8d __attribute__((vector_size(64)));

// detail::e2m1_magnitude of 8 lanes as masked adds (every partial sum is a multiple of 0.5 <= 6:
// exact). always_inline: each target clone of the kernels below compiles it for its own ISA.
__attribute__((always_inline)) inline void e2m1_magnitude8(const V8f& v, V8f* m) {
  // (result through a pointer: a vector return value would trip GCC's -Wpsabi note on the
  // baseline clone; after inlining there is no call at all)
  const V8i H = reinterpret_cast<V8i>(V8f{0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f});
  const V8i O = reinterpret_cast<V8i>(V8f{1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f});
  const V8i T = reinterpret_cast<V8i>(V8f{2.0f, 2.0f, 2.0f, 2.0f, 2.0f, 2.0f, 2.0f, 2.0f});
  *m = reinterpret_cast<V8f>((v > detail::kE2M1Mid[0]) & H) +
       reinterpret_cast<V8f>((v >= detail::kE2M1Mid[1]) & H) +
       reinterpret_cast<V8f>((v > detail::kE2M1Mid[2]) & H) +
       reinterpret_cast<V8f>((v >= detail::kE2M1Mid[3]) & H) +
       reinterpret_cast<V8f>((v > detail::kE2M1Mid[4]) & O) +
       reinterpret_cast<V8f>((v >= detail::kE2M1Mid[5]) & O) +
       reinterpret_cast<V8f>((v > detail::kE2M1Mid[6]) & T);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void e2m1_group_errors8(const float* ax, int g, const float* s, const float* cw, double* err) {
  V8f S;
  for (int k = 0; k < 8; ++k) S[k] = s[k];
  V8d e = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int j = 0; j < g; ++j) {
    const float a = ax[j];
    const V8f A = {a, a, a, a, a, a, a, a};
    const V8f v = A / S;
    V8f m;
    e2m1_magnitude8(v, &m);
    const V8f P = m * S;
    const V8d diff = static_cast<double>(a) - __builtin_convertvector(P, V8d);
    if (cw) {
      e += (static_cast<double>(cw[j]) * diff) * diff;  // the scalar order: (c·d)·d
    } else {
      e += diff * diff;
    }
  }
  for (int k = 0; k < 8; ++k) err[k] = e[k];
}

// The descending candidate scan of the E2M1 choosers, 8 candidates per kernel call: for each
// candidate in order, stop when the clipping bound reaches the best error, else keep the better
// (exactly the scalar loop's decisions; errors of a chunk are computed eagerly, which costs at
// most 7 unused lanes). code/value: n candidates in descending value order, every value > 0.
void scan_e2m1(const float* ax, int g, const float* cw, float amax, double cmax, const uint16_t* code,
               const float* value, int n, Choice* best, bool* have) {
  for (int i0 = 0; i0 < n; i0 += 8) {
    const int k = std::min(8, n - i0);
    if (*have && clip_lower_bound(amax, 6.0f * value[i0], cmax) >= best->err) return;
    float sv[8];
    for (int i = 0; i < 8; ++i) sv[i] = i < k ? value[i0 + i] : 1.0f;
    double err[8];
    e2m1_group_errors8(ax, g, sv, cw, err);
    for (int i = 0; i < k; ++i) {
      if (*have && clip_lower_bound(amax, 6.0f * value[i0 + i], cmax) >= best->err) return;
      keep_better(code[i0 + i], value[i0 + i], err[i], best, have);
    }
  }
}

// ---- NVFP4 ----
uint8_t nv_absmax_code(float amax, float gs) {
  return e4m3_encode(std::min((amax / 6.0f) * gs, 448.0f));
}

// vtab[c] = e4m3_decode(c) / gs for c = 0..0x7e (the effective scale of every storable code),
// computed once per row by choose_row instead of once per candidate.
Choice nv_choose(const float* x, int g, float gs, ScaleMethod m, float lo_factor, const float* cw,
                 const float* vtab) {
  const float amax = group_amax(x, g);
  const uint8_t c0 = nv_absmax_code(amax, gs);
  const float v0 = vtab[c0];
  if (m == ScaleMethod::kAbsmax) {
    if (!(v0 > 0.0f)) return {0, 0.0f, 0.0};
    return {c0, v0, 0.0};
  }
  if (amax == 0.0f) return {0, 0.0f, 0.0};
  float ax[64];
  for (int j = 0; j < g; ++j) ax[j] = std::fabs(x[j]);
  const double cmax = amax_weight(x, g, amax, cw);
  const float s_gs = (amax / 6.0f) * gs;
  const int hi = std::min<int>(c0 + 1, 0x7e);
  const int lo = std::max<int>(1, e4m3_encode(std::min(lo_factor * s_gs, 448.0f)));
  Choice best;
  bool have = false;
  uint16_t code[128];
  float value[128];
  int n = 0;
  for (int c = hi; c >= lo; --c) {
    const float v = vtab[c];
    if (!(v > 0.0f)) continue;
    code[n] = static_cast<uint16_t>(c);
    value[n++] = v;
  }
  scan_e2m1(ax, g, cw, amax, cmax, code, value, n, &best, &have);
  if (!(v0 > 0.0f)) keep_better(0, 0.0f, zero_scale_error(x, g, cw), &best, &have);  // absmax is 0
  return best;
}

// ---- MXFP4 ----
Choice mx_choose(const float* x, int g, ScaleMethod m, const float* cw = nullptr) {
  const float amax = group_amax(x, g);
  if (amax == 0.0f) return {0, 0.0f, 0.0};
  const int e0 = mxfp4_absmax_exponent(amax);
  if (m == ScaleMethod::kAbsmax) return {e8m0_encode_exponent(e0), std::ldexp(1.0f, e0), 0.0};
  float ax[64];
  for (int j = 0; j < g; ++j) ax[j] = std::fabs(x[j]);
  const double cmax = amax_weight(x, g, amax, cw);
  Choice best;
  bool have = false;
  uint16_t code[8];
  float value[8];
  int n = 0;
  for (int e = std::min(e0 + 1, 127); e >= std::max(e0 - 3, -127); --e) {
    code[n] = e8m0_encode_exponent(e);
    value[n++] = std::ldexp(1.0f, e);
  }
  scan_e2m1(ax, g, cw, amax, cmax, code, value, n, &best, &have);
  return best;
}

// ---- MXFP4-fit ----
// The tensor's grid: value[q] = fit_scale_value(q, beta, steps) for q = 0..255 (value[0] = 0).
struct FitGrid {
  int beta = 0, steps = 0;
  float value[256] = {};
  // Smallest code whose value >= 2^e (codes below it are smaller), clamped to [1, 256).
  int code_at_or_above(int e) const {
    const int64_t q = static_cast<int64_t>(e - beta) * steps + 1;
    return static_cast<int>(std::min<int64_t>(255, std::max<int64_t>(1, q)));
  }
};

Choice fit_choose(const float* x, int g, ScaleMethod m, const FitGrid& fg, const float* cw = nullptr) {
  const float amax = group_amax(x, g);
  if (amax == 0.0f) return {0, 0.0f, 0.0};
  if (m == ScaleMethod::kAbsmax) {
    const double t = fg.steps * (std::log2(static_cast<double>(amax) / 6.0) - fg.beta);
    const int q = static_cast<int>(std::min(255.0, std::max(1.0, 1.0 + std::nearbyint(t))));
    return {static_cast<uint16_t>(q), fg.value[q], 0.0};
  }
  const int e0 = mxfp4_absmax_exponent(amax);
  // [2^(e0-4), 2^(e0+1)]: contains MXFP4's MSE candidates 2^(e0-3..e0+1) (all on the grid) and
  // the reference shrink range down to 0.208 * amax/6.
  const int hi = fg.code_at_or_above(std::min(e0 + 1, 127));
  const int lo = fg.code_at_or_above(std::max(e0 - 4, -127));
  float ax[64];
  for (int j = 0; j < g; ++j) ax[j] = std::fabs(x[j]);
  const double cmax = amax_weight(x, g, amax, cw);
  Choice best;
  bool have = false;
  uint16_t code[256];
  float value[256];
  int n = 0;
  for (int q = hi; q >= lo; --q) {
    const float v = fg.value[q];
    if (!(v > 0.0f) || !std::isfinite(v)) continue;
    code[n] = static_cast<uint16_t>(q);
    value[n++] = v;
  }
  scan_e2m1(ax, g, cw, amax, cmax, code, value, n, &best, &have);
  if (!have) {  // cannot happen for a finite grid; keep the absmax rule as a fallback
    return fit_choose(x, g, ScaleMethod::kAbsmax, fg, cw);
  }
  return best;
}

// ---- INT4 ----
uint16_t f16_scale_code(float s) {
  uint16_t h = float_to_f16(s);
  return std::min<uint16_t>(h, 0x7bff);  // s >= 0: clamp Inf to the largest finite f16 (65504)
}

const std::vector<float>& int4_factors() {  // descending
  static const std::vector<float> kF = [] {
    std::vector<float> f;
    f.push_back(7.5f / 7.0f);
    for (int j = 9; j >= 1; --j) f.push_back(static_cast<float>(1.0 + j * 0.008));
    for (int i = 0; i < 100; ++i) f.push_back(static_cast<float>(1.0 - i * 0.8 / 100.0));
    std::sort(f.begin(), f.end(), [](float a, float b) { return a > b; });
    return f;
  }();
  return kF;
}

Choice int4_choose(const float* x, int g, ScaleMethod m, const float* cw = nullptr) {
  const float amax = group_amax(x, g);
  const float s0 = amax / 7.5f;
  const uint16_t c0 = f16_scale_code(s0);
  const float v0 = f16_to_float(c0);
  if (m == ScaleMethod::kAbsmax || amax == 0.0f) {
    if (!(v0 > 0.0f)) return {0, 0.0f, 0.0};
    return {c0, v0, 0.0};
  }
  // The largest-magnitude element clips at +7 s (positive) or -8 s (negative).
  float xm = 0.0f;
  for (int j = 0; j < g; ++j)
    if (std::fabs(x[j]) == amax) { xm = x[j]; break; }
  const float top_mult = xm > 0.0f ? 7.0f : 8.0f;
  const double cmax = amax_weight(x, g, amax, cw);
  Choice best;
  bool have = false;
  int last = -1;  // candidate codes are non-increasing; skip duplicates
  for (float f : int4_factors()) {
    const uint16_t c = f16_scale_code(s0 * f);
    if (c == last) continue;
    last = c;
    const float v = f16_to_float(c);
    if (!(v > 0.0f)) continue;
    if (have && clip_lower_bound(amax, top_mult * v, cmax) >= best.err) break;
    keep_better(c, v, int4_group_error(x, g, v, cw), &best, &have);
  }
  if (!(v0 > 0.0f)) keep_better(0, 0.0f, zero_scale_error(x, g, cw), &best, &have);
  return best;
}

// ---- FP-Quant's observer (ScaleMethod::kFpQuant, ablation) ----
// sum_j |x_j - x_hat_j|^2.4 with an UNROUNDED scale s (E2M1 or INT4 grid), in double.
double lp24_group_error(FormatId id, const float* x, int g, float s) {
  double e = 0.0;
  for (int j = 0; j < g; ++j) {
    float d;
    if (id == FormatId::kINT4) {
      detail::int4_quant(x[j], s, &d);
    } else {
      detail::e2m1_quant(x[j], s, &d);
    }
    e += std::pow(std::fabs(static_cast<double>(x[j]) - static_cast<double>(d)), 2.4);
  }
  return e;
}

Choice fpquant_choose(FormatId id, const float* x, int g, float gs, const FitGrid* fit) {
  const float amax = group_amax(x, g);
  if (amax == 0.0f) return {0, 0.0f, 0.0};
  const float s0 = id == FormatId::kINT4 ? amax / 7.5f : amax / 6.0f;
  float best_s = s0;
  double best = INFINITY;
  for (int i = 0; i < 100; ++i) {
    const float s = static_cast<float>(1.0 - i * 0.8 / 100.0) * s0;
    if (!(s > 0.0f)) break;
    const double e = lp24_group_error(id, x, g, s);
    if (e < best) {
      best = e;
      best_s = s;
    }
  }
  Choice c;
  switch (id) {
    case FormatId::kNVFP4: {
      const uint8_t code = e4m3_encode(std::min(best_s * gs, 448.0f));
      const float v = e4m3_decode(code) / gs;
      return v > 0.0f ? Choice{code, v, 0.0} : Choice{0, 0.0f, 0.0};
    }
    case FormatId::kMXFP4: {
      const int e = mxfp4_absmax_exponent(6.0f * best_s);
      return {e8m0_encode_exponent(e), std::ldexp(1.0f, e), 0.0};
    }
    case FormatId::kINT4: {
      const uint16_t code = f16_scale_code(best_s);
      const float v = f16_to_float(code);
      return v > 0.0f ? Choice{code, v, 0.0} : Choice{0, 0.0f, 0.0};
    }
    case FormatId::kMXFP4Fit: {
      const double t = fit->steps * (std::log2(static_cast<double>(best_s)) - fit->beta);
      const int q = static_cast<int>(std::min(255.0, std::max(1.0, 1.0 + std::nearbyint(t))));
      return {static_cast<uint16_t>(q), fit->value[q], 0.0};
    }
  }
  return c;
}

// ---- Lane-parallel scan over the groups of a row (MSE choosers of NVFP4, MXFP4, MXFP4-fit) ----
// Each of these choosers scans, per group, a contiguous descending run of scale codes hi, hi-1,
// ..., lo whose effective scale is tab[code] (> 0 and finite on the run). scan_e2m1 evaluates 8
// candidates of ONE group per kernel call; a group typically needs 4-6 candidates before the
// clipping bound stops it, so a third of those lanes are wasted and every group pays the scalar
// set-up of a call. scan_runs instead gives each of 16 lanes its own group: a lane walks its
// group's run one candidate per step and, as soon as the run is exhausted or pruned, takes the
// next group of the row. Every lane's error is computed with exactly e2m1_group_errors8's
// operations in element order (IEEE float division and product, exact double differences, the
// same accumulation order), and each group sees its candidates in the same descending order with
// the same strict-improvement rule and the same pruning test, so the chosen codes, values and
// errors are the same bits as the per-group scan's (tests/format/scales_test.cpp checks this
// against an independent scalar search).
struct GroupRun {
  float amax = 0.0f;
  double cmax = 1.0;
  int hi = -1, lo = 0;  // empty run when hi < lo
};

constexpr int kLanes = 16;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void e2m1_lane_errors16(const float* axT, int g, const float* s, const float* cwT, double* err) {
  V8f S0, S1;
  __builtin_memcpy(&S0, s, sizeof S0);
  __builtin_memcpy(&S1, s + 8, sizeof S1);
  V8d e0 = {0, 0, 0, 0, 0, 0, 0, 0}, e1 = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int j = 0; j < g; ++j) {
    V8f A0, A1;
    __builtin_memcpy(&A0, axT + j * kLanes, sizeof A0);
    __builtin_memcpy(&A1, axT + j * kLanes + 8, sizeof A1);
    const V8f v0 = A0 / S0, v1 = A1 / S1;
    V8f m0;
    e2m1_magnitude8(v0, &m0);
    V8f m1;
    e2m1_magnitude8(v1, &m1);
    const V8f P0 = m0 * S0, P1 = m1 * S1;
    const V8d d0 = __builtin_convertvector(A0, V8d) - __builtin_convertvector(P0, V8d);
    const V8d d1 = __builtin_convertvector(A1, V8d) - __builtin_convertvector(P1, V8d);
    if (cwT) {
      V8f C0, C1;
      __builtin_memcpy(&C0, cwT + j * kLanes, sizeof C0);
      __builtin_memcpy(&C1, cwT + j * kLanes + 8, sizeof C1);
      e0 += (__builtin_convertvector(C0, V8d) * d0) * d0;  // the scalar order: (c·d)·d
      e1 += (__builtin_convertvector(C1, V8d) * d1) * d1;
    } else {
      e0 += d0 * d0;
      e1 += d1 * d1;
    }
  }
  for (int k = 0; k < 8; ++k) {
    err[k] = e0[k];
    err[8 + k] = e1[k];
  }
}

// A row's groups prepared once for any number of scans (the NVFP4 global-scale search scans the
// same rows at up to 16 global scales): |x| and the weights transposed into blocks of 16 groups
// (block b, element j, lane l at [(b * g + j) * 16 + l]; lanes past the row's end are 0), and
// each group's amax and weight of its largest element.
struct RowPrep {
  std::vector<float> axT, cwT, amax;
  std::vector<double> cmax;
  bool weighted = false;
  void build(const float* x, int64_t groups, int g, const float* cw) {
    const int64_t blocks = (groups + kLanes - 1) / kLanes;
    axT.assign(static_cast<size_t>(blocks * g * kLanes), 0.0f);
    weighted = cw != nullptr;
    if (cw) cwT.assign(axT.size(), 0.0f);
    amax.resize(static_cast<size_t>(groups));
    cmax.resize(static_cast<size_t>(groups));
    for (int64_t k = 0; k < groups; ++k) {
      const float* xg = x + k * g;
      float* at = axT.data() + (k / kLanes) * g * kLanes + k % kLanes;
      for (int j = 0; j < g; ++j) at[j * kLanes] = std::fabs(xg[j]);
      if (cw) {
        float* ct = cwT.data() + (k / kLanes) * g * kLanes + k % kLanes;
        for (int j = 0; j < g; ++j) ct[j * kLanes] = cw[k * g + j];
      }
      amax[k] = group_amax(xg, g);
      cmax[k] = amax_weight(xg, g, amax[k], cw ? cw + k * g : nullptr);
    }
  }
};

// Scans the runs of groups 0..n-1 of a prepared row. best[k]/have[k]: the scan's result exactly
// as scan_e2m1 would leave it for that group.
// Blocks of 16 groups first take the top `steps` candidates of their runs in lock-step, with no
// pruning test (evaluating a candidate the bound would have skipped cannot change the result:
// its error is >= the bound >= the best so far, and the update needs strict improvement); the few
// groups whose scan is not finished after that (run left and not pruned) continue one by one in
// scan_e2m1 from where the block stopped, with their best so far.
void scan_runs(const RowPrep& p, int64_t n, int g, const GroupRun* run, const float* tab, int steps,
               Choice* best, uint8_t* have) {
  alignas(64) float s[kLanes];
  alignas(64) double err[kLanes];
  for (int64_t k0 = 0; k0 < n; k0 += kLanes) {
    const int nl = static_cast<int>(std::min<int64_t>(kLanes, n - k0));
    const float* axT = p.axT.data() + (k0 / kLanes) * g * kLanes;
    const float* cwT = p.weighted ? p.cwT.data() + (k0 / kLanes) * g * kLanes : nullptr;
    for (int l = 0; l < nl; ++l) {
      best[k0 + l] = Choice{};
      have[k0 + l] = 0;
    }
    for (int t = 0; t < steps; ++t) {
      bool any = false;
      for (int l = 0; l < kLanes; ++l) {
        const bool on = l < nl && run[k0 + l].hi - t >= run[k0 + l].lo;
        s[l] = on ? tab[run[k0 + l].hi - t] : 1.0f;
        any |= on;
      }
      if (!any) break;
      e2m1_lane_errors16(axT, g, s, cwT, err);
      for (int l = 0; l < nl; ++l) {
        const GroupRun& r = run[k0 + l];
        if (r.hi - t < r.lo) continue;
        if (!have[k0 + l] || err[l] < best[k0 + l].err) {  // keep_better
          best[k0 + l] = Choice{static_cast<uint16_t>(r.hi - t), s[l], err[l]};
          have[k0 + l] = 1;
        }
      }
    }
    for (int l = 0; l < nl; ++l) {  // unfinished scans continue per group
      const int64_t k = k0 + l;
      const GroupRun& r = run[k];
      const int c = r.hi - steps;
      if (c < r.lo) continue;
      if (have[k] && clip_lower_bound(r.amax, 6.0f * tab[c], r.cmax) >= best[k].err) continue;
      uint16_t code[256];
      float value[256];
      int m = 0;
      for (int q = c; q >= r.lo; --q) {
        code[m] = static_cast<uint16_t>(q);
        value[m++] = tab[q];
      }
      float ax[64], cwl[64];
      for (int j = 0; j < g; ++j) ax[j] = axT[j * kLanes + l];
      if (cwT)
        for (int j = 0; j < g; ++j) cwl[j] = cwT[j * kLanes + l];
      bool hv = have[k];
      scan_e2m1(ax, g, cwT ? cwl : nullptr, r.amax, r.cmax, code, value, m, &best[k], &hv);
      have[k] = hv;
    }
  }
}

// MXFP4 scale code c (E8M0 byte) -> 2^(c-127), c = 0..254.
const float* mx_value_table() {
  static const std::vector<float> kT = [] {
    std::vector<float> t(255);
    for (int c = 0; c < 255; ++c) t[c] = std::ldexp(1.0f, c - 127);
    return t;
  }();
  return kT.data();
}

// choose_row's MSE path for NVFP4 / MXFP4 / MXFP4-fit through scan_runs; the same candidate
// runs, results and totals as nv_choose / mx_choose / fit_choose group by group. Returns false
// (nothing written) where a table's valid codes are not one contiguous run, which the per-group
// choosers handle (never the case for the tables built here; a guard, not a path).
bool choose_row_lanes(FormatId id, const float* x, int64_t groups, int g, float gs, float lo_factor,
                      const float* vtab, const FitGrid* fit, const float* col_w, uint16_t* codes,
                      float* values, double* total, const RowPrep* prep = nullptr) {
  const float* tab = nullptr;
  int valid_lo = 0, valid_hi = -1;
  switch (id) {
    case FormatId::kNVFP4:
      tab = vtab;
      valid_lo = 1;
      while (valid_lo <= 0x7e && !(vtab[valid_lo] > 0.0f)) ++valid_lo;
      valid_hi = 0x7e;
      break;
    case FormatId::kMXFP4:
      tab = mx_value_table();
      valid_lo = 0;
      valid_hi = 254;
      break;
    case FormatId::kMXFP4Fit: {
      tab = fit->value;
      auto ok = [&](int q) { return fit->value[q] > 0.0f && std::isfinite(fit->value[q]); };
      valid_lo = 1;
      while (valid_lo <= 255 && !ok(valid_lo)) ++valid_lo;
      valid_hi = 255;
      while (valid_hi >= valid_lo && !ok(valid_hi)) --valid_hi;
      for (int q = valid_lo; q <= valid_hi; ++q)
        if (!ok(q)) return false;
      break;
    }
    default:
      return false;
  }
  thread_local RowPrep own;
  if (!prep) {
    own.build(x, groups, g, col_w);
    prep = &own;
  }
  thread_local std::vector<GroupRun> run;
  thread_local std::vector<Choice> best;
  thread_local std::vector<uint8_t> have, zero_alt;  // zero_alt: NVFP4 absmax scale is 0
  run.assign(static_cast<size_t>(groups), GroupRun{});
  best.resize(static_cast<size_t>(groups));
  have.resize(static_cast<size_t>(groups));
  zero_alt.assign(static_cast<size_t>(groups), 0);
  for (int64_t k = 0; k < groups; ++k) {
    GroupRun& r = run[k];
    const float amax = prep->amax[k];
    r.amax = amax;
    if (amax == 0.0f) continue;  // empty run: code 0, value 0, error 0
    r.cmax = prep->cmax[k];
    if (id == FormatId::kNVFP4) {
      const uint8_t c0 = nv_absmax_code(amax, gs);
      zero_alt[k] = !(vtab[c0] > 0.0f);
      const float s_gs = (amax / 6.0f) * gs;
      r.hi = std::min<int>(c0 + 1, 0x7e);
      r.lo = std::max<int>(1, e4m3_encode(std::min(lo_factor * s_gs, 448.0f)));
    } else {
      const int e0 = mxfp4_absmax_exponent(amax);
      if (id == FormatId::kMXFP4) {
        r.hi = std::min(e0 + 1, 127) + 127;
        r.lo = std::max(e0 - 3, -127) + 127;
      } else {
        r.hi = fit->code_at_or_above(std::min(e0 + 1, 127));
        r.lo = fit->code_at_or_above(std::max(e0 - 4, -127));
      }
    }
    r.hi = std::min(r.hi, valid_hi);
    r.lo = std::max(r.lo, valid_lo);
  }
  scan_runs(*prep, groups, g, run.data(), tab, id == FormatId::kMXFP4 ? 2 : 4, best.data(),
            have.data());
  double t = 0.0;
  for (int64_t k = 0; k < groups; ++k) {
    Choice c = best[k];
    const float* xg = x + k * g;
    const float* cw = col_w ? col_w + k * g : nullptr;
    if (run[k].amax == 0.0f) {
      c = Choice{};
    } else if (id == FormatId::kNVFP4) {
      bool hv = have[k];
      if (zero_alt[k]) keep_better(0, 0.0f, zero_scale_error(xg, g, cw), &c, &hv);
    } else if (id == FormatId::kMXFP4Fit && !have[k]) {
      c = fit_choose(xg, g, ScaleMethod::kAbsmax, *fit, cw);
    }
    if (codes) codes[k] = c.code;
    if (values) values[k] = c.value;
    t += c.err;
  }
  *total = t;
  return true;
}

// Fills codes/values of row r of `out`; returns the row's total squared error (MSE only).
// prep (optional): the row prepared by RowPrep::build (MSE path); nv_vtab (optional): NVFP4's
// effective-scale table for gs (computed here when absent).
double choose_row(FormatId id, const float* x, int64_t groups, int g, ScaleMethod m, float gs,
                  float lo_factor, uint16_t* codes, float* values, const FitGrid* fit = nullptr,
                  const float* col_w = nullptr, const RowPrep* prep = nullptr,
                  const float* nv_vtab = nullptr) {
  double total = 0.0;
  float own_vtab[0x7f];
  const float* vtab = nv_vtab;
  if (id == FormatId::kNVFP4 && !vtab) {
    for (int c = 0; c < 0x7f; ++c) own_vtab[c] = e4m3_decode(static_cast<uint8_t>(c)) / gs;
    vtab = own_vtab;
  }
  if (m == ScaleMethod::kMse && id != FormatId::kINT4 &&
      choose_row_lanes(id, x, groups, g, gs, lo_factor, vtab, fit, col_w, codes, values, &total, prep))
    return total;
  for (int64_t k = 0; k < groups; ++k) {
    const float* xg = x + k * g;
    const float* cw = col_w ? col_w + k * g : nullptr;
    Choice c;
    if (m == ScaleMethod::kFpQuant) {
      c = fpquant_choose(id, xg, g, gs, fit);
    } else switch (id) {
      case FormatId::kNVFP4: c = nv_choose(xg, g, gs, m, lo_factor, cw, vtab); break;
      case FormatId::kMXFP4: c = mx_choose(xg, g, m, cw); break;
      case FormatId::kINT4: c = int4_choose(xg, g, m, cw); break;
      case FormatId::kMXFP4Fit: c = fit_choose(xg, g, m, *fit, cw); break;
    }
    if (codes) codes[k] = c.code;
    if (values) values[k] = c.value;
    total += c.err;
  }
  return total;
}

// Total MSE-optimal squared error, for each NVFP4 global scale in `gs` (window lo_factor), of
// the rows `rows_used` of W [* x cols]. One parallel pass over those rows for all candidates;
// per-candidate totals are summed in row order (thread-count independent).
std::vector<double> nv_total_errors(const float* w, const std::vector<int64_t>& rows_used,
                                    int64_t cols, int g, const std::vector<float>& gs,
                                    float lo_factor, const float* col_w) {
  const size_t n = gs.size();
  const int64_t nr = static_cast<int64_t>(rows_used.size());
  std::vector<double> row_err(static_cast<size_t>(nr) * n, 0.0);
  std::vector<float> vtabs(n * 0x7f);
  for (size_t k = 0; k < n; ++k)
    for (int c = 0; c < 0x7f; ++c) vtabs[k * 0x7f + c] = e4m3_decode(static_cast<uint8_t>(c)) / gs[k];
  detail::for_rows(nr, cols * static_cast<int64_t>(n), [&](int64_t i) {
    const float* x = w + rows_used[i] * cols;
    thread_local RowPrep prep;
    prep.build(x, cols / g, g, col_w);
    for (size_t k = 0; k < n; ++k)
      row_err[i * n + k] = choose_row(FormatId::kNVFP4, x, cols / g, g, ScaleMethod::kMse, gs[k],
                                      lo_factor, nullptr, nullptr, nullptr, col_w, &prep,
                                      vtabs.data() + k * 0x7f);
  });
  std::vector<double> t(n, 0.0);
  for (int64_t i = 0; i < nr; ++i)
    for (size_t k = 0; k < n; ++k) t[k] += row_err[i * n + k];
  return t;
}

constexpr float kFinalLo = 0.2f;   // full MSE window (below the reference's smallest 0.208)
constexpr float kSearchLo = 0.5f;  // narrowed window while searching the global scale
constexpr int64_t kSearchElems = int64_t{1} << 20;  // rows sampled for the global search

float nv_search_global(const float* w, int64_t rows, int64_t cols, int g, float gs0, const float* col_w) {
  const uint16_t h0 = static_cast<uint16_t>(float_to_bits(gs0) >> 16);  // gs0 is bf16-exact
  const int kmax = std::min(127, static_cast<int>(h0) - 1);
  auto gs_of = [&](int k) { return bf16_to_float(static_cast<uint16_t>(h0 - k)); };
  // The search itself runs on an evenly spaced deterministic subset of at most kSearchElems
  // elements' worth of rows (row i*rows/n, i < n); the final comparison uses every row.
  const int64_t n_sub = std::max<int64_t>(1, std::min<int64_t>(rows, kSearchElems / cols));
  std::vector<int64_t> sub(static_cast<size_t>(n_sub));
  for (int64_t i = 0; i < n_sub; ++i) sub[i] = i * rows / n_sub;
  // Coarse pass: k = 0, 16, ..., 112 in one sweep.
  std::vector<int> ks;
  for (int k = 0; k <= kmax; k += 16) ks.push_back(k);
  std::vector<float> gss;
  for (int k : ks) gss.push_back(gs_of(k));
  std::vector<double> t = nv_total_errors(w, sub, cols, g, gss, kSearchLo, col_w);
  int best = 0;
  double best_err = t[0];
  for (size_t i = 1; i < ks.size(); ++i)
    if (t[i] < best_err) { best_err = t[i]; best = ks[i]; }
  // Refinement: best -+ 8, 4, 2, 1 (strict improvement: ties keep the centre, then the larger gs).
  for (int step : {8, 4, 2, 1}) {
    std::vector<int> cand;
    for (int k : {best - step, best + step})
      if (k >= 0 && k <= kmax) cand.push_back(k);
    std::vector<float> cg;
    for (int k : cand) cg.push_back(gs_of(k));
    std::vector<double> tc = nv_total_errors(w, sub, cols, g, cg, kSearchLo, col_w);
    for (size_t i = 0; i < cand.size(); ++i)
      if (tc[i] < best_err) {
        best_err = tc[i];
        best = cand[i];
      }
  }
  return gs_of(best);
}

FitGrid make_fit_grid(const float* w, int64_t rows, int64_t cols) {
  FitGrid fg;
  mxfp4_fit_grid(w, rows, cols, &fg.beta, &fg.steps);
  for (int q = 0; q < 256; ++q) fg.value[q] = fit_scale_value(static_cast<uint16_t>(q), fg.beta, fg.steps);
  return fg;
}

}  // namespace

void mxfp4_fit_grid(const float* w, int64_t rows, int64_t cols, int* fit_beta, int* fit_steps) {
  const int g = spec(FormatId::kMXFP4Fit).group_size;
  int emin = 1000, emax = -1000;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols / g; ++k) {
      const float amax = group_amax(w + r * cols + k * g, g);
      if (amax == 0.0f) continue;
      const int e0 = mxfp4_absmax_exponent(amax);
      emin = std::min(emin, e0);
      emax = std::max(emax, e0);
    }
  if (emin > emax) {  // no non-zero group
    *fit_beta = 0;
    *fit_steps = 1;
    return;
  }
  const int lo = std::max(-127, emin - 4), hi = std::min(127, emax + 1);
  *fit_beta = lo;
  *fit_steps = std::max(1, 254 / std::max(1, hi - lo));
}

float nvfp4_global_scale(const float* w, int64_t n) {
  // max |w| over fixed chunks in parallel (max is exact, so the result does not depend on the
  // split); a chunk containing NaN/Inf is flagged and the first bad index found serially.
  constexpr int64_t kChunk = int64_t{1} << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<float> cmax(static_cast<size_t>(chunks), 0.0f);
  std::vector<uint8_t> bad(static_cast<size_t>(chunks), 0);
  detail::for_rows(chunks, kChunk, [&](int64_t c) {
    const int64_t i0 = c * kChunk, i1 = std::min(n, i0 + kChunk);
    float m = 0.0f;
    bool b = false;
    for (int64_t i = i0; i < i1; ++i) {
      const float a = std::fabs(w[i]);
      b |= !(a <= std::numeric_limits<float>::max());  // NaN or Inf
      m = a > m ? a : m;
    }
    cmax[c] = m;
    bad[c] = b;
  });
  float amax = 0.0f;
  for (int64_t c = 0; c < chunks; ++c) {
    if (bad[c])
      for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i)
        if (!std::isfinite(w[i]))
          throw Error(ErrorKind::kNumeric, "non-finite value at flat index " + std::to_string(i),
                      {}, "the weights contain NaN/Inf");
    amax = std::max(amax, cmax[c]);
  }
  if (amax == 0.0f) return 1.0f;
  const float gs = bf16_round_down(2688.0f / amax);
  if (!std::isfinite(gs)) return bf16_to_float(0x7f7f);  // amax below ~2688/3.4e38
  return gs;
}

float nvfp4_search_global_scale(const float* w, int64_t rows, int64_t cols, ScaleMethod method,
                                const std::string& where, const float* col_weights) {
  detail::check_shape(FormatId::kNVFP4, rows, cols, where);
  detail::check_finite(w, rows, cols, where);
  const float gs0 = nvfp4_global_scale(w, rows * cols);
  const bool weighted = method == ScaleMethod::kMseHess || method == ScaleMethod::kMseGptq;
  if ((method != ScaleMethod::kMse && !weighted) || rows * cols == 0) return gs0;
  return nv_search_global(w, rows, cols, spec(FormatId::kNVFP4).group_size, gs0,
                          weighted ? col_weights : nullptr);
}

GroupScales choose_scales(FormatId id, const float* w, int64_t rows, int64_t cols,
                          ScaleMethod method, float global_scale, const std::string& where,
                          const float* col_weights) {
  detail::check_shape(id, rows, cols, where);
  detail::check_finite(w, rows, cols, where);
  const bool weighted = method == ScaleMethod::kMseHess || method == ScaleMethod::kMseGptq;
  if (weighted && !col_weights)
    throw Error(ErrorKind::kUsage, std::string("scale method ") + scale_method_name(method) +
                                       " needs per-column weights (a Hessian)", where,
                "use it with a GPTQ method and calibration, or use --scales mse");
  const int g = spec(id).group_size;
  FP4Q_ASSERT(g <= 64);  // per-group scratch arrays in the choosers
  GroupScales out;
  out.format = id;
  out.rows = rows;
  out.groups = cols / g;
  out.codes.assign(static_cast<size_t>(rows * out.groups), 0);
  out.values.assign(static_cast<size_t>(rows * out.groups), 0.0f);
  float gs = 1.0f;
  if (id == FormatId::kNVFP4) {
    if (global_scale > 0.0f) {
      if (!std::isfinite(global_scale))
        throw Error(ErrorKind::kInternal, "NVFP4 global scale must be finite", where);
      gs = global_scale;
    } else {
      const float gs0 = nvfp4_global_scale(w, rows * cols);
      gs = gs0;
      if ((method == ScaleMethod::kMse || weighted) && rows * cols > 0)
        gs = nv_search_global(w, rows, cols, g, gs0, weighted ? col_weights : nullptr);
      if (gs != gs0) {
        // Final safeguard, in the same pass that picks the codes: the searched gs against gs0
        // on every row under the full window; keep the better (ties -> gs0), so the result is
        // never worse than per-group MSE at the absmax global scale.
        const float* cw = weighted ? col_weights : nullptr;
        std::vector<uint16_t> c0(out.codes.size());
        std::vector<float> v0(out.values.size());
        std::vector<double> e_s(static_cast<size_t>(rows)), e_0(static_cast<size_t>(rows));
        detail::for_rows(rows, 2 * cols, [&](int64_t r) {
          const float* x = w + r * cols;
          thread_local RowPrep prep;
          prep.build(x, out.groups, g, cw);
          e_s[r] = choose_row(id, x, out.groups, g, ScaleMethod::kMse, gs, kFinalLo,
                              out.codes.data() + r * out.groups, out.values.data() + r * out.groups,
                              nullptr, cw, &prep);
          e_0[r] = choose_row(id, x, out.groups, g, ScaleMethod::kMse, gs0, kFinalLo,
                              c0.data() + r * out.groups, v0.data() + r * out.groups, nullptr, cw,
                              &prep);
        });
        double ts = 0, t0 = 0;
        for (int64_t r = 0; r < rows; ++r) {  // row order: thread-count independent
          ts += e_s[r];
          t0 += e_0[r];
        }
        if (ts < t0) {
          out.global_scale = gs;
        } else {
          out.global_scale = gs0;
          out.codes = std::move(c0);
          out.values = std::move(v0);
        }
        return out;
      }
    }
  }
  out.global_scale = gs;
  FitGrid fit;
  if (id == FormatId::kMXFP4Fit) {
    fit = make_fit_grid(w, rows, cols);
    out.fit_beta = fit.beta;
    out.fit_steps = fit.steps;
  }
  // kMseAbsGs is kMse per group (its only difference, no global-scale search, is above).
  // kMseHess is kMse weighted by col_weights (when given).
  const ScaleMethod per_group = (method == ScaleMethod::kMseAbsGs || weighted) ? ScaleMethod::kMse : method;
  const float* cw = weighted ? col_weights : nullptr;
  detail::for_rows(rows, cols, [&](int64_t r) {
    choose_row(id, w + r * cols, out.groups, g, per_group, gs, kFinalLo,
               out.codes.data() + r * out.groups, out.values.data() + r * out.groups, &fit, cw);
  });
  return out;
}

}  // namespace fp4q::format
