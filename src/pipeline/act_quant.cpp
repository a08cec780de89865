// src/pipeline/act_quant.cpp — the online input transform of each runtime (see act_quant.h for
// the rules; docs/FORMAT.md §13 for where they come from).
#include "fp4q/pipeline/act_quant.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "fp4q/core/error.h"
#include "fp4q/core/half.h"
#include "fp4q/core/parallel.h"
#include "fp4q/transform/hadamard.h"

namespace fp4q::pipeline {

namespace {

constexpr float kE2M1Grid[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

// In-place unnormalised Walsh–Hadamard butterflies of v[0..b) (v <- v·H_b, Sylvester order),
// float32 adds.
void fwht(float* v, int b) {
  for (int h = 1; h < b; h *= 2)
    for (int i = 0; i < b; i += 2 * h)
      for (int j = i; j < i + h; ++j) {
        const float a = v[j], c = v[j + h];
        v[j] = a + c;
        v[j + h] = a - c;
      }
}

// Rotation of every h-block of every row as the runtime computes it (see act_quant.h).
void rotate(const InputTransform& t, float* x, int64_t rows, int64_t cols) {
  const int h = t.hadamard;
  if (!transform::check_hadamard_block(cols, h, "activations")) return;
  if (t.runtime == ActRuntime::kCompressedTensors && t.dtype == ComputeDtype::kF32) {
    transform::hadamard_rows(x, rows, cols, h);  // what fp4q has always computed
    return;
  }
  const bool ct = t.runtime == ActRuntime::kCompressedTensors;
  // compressed-tensors: sums / fl(sqrt(h)); fp-quant: sums * c, c = the stored matrix entry
  // fl(1/sqrt(h)) in the runtime dtype.
  const float div = static_cast<float>(std::sqrt(static_cast<double>(h)));
  const float c = round_to(t.dtype, static_cast<float>(1.0 / std::sqrt(static_cast<double>(h))));
  parallel_for(static_cast<long>(rows), [&](long r) {
    float* row = x + r * cols;
    for (int64_t c0 = 0; c0 < cols; c0 += h) {
      float* v = row + c0;
      fwht(v, h);
      if (ct) {
        for (int j = 0; j < h; ++j) v[j] = round_bf16(v[j] / div);  // bf16 only (f32 returned above)
      } else {
        for (int j = 0; j < h; ++j) v[j] *= c;  // float32 result of tl.dot, not rounded
      }
    }
  });
}

float group_amax(const float* g, int n) {
  float m = 0.0f;
  for (int j = 0; j < n; ++j) m = std::max(m, std::fabs(g[j]));
  return m;
}

// compressed-tensors NVFP4 (_quantize_dequantize with scale_dtype float8_e4m3fn).
void ct_nvfp4(float* g, int n, float gs, ComputeDtype d) {
  const float a6 = round_to(d, group_amax(g, n) / 6.0f);
  const uint8_t sb = format::e4m3_encode(std::min(gs * a6, 448.0f));
  const float s = format::e4m3_decode(sb) / gs;
  for (int j = 0; j < n; ++j) {
    if (!(s > 0.0f)) {  // scale 0 (CT substitutes eps; every value quantizes to 0 either way)
      g[j] = 0.0f;
      continue;
    }
    const float v = g[j] / s;
    const float q = kE2M1Grid[e2m1_index_rne(std::fabs(v))];
    g[j] = round_to(d, (std::signbit(v) ? -q : q) * s);
  }
}

// compressed-tensors MXFP4 (generate_mx_scales + _quantize_dequantize, scale_dtype uint8).
void ct_mxfp4(float* g, int n, ComputeDtype d) {
  const float amax = group_amax(g, n);
  if (!(amax > 0.0f)) {
    for (int j = 0; j < n; ++j) g[j] = 0.0f;
    return;
  }
  const float s = std::ldexp(1.0f, format::mxfp4_absmax_exponent(amax));
  for (int j = 0; j < n; ++j) {
    const float v = g[j] / s;
    const float q = kE2M1Grid[e2m1_index_rne(std::fabs(v))];
    g[j] = round_to(d, (std::signbit(v) ? -q : q) * s);  // exact: q has 2 bits, s a power of two
  }
}

// fp_quant triton/nvfp4.py.
void fpq_nvfp4(float* g, int n, float gs_stored, ComputeDtype d) {
  const float gs = round_to(d, gs_stored);  // the act_global_scale buffer in the model dtype
  const float amax = group_amax(g, n);
  const float t = gs * amax;
  const uint8_t sb = format::e4m3_encode(std::min(t / 6.0f, 448.0f));  // cvt.rn.satfinite.e4m3
  const float S = format::e4m3_decode(sb);
  for (int j = 0; j < n; ++j) {
    if (!(S > 0.0f)) {  // 0/0 = NaN falls through every threshold: code 0
      g[j] = 0.0f;
      continue;
    }
    const float v = (g[j] * gs) / S;
    const float q = kE2M1Grid[e2m1_index_tz(std::fabs(v))];
    g[j] = round_to(d, ((v > 0.0f ? q : -q) * S) / gs);
  }
}

// fp_quant triton/mxfp4.py, forward_method abs_max (gaussian_scale 3/4, quest False).
void fpq_mxfp4(float* g, int n, ComputeDtype d) {
  const float amax = group_amax(g, n);
  if (!(amax > 0.0f)) {
    for (int j = 0; j < n; ++j) g[j] = 0.0f;
    return;
  }
  int e2 = 0;
  std::frexp(amax, &e2);  // amax = m·2^e2, m in [0.5, 1): floor(log2 amax) = e2 - 1
  const float s = std::ldexp(1.0f, e2 - 1 - 2) / 0.75f;
  if (!(s > 0.0f)) {  // underflow: x/0 saturates to 6, times 0
    for (int j = 0; j < n; ++j) g[j] = 0.0f;
    return;
  }
  for (int j = 0; j < n; ++j) {
    const float v = g[j] / s;
    const float q = kE2M1Grid[e2m1_index_tz(std::fabs(v))];
    g[j] = round_to(d, (v > 0.0f ? q : -q) * s);
  }
}

}  // namespace

const char* act_runtime_name(ActRuntime r) {
  return r == ActRuntime::kFpQuant ? "fp-quant" : "compressed-tensors";
}

ActRuntime parse_act_runtime(const std::string& name) {
  if (name == "compressed-tensors" || name == "ct" || name == "vllm") return ActRuntime::kCompressedTensors;
  if (name == "fp-quant" || name == "fp_quant" || name == "fpquant") return ActRuntime::kFpQuant;
  throw Error(ErrorKind::kUsage, "unknown runtime \"" + name + "\"", "--runtime",
              "use compressed-tensors (vLLM) or fp-quant (transformers + fp_quant)");
}

ComputeDtype parse_compute_dtype(const std::string& name) {
  std::string s = name;
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  if (s == "f32" || s == "fp32" || s == "float32") return ComputeDtype::kF32;
  if (s == "bf16" || s == "bfloat16") return ComputeDtype::kBF16;
  throw Error(ErrorKind::kUsage, "unknown compute dtype \"" + name + "\"", "--dtype", "use f32 or bf16");
}

int e2m1_index_rne(float a) {
  return static_cast<int>(a > 0.25f) + static_cast<int>(a >= 0.75f) + static_cast<int>(a > 1.25f) +
         static_cast<int>(a >= 1.75f) + static_cast<int>(a > 2.5f) + static_cast<int>(a >= 3.5f) +
         static_cast<int>(a > 5.0f);
}

int e2m1_index_tz(float a) {
  return static_cast<int>(a > 0.25f) + static_cast<int>(a > 0.75f) + static_cast<int>(a > 1.25f) +
         static_cast<int>(a > 1.75f) + static_cast<int>(a > 2.5f) + static_cast<int>(a > 3.5f) +
         static_cast<int>(a > 5.0f);
}

void fake_quantize_group(const InputTransform& t, float* g, int n) {
  const bool nv = t.format == format::FormatId::kNVFP4;
  if (t.runtime == ActRuntime::kCompressedTensors) {
    if (nv) ct_nvfp4(g, n, t.global_scale, t.dtype);
    else ct_mxfp4(g, n, t.dtype);
  } else {
    if (nv) fpq_nvfp4(g, n, t.global_scale, t.dtype);
    else fpq_mxfp4(g, n, t.dtype);
  }
}

void apply_input_transform(const InputTransform& t, float* x, int64_t rows, int64_t cols) {
  if (t.hadamard > 1) rotate(t, x, rows, cols);
  if (!t.quantize) return;
  if (format::spec(t.format).element != format::ElementType::kE2M1)
    throw Error(ErrorKind::kUsage, "activation quantization is defined for nvfp4 and mxfp4 only",
                "--activations");
  if (t.runtime == ActRuntime::kCompressedTensors && t.dtype == ComputeDtype::kF32) {
    // The transform fp4q has always applied (calibration and eval); fake_quantize_group gives
    // the same bits (tested), this keeps the format module's validation and parallel rows.
    const float gs = format::spec(t.format).has_global_scale ? t.global_scale : 0.0f;
    const auto scales = format::choose_scales(t.format, x, rows, cols, format::ScaleMethod::kAbsmax, gs,
                                              "activations");
    const auto q = format::quantize_rtn(x, rows, cols, scales);
    format::dequantize(q, x);
    return;
  }
  const int G = format::spec(t.format).group_size;
  if (cols % G != 0)
    throw Error(ErrorKind::kInput,
                "activation row of " + std::to_string(cols) + " values is not a multiple of the " +
                    format::spec(t.format).name + " group size " + std::to_string(G),
                "activations", "this Linear cannot be W4A4-quantized; exclude it with --ignore");
  std::vector<int64_t> bad(static_cast<size_t>(rows), -1);
  parallel_for(static_cast<long>(rows), [&](long r) {
    float* row = x + r * cols;
    for (int64_t c = 0; c < cols; ++c)
      if (!std::isfinite(row[c])) {
        bad[r] = c;
        return;
      }
    for (int64_t c0 = 0; c0 < cols; c0 += G) fake_quantize_group(t, row + c0, G);
  });
  for (int64_t r = 0; r < rows; ++r)
    if (bad[r] >= 0)
      throw Error(ErrorKind::kNumeric,
                  "non-finite activation at token " + std::to_string(r) + ", input " + std::to_string(bad[r]),
                  "activations", "the model produced NaN/Inf before this Linear");
}

float activation_global_scale(float amax) {
  if (!(amax > 0)) return 1.0f;
  return bf16_round_down(2688.0f / amax);
}

}  // namespace fp4q::pipeline
