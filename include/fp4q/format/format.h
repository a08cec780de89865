// fp4q/format/format.h — the one table of quantization formats and the block-format API.
//
// Everything that needs to know about a format (CLI choices, writers, tests, GPTQ) reads it from
// the table returned by all_formats(); nothing else hard-codes group sizes or scale codecs.
//
// Conventions (see docs/FORMAT.md for bytes on disk):
//  * A weight matrix is W [rows = out_features, cols = in_features], row-major float32.
//  * Group g of row r covers columns [g*G, (g+1)*G) (G = group_size). cols % G == 0 is required.
//  * Element codes are 4-bit values stored one per uint8 in memory (unpacked):
//      E2M1: code = sign<<3 | idx, idx 0..7 -> {0, .5, 1, 1.5, 2, 3, 4, 6}; sign = signbit of the
//            input, so -0.0 and negatives rounding to zero give code 8.
//      INT4: two's complement nibble, value in [-8, 7].
//  * Dequantized value = element_value(code) * scales.values[r * groups + g].
//    values[] is the effective multiplier, already divided by the NVFP4 global scale:
//      NVFP4: values = e4m3_decode(codes) / global_scale   (global_scale is the compressed-tensors
//             *multiplier* 2688/amax convention, rounded down to a bf16-exact float)
//      MXFP4: values = 2^(code - 127)                        (OCP E8M0, no hidden constant)
//      INT4 : values = f16_decode(codes)
//      MXFP4-fit (MXFP4†): values = 2^(fit_beta + (code - 1) / fit_steps) for code 1..255
//             (fit_scale_value; the grid is per tensor, see choose_scales), code 0 = zero group
//    Exception: a group whose scale is zero (all-zero group, or a scale too small for the scale
//    type) has codes = 0 AND values = 0 for every format (for MXFP4 byte 0 would decode to
//    2^-127; values is 0 so that dequantization is exactly 0). Its element codes are all 0.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fp4q::format {

// Stored in reports and on-disk metadata: values are never reused.
enum class FormatId : int { kNVFP4 = 1, kMXFP4 = 2, kINT4 = 3, kMXFP4Fit = 4 };
enum class ElementType : int { kE2M1 = 1, kInt4 = 2 };
// kLog8: MXFP4† (paper App. H) 8-bit code q of a per-tensor fitted log2 grid (see "mxfp4-fit").
enum class ScaleType : int { kE4M3 = 1, kE8M0 = 2, kF16 = 3, kLog8 = 4 };
// kMseAbsGs and kFpQuant are for ablations (issue 9): kMseAbsGs = kMse without the NVFP4
// global-scale search (absmax global scale); kFpQuant = FP-Quant's MSE observer (see choose_scales).
// kMseHess: kMse with each element's squared error weighted by its column's weight (choose_scales'
// col_weights; the pipeline passes diag(H) of the rotated Hessian: a GPTQ-aware scale choice).
// kMseGptq: the same weighted MSE with GPTQ's own per-column error weights 1/U_kk² (the pipeline
// passes gptq::column_costs).
enum class ScaleMethod : int { kAbsmax = 1, kMse = 2, kMseAbsGs = 3, kFpQuant = 4, kMseHess = 5, kMseGptq = 6 };

struct FormatSpec {
  FormatId id;
  const char* name;           // CLI / report name: "nvfp4", "mxfp4", "int4"
  const char* description;    // one line for `fp4q formats`
  ElementType element;
  ScaleType scale;
  int group_size;             // elements per scale (16, 32, 32)
  bool has_global_scale;      // NVFP4 only
  int default_hadamard;       // MR-GPTQ default rotation block (16, 32, 0 = none)
  double bits_per_weight;     // 4 + scale bits / group_size
  float element_max;          // largest element magnitude (6 for E2M1, 8 for INT4's -8)
};

const std::vector<FormatSpec>& all_formats();
const FormatSpec& spec(FormatId id);
// Parses a name from the table; throws fp4q::Error(kUsage) listing the valid names.
FormatId parse_format(const std::string& name);
ScaleMethod parse_scale_method(const std::string& name);  // absmax | mse | mse-absgs | fpquant | mse-hess | mse-gptq
const char* scale_method_name(ScaleMethod m);

// ---- element codecs (exhaustively tested) ----
// E2M1 round-to-nearest, ties to even mantissa, saturating at +-6. x must be finite.
uint8_t e2m1_encode(float x);
float e2m1_decode(uint8_t code);          // code & 0xF
// FP8 E4M3 (fn): RNE, saturates at +-448, never produces NaN (0x7f/0xff). x must be finite.
uint8_t e4m3_encode(float x);
float e4m3_decode(uint8_t byte);          // 0x7f / 0xff decode to NaN
// E8M0: byte = e + 127 for the power of two 2^e, e in [-127, 127] (never 255).
uint8_t e8m0_encode_exponent(int e);
float e8m0_decode(uint8_t byte);          // 2^(byte-127); 255 -> NaN
// INT4: RNE of x, clamped to [-8, 7]; code = value & 0xF.
uint8_t int4_encode(float x);
float int4_decode(uint8_t code);

// Element value of a code for the format's element type.
float element_decode(FormatId id, uint8_t code);
// Quantize x with effective scale s (> 0): code of element_round(x / s). Writes the
// dequantized value element_decode(code) * s to *deq when deq != nullptr.
// s == 0 (zero group) returns code 0 and *deq = 0. Non-finite x throws fp4q::Error(kNumeric).
uint8_t quantize_value(FormatId id, float x, float s, float* deq);

// ---- additions (fp4q-format author) ----
// Effective multiplier of a stored scale code (what GroupScales::values holds for a non-zero
// group): NVFP4 e4m3_decode(code)/global_scale, MXFP4 2^(code-127), INT4 f16_decode(code).
float scale_value(FormatId id, uint16_t code, float global_scale);
// MXFP4 absmax exponent e (effective scale 2^e, byte e+127) of a group with max |x| = amax > 0,
// exactly compressed-tensors' generate_mx_scales(amax fp32, num_bits=4):
//   round_to_power_2: bits(amax) + (1 << 21), then keep sign+exponent bits (i.e. amax is rounded
//   UP to the next power of two when its mantissa fraction is >= 0.75, else down), then
//   e = log2(that) - 2, clamped to [-127, 127]; subnormal amax gives -127.
// So e = floor(log2 amax) - 2, plus 1 when amax >= 1.75 * 2^floor(log2 amax). The group max maps
// into [3.5, 7) units of 2^e; values above 6*2^e saturate to +-6.
int mxfp4_absmax_exponent(float amax);

// ---- scales ----
struct GroupScales {
  FormatId format = FormatId::kNVFP4;
  int64_t rows = 0, groups = 0;
  std::vector<uint16_t> codes;   // [rows * groups]: E4M3 byte / E8M0 byte / F16 bits
  std::vector<float> values;     // [rows * groups]: effective multiplier (see top comment)
  float global_scale = 1.0f;     // NVFP4 weight_global_scale; 1.0 for other formats
  // MXFP4-fit only (0 otherwise): the tensor's scale grid s(q) = 2^(fit_beta + (q-1)/fit_steps),
  // q = 1..255 (alpha = 1/fit_steps octaves per code, beta = fit_beta).
  int fit_beta = 0;
  int fit_steps = 0;
};

// ---- MXFP4-fit (MXFP4†, paper App. H: 8-bit scale codes, s = 2^(alpha*q + beta), alpha and
// beta fitted per tensor; 4.25 bits/weight like MXFP4). fp4q's fit (see choose_scales):
//   e0_g = mxfp4_absmax_exponent(amax_g) over the tensor's non-zero groups g;
//   lo = max(-127, min_g e0_g - 4), hi = min(127, max_g e0_g + 1), R = max(hi - lo, 1);
//   fit_steps m = max(1, floor(254 / R)), fit_beta = lo;  s(q) = 2^(lo + (q-1)/m), q = 1..255.
// alpha = 1/m is the finest grid with an integer number of codes per octave that spans [lo, hi]:
// every power of two 2^e, lo <= e <= hi, is a code ((e - lo)*m + 1), so every scale MXFP4 (absmax
// or MSE) can choose for any group of the tensor is also storable, and the MSE choice over the
// fitted codes is never worse than MXFP4's on any group. (The paper's continuous alpha =
// (log2 s_max - log2 s_min)/255 is at most ~4 % finer; it loses that guarantee.)
// No runtime reads this format: only `--export dequant` writes it.
float fit_scale_value(uint16_t code, int fit_beta, int fit_steps);  // code 0 -> 0
// The (fit_beta, fit_steps) choose_scales uses for W [rows x cols] (group size 32).
void mxfp4_fit_grid(const float* w, int64_t rows, int64_t cols, int* fit_beta, int* fit_steps);

// NVFP4 absmax global scale of a tensor: bf16_round_down(2688 / amax), amax = max |w|.
// amax == 0 gives 1.0. Fused groups (q/k/v, gate/up) pass the min over the group to choose_scales.
float nvfp4_global_scale(const float* w, int64_t n);

// Chooses per-group scales for W [rows x cols].
//  kAbsmax: NVFP4 S = e4m3(min(amax_g/6 * gs, 448)); MXFP4 e = mxfp4_absmax_exponent(amax_g)
//           (compressed-tensors' rule: the OCP floor(log2 amax_g) - 2, bumped by one when the
//           mantissa of amax_g is >= 1.75); INT4 s = f16(amax_g / 7.5); MXFP4-fit
//           q = clamp(1 + round(m * (log2(amax_g/6) - beta)), 1, 255) (nearest in log2).
//  kMse:    per group, the stored scale code minimising sum (x - x_hat)^2 over the codes the
//           format can store (never worse than kAbsmax on any group); NVFP4 additionally
//           alternates global-scale and group-scale optimisation unless global_scale is given.
//           MXFP4-fit searches every code whose scale lies in [2^(e0_g - 4), 2^(e0_g + 1)].
//  kMseAbsGs: kMse with the absmax NVFP4 global scale (no global-scale search).
//  kFpQuant: FP-Quant's observer (Quantizer.get_quantization_params, w_observer mse): per group,
//           s0 = amax/6 (INT4 amax/7.5), candidates s = float(1 - i*0.8/100) * s0, i = 0..99,
//           evaluated UNROUNDED with the objective sum |x - Q(x; s)|^2.4 (strict improvement,
//           ties -> larger), then rounded to the format: NVFP4 e4m3(min(s*gs, 448)) with the
//           absmax global scale, MXFP4 2^mxfp4_absmax_exponent(6 s), INT4 f16(s), MXFP4-fit the
//           nearest code in log2. (Not "never worse than absmax": it is the reference's rule.)
// global_scale > 0 fixes the NVFP4 global scale (shared by fused layers); <= 0 computes it.
// All-zero groups get scale code 0 and value 0 (dequantize to exact zeros, never NaN).
// Throws fp4q::Error(kNumeric) on non-finite input; `where` names the tensor.
// col_weights [cols] (kMseHess / kMseGptq only, required there): the MSE objective and the NVFP4
// global-scale search minimise sum_j col_weights[j] * (x_j - x_hat_j)^2 instead.
// The NVFP4 global scale that choose_scales(kNVFP4, w, ..., method, 0) SEARCHES (before its final
// comparison with the absmax global scale on every row), without choosing group scales: absmax
// methods give nvfp4_global_scale(w). Fused layers (q/k/v, gate/up) take the minimum of their
// members' and pass it to choose_scales, so no member pays for a full code pass twice.
float nvfp4_search_global_scale(const float* w, int64_t rows, int64_t cols, ScaleMethod method,
                                const std::string& where = {}, const float* col_weights = nullptr);

GroupScales choose_scales(FormatId id, const float* w, int64_t rows, int64_t cols,
                          ScaleMethod method, float global_scale = 0.0f,
                          const std::string& where = {}, const float* col_weights = nullptr);

// ---- whole-matrix quantization with fixed scales ----
struct QuantizedMatrix {
  FormatId format = FormatId::kNVFP4;
  int64_t rows = 0, cols = 0;
  std::vector<uint8_t> codes;    // [rows * cols], one 4-bit code per byte (unpacked)
  GroupScales scales;
};

// Round-to-nearest with the given scales (scales.rows == rows, groups == cols / G).
// Non-finite w throws fp4q::Error(kNumeric) naming `where` (added, defaulted) and row/col.
QuantizedMatrix quantize_rtn(const float* w, int64_t rows, int64_t cols, const GroupScales& scales,
                             const std::string& where = {});
// out [rows x cols] = dequantized values.
void dequantize(const QuantizedMatrix& q, float* out);

// ---- packing: two codes per byte, element 2j in the low nibble of byte j ----
// packed [rows x cols/2] uint8, row-major: byte[r*cols/2 + j] = (codes[r,2j] & 0xF) |
// (codes[r,2j+1] & 0xF) << 4 (compressed-tensors pack_fp4_to_uint8 / FP-Quant qweight order).
// cols must be even (fp4q::Error(kInput) otherwise). unpack returns [rows x cols] codes 0..15.
std::vector<uint8_t> pack_nibbles(const uint8_t* codes, int64_t rows, int64_t cols);
std::vector<uint8_t> unpack_nibbles(const uint8_t* packed, int64_t rows, int64_t cols);

}  // namespace fp4q::format
