// src/pipeline/act_quant.cpp — the online input transform of each runtime (see act_quant.h for
// the rules; docs/FORMAT.md §13 for where they come from).
#include "fp4q/pipeline/act_quant.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
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

// One h-block of the fp-quant rotation on float32 inputs as Triton's `tl.dot(x, M)` computes it
// with input precision "ieee" (TRITON_F32_DEFAULT=ieee; FMA lowering of the dot): for each output
// j, acc = 0, then acc = fma(x[k], M[k][j], acc) for k = 0, 1, ..., b-1 in order, M[k][j] =
// ±c (Sylvester sign (-1)^popcount(k&j)). With c = 1/4 (b = 16) every product is exact and this is
// a left-to-right float32 sum; for b = 32, 128 each step rounds once (fma).
void fma_dot_block(float* v, int b, float c) {
  float x[256];
  for (int k = 0; k < b; ++k) x[k] = v[k];
  for (int j = 0; j < b; ++j) {
    float acc = 0.0f;
    for (int k = 0; k < b; ++k) acc = std::fma(x[k], (__builtin_popcount(static_cast<unsigned>(k & j)) & 1) ? -c : c, acc);
    v[j] = acc;
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
  if (!ct && t.dtype == ComputeDtype::kF32 && h > 256)
    throw Error(ErrorKind::kUsage, "fp-quant rotation block " + std::to_string(h) + " is larger than 256",
                "--hadamard", "fp_quant accepts 16, 32, 64 or 128");
  // compressed-tensors: sums / fl(sqrt(h)); fp-quant: sums * c, c = the stored matrix entry
  // fl(1/sqrt(h)) in the runtime dtype.
  const float div = static_cast<float>(std::sqrt(static_cast<double>(h)));
  const float c = round_to(t.dtype, static_cast<float>(1.0 / std::sqrt(static_cast<double>(h))));
  parallel_for(static_cast<long>(rows), [&](long r) {
    float* row = x + r * cols;
    for (int64_t c0 = 0; c0 < cols; c0 += h) {
      float* v = row + c0;
      if (ct) {
        fwht(v, h);
        for (int j = 0; j < h; ++j) v[j] = round_bf16(v[j] / div);  // bf16 only (f32 returned above)
      } else if (t.dtype == ComputeDtype::kF32) {
        fma_dot_block(v, h, c);  // float32 tl.dot: sequential fma
      } else {
        // bf16 tl.dot (tensor cores): exact bf16 products ±x·c summed in float32; the sums of a
        // block of bf16 values are exact here (Walsh–Hadamard butterflies), one rounding by c.
        fwht(v, h);
        for (int j = 0; j < h; ++j) v[j] *= c;  // float32 result of tl.dot, not rounded
      }
    }
  });
}

// Triton's float32 reciprocal: 1.0 / b in a Triton kernel is div.full.f32 = MUFU.RCP, the
// hardware's approximate reciprocal, faithful but not always the nearest float to 1/b (for 20 of
// the 128 bf16 mantissas it is the other neighbour, e.g. b = 498: 0x3b039931 where RN(1/498) =
// 0x3b039930). It depends on the mantissa only: rcp(m·2^e) = rcp(m)·2^-e. kTritonRcp holds
// rcp(1 + i/128) for the 128 bf16 mantissas, all measured on an H200 (triton_rcp_table.inc;
// tools/verify_consumers.py measures and rewrites it); other divisors (only MXFP4's 2^k·RN(4/3)
// occurs, measured RN) take RN(1/b).
constexpr uint32_t kTritonRcp[128] = {
#include "triton_rcp_table.inc"
};

}  // namespace

float triton_rcp(float b) {
  const uint32_t u = float_to_bits(b);
  const uint32_t e = (u >> 23) & 0xffu;
  // bf16-exact, normal, with a normal reciprocal (2^-125 <= |b| < 2^126)
  if ((u & 0xffffu) == 0 && e >= 2 && e <= 252) {
    const float r = std::ldexp(bits_to_float(kTritonRcp[(u >> 16) & 0x7fu]), 127 - static_cast<int>(e));
    return (u >> 31) ? -r : r;
  }
  return 1.0f / b;  // -ffp-contract=off, no fast-math: a separate, correctly rounded step
}

int triton_floor_log2(float a) {
  int e2 = 0;
  const float m = std::frexp(a, &e2);  // a = m·2^e2, m in [0.5, 1): the exact floor is e2 - 1
  // log2 a = e2 + log2 m. Far from the next power of two (log2 m <= -1.4e-5) no float32 rounding
  // reaches e2: half an ulp of a float32 of magnitude <= 256 is <= 2^-17 = 7.6e-6.
  if (m < 0.99999f) return e2 - 1;
  // RN32(log2 a) through double: log2 of a float is never within double rounding error of a
  // float32 midpoint here (tests/pipeline/fpq_triton_rcp_test.cpp checks every float of these
  // bands against long double).
  return static_cast<int>(std::floor(static_cast<float>(std::log2(static_cast<double>(a)))));
}

namespace {

// Triton's float32 `/` (PTX div.full.f32): a · rcp(b) with one rounding of the product (the
// operands are rescaled only for |b| > 2^126, which no divisor here reaches; measured: 0 of 31536
// probed quotients differ from this model). For the E4M3 mantissas 1.125 .. 1.875 rcp = RN(1/m)
// lies above 1/m, so an exact tie x·gs = t·S can come out one ulp above t (and round up) where
// IEEE division gives t (and rounds toward zero); for a global scale whose rcp is not RN(1/gs)
// every dequantised x̂ = fl(q·S)·rcp(gs) moves by an ulp.
inline float div_full(float a, float b) { return a * triton_rcp(b); }

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

// fp_quant triton/nvfp4.py (every `/` is div.full.f32).
void fpq_nvfp4(float* g, int n, float gs_stored, ComputeDtype d) {
  const float gs = round_to(d, gs_stored);  // the act_global_scale buffer in the model dtype
  const float amax = group_amax(g, n);
  const float t = gs * amax;
  const uint8_t sb = format::e4m3_encode(std::min(div_full(t, 6.0f), 448.0f));  // cvt.rn.satfinite.e4m3
  const float S = format::e4m3_decode(sb);
  for (int j = 0; j < n; ++j) {
    if (!(S > 0.0f)) {  // x·gs·rcp(0) = ±inf -> 6, or NaN -> 0; times S = 0 either way
      g[j] = 0.0f;
      continue;
    }
    const float v = div_full(g[j] * gs, S);
    const float q = kE2M1Grid[e2m1_index_tz(std::fabs(v))];
    g[j] = round_to(d, div_full((v > 0.0f ? q : -q) * S, gs));
  }
}

// fp_quant triton/mxfp4.py, forward_method abs_max (gaussian_scale 3/4, quest False): line 62
// `tl.exp2(tl.floor(tl.log2(scales)) - 2) / (3 / 4)`; both `/` are div.full.f32. The same float32
// arithmetic in fp32 and bf16 models (tl.dot returns float32 either way).
void fpq_mxfp4(float* g, int n, ComputeDtype d) {
  const float amax = group_amax(g, n);
  if (!(amax > 0.0f)) {
    for (int j = 0; j < n; ++j) g[j] = 0.0f;
    return;
  }
  // E = floor(tl.log2(amax)): the float32 log2 rounded, then floored (measured on an H200), so a
  // group max just below 2^k takes E = k, not k - 1 (triton_floor_log2).
  const int E = triton_floor_log2(amax);
  const float s = div_full(std::ldexp(1.0f, E - 2), 0.75f);  // 2^(E-2)·RN(4/3)
  if (!(s > 0.0f)) {  // underflow: x/0 saturates to 6, times 0
    for (int j = 0; j < n; ++j) g[j] = 0.0f;
    return;
  }
  for (int j = 0; j < n; ++j) {
    const float v = div_full(g[j], s);
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

namespace {

void transform_impl(const InputTransform& t, float* x, int64_t rows, int64_t cols) {
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

// Diagnostic dump for tools/verify_consumers.py (issue 10): with FP4Q_DUMP_ACT=DIR every call
// writes its input and its output (float32, row-major) as DIR/act_NNN.in.f32 / .out.f32 and one
// line "NNN rows cols hadamard quantize format runtime dtype global_scale(%a)" to DIR/index.tsv,
// for the first FP4Q_DUMP_ACT_MAX (default 64) calls of the process. An `eval --dump-logits
// --logits-ids` run without --text/--ids makes exactly one forward: one call per quantized input
// group (per layer: q/k/v, o, gate/up, down), in execution order. Not a user feature.
struct ActDump {
  std::mutex mu;
  std::string dir;
  long max_calls = 0;
  long calls = 0;
  ActDump() {
    const char* d = std::getenv("FP4Q_DUMP_ACT");
    if (!d || !*d) return;
    dir = d;
    const char* m = std::getenv("FP4Q_DUMP_ACT_MAX");
    max_calls = m && *m ? std::atol(m) : 64;
    std::filesystem::create_directories(dir);
    std::ofstream(dir + "/index.tsv", std::ios::trunc);
  }
};

ActDump& act_dump() {
  static ActDump d;
  return d;
}

void write_floats(const std::string& path, const float* x, int64_t n) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(x), static_cast<std::streamsize>(n * static_cast<int64_t>(sizeof(float))));
  if (!f) throw Error(ErrorKind::kIo, "cannot write " + path, "FP4Q_DUMP_ACT");
}

}  // namespace

void apply_input_transform(const InputTransform& t, float* x, int64_t rows, int64_t cols) {
  ActDump& dump = act_dump();
  long id = -1;
  if (!dump.dir.empty()) {
    std::lock_guard<std::mutex> lock(dump.mu);
    if (dump.calls < dump.max_calls) id = dump.calls++;
  }
  if (id < 0) return transform_impl(t, x, rows, cols);
  char stem[32];
  std::snprintf(stem, sizeof stem, "act_%03ld", id);
  const std::string base = dump.dir + "/" + stem;
  write_floats(base + ".in.f32", x, rows * cols);
  transform_impl(t, x, rows, cols);
  write_floats(base + ".out.f32", x, rows * cols);
  char line[256];
  std::snprintf(line, sizeof line, "%03ld\t%lld\t%lld\t%d\t%d\t%s\t%s\t%s\t%a\n", id, static_cast<long long>(rows),
                static_cast<long long>(cols), t.hadamard, t.quantize ? 1 : 0, format::spec(t.format).name,
                act_runtime_name(t.runtime), compute_dtype_name(t.dtype), static_cast<double>(t.global_scale));
  std::lock_guard<std::mutex> lock(dump.mu);
  std::ofstream(dump.dir + "/index.tsv", std::ios::app) << line;
}

float activation_global_scale(float amax) {
  if (!(amax > 0)) return 1.0f;
  return bf16_round_down(2688.0f / amax);
}

}  // namespace fp4q::pipeline
