// Scale methods for ablations (issue 9): "mse-absgs" (MSE per group, absmax NVFP4 global scale)
// and "fpquant" (FP-Quant's observer: L2.4 over 100 unrounded shrink factors, then rounded),
// against independent float64 references.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "fp4q/core/error.h"
#include "fp4q/format/format.h"

using namespace fp4q::format;

namespace {

std::vector<float> weights(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> g(0.0, 0.02);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<float> w(static_cast<size_t>(n));
  for (auto& v : w) v = static_cast<float>(g(rng) * (u(rng) < 0.03 ? 6.0 : 1.0));
  return w;
}

// FP-Quant cast_to_fp4 (interval form, quant_ops.py) of |v|.
double fp4_mag(double a) {
  if (a <= 0.25) return 0;
  if (a < 0.75) return 0.5;
  if (a <= 1.25) return 1;
  if (a < 1.75) return 1.5;
  if (a <= 2.5) return 2;
  if (a < 3.5) return 3;
  if (a <= 5.0) return 4;
  return 6;
}

// Reference of Quantizer.get_quantization_params(observer=mse) for one FP4 group, before the
// format rounding: returns the chosen unrounded scale.
float ref_fpquant_scale(const float* x, int g) {
  float amax = 0;
  for (int j = 0; j < g; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float s0 = amax / 6.0f;
  float best_s = s0;
  double best = INFINITY;
  for (int i = 0; i < 100; ++i) {
    const float s = static_cast<float>(1.0 - i * 0.8 / 100.0) * s0;
    double e = 0;
    for (int j = 0; j < g; ++j) {
      const float q = static_cast<float>(fp4_mag(std::fabs(x[j] / s))) * s;
      e += std::pow(std::fabs(static_cast<double>(std::fabs(x[j])) - q), 2.4);
    }
    if (e < best) { best = e; best_s = s; }
  }
  return best_s;
}

}  // namespace

TEST(AblationScales, NamesRoundTrip) {
  EXPECT_EQ(parse_scale_method("mse-absgs"), ScaleMethod::kMseAbsGs);
  EXPECT_EQ(parse_scale_method("fpquant"), ScaleMethod::kFpQuant);
  EXPECT_STREQ(scale_method_name(ScaleMethod::kMseAbsGs), "mse-absgs");
  EXPECT_STREQ(scale_method_name(ScaleMethod::kFpQuant), "fpquant");
}

TEST(AblationScales, MseAbsGsIsMseAtTheAbsmaxGlobalScale) {
  const auto w = weights(64 * 256, 3);
  const auto a = choose_scales(FormatId::kNVFP4, w.data(), 64, 256, ScaleMethod::kMseAbsGs);
  const float gs0 = nvfp4_global_scale(w.data(), w.size());
  EXPECT_EQ(a.global_scale, gs0);
  const auto b = choose_scales(FormatId::kNVFP4, w.data(), 64, 256, ScaleMethod::kMse, gs0);
  EXPECT_EQ(a.codes, b.codes);
  EXPECT_EQ(a.values, b.values);
  // MXFP4 has no global scale: identical to mse
  const auto c = choose_scales(FormatId::kMXFP4, w.data(), 64, 256, ScaleMethod::kMseAbsGs);
  const auto d = choose_scales(FormatId::kMXFP4, w.data(), 64, 256, ScaleMethod::kMse);
  EXPECT_EQ(c.codes, d.codes);
}

TEST(AblationScales, FpQuantObserverMatchesReference) {
  const int64_t rows = 32, cols = 256;
  const auto w = weights(rows * cols, 9);
  const auto nv = choose_scales(FormatId::kNVFP4, w.data(), rows, cols, ScaleMethod::kFpQuant);
  EXPECT_EQ(nv.global_scale, nvfp4_global_scale(w.data(), w.size()));  // no global search
  int shrunk = 0;
  for (int64_t i = 0; i < rows * cols / 16; ++i) {
    const float s = ref_fpquant_scale(w.data() + i * 16, 16);
    const uint8_t code = e4m3_encode(std::min(s * nv.global_scale, 448.0f));
    ASSERT_EQ(nv.codes[i], code) << i;
    ASSERT_EQ(nv.values[i], e4m3_decode(code) / nv.global_scale) << i;
    float amax = 0;
    for (int j = 0; j < 16; ++j) amax = std::max(amax, std::fabs(w[i * 16 + j]));
    shrunk += s < amax / 6.0f;
  }
  EXPECT_GT(shrunk, 0);  // the search does shrink some groups
  const auto mx = choose_scales(FormatId::kMXFP4, w.data(), rows, cols, ScaleMethod::kFpQuant);
  for (int64_t i = 0; i < rows * cols / 32; ++i) {
    const float s = ref_fpquant_scale(w.data() + i * 32, 32);
    ASSERT_EQ(mx.values[i], std::ldexp(1.0f, mxfp4_absmax_exponent(6.0f * s))) << i;
  }
}

// mse-hess: with uniform weights identical to mse; with weights, the exact weighted optimum over
// the same candidate codes (checked by brute force at a fixed global scale); without weights an
// error (it must not silently fall back).
TEST(AblationScales, MseHessWeightedOptimum) {
  const int64_t rows = 16, cols = 128;
  const auto w = weights(rows * cols, 21);
  std::vector<float> ones(cols, 1.0f), cw(cols);
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> u(0.0f, 10.0f);
  for (auto& c : cw) c = u(rng) * u(rng);
  for (FormatId id : {FormatId::kNVFP4, FormatId::kMXFP4}) {
    const auto a = choose_scales(id, w.data(), rows, cols, ScaleMethod::kMseHess, 0.0f, "t", ones.data());
    const auto b = choose_scales(id, w.data(), rows, cols, ScaleMethod::kMse);
    EXPECT_EQ(a.codes, b.codes);
    EXPECT_EQ(a.global_scale, b.global_scale);
  }
  const float gs = nvfp4_global_scale(w.data(), w.size());
  const auto h = choose_scales(FormatId::kNVFP4, w.data(), rows, cols, ScaleMethod::kMseHess, gs, "t", cw.data());
  int differ = 0;
  for (int64_t i = 0; i < rows * cols / 16; ++i) {
    const float* x = w.data() + i * 16;
    const float* c = cw.data() + (i % (cols / 16)) * 16;
    float amax = 0;
    for (int j = 0; j < 16; ++j) amax = std::max(amax, std::fabs(x[j]));
    const int c0 = e4m3_encode(std::min(amax / 6.0f * gs, 448.0f));
    const int lo = std::max(1, static_cast<int>(e4m3_encode(std::min(0.2f * (amax / 6.0f) * gs, 448.0f))));
    double best = INFINITY;
    int best_c = -1;
    for (int code = std::min(c0 + 1, 0x7e); code >= lo; --code) {
      const float s = e4m3_decode(static_cast<uint8_t>(code)) / gs;
      double e = 0;
      for (int j = 0; j < 16; ++j) {
        const float q = static_cast<float>(fp4_mag(std::fabs(x[j] / s))) * s;
        const double d = static_cast<double>(std::fabs(x[j])) - q;
        e += static_cast<double>(c[j]) * d * d;
      }
      if (e < best) { best = e; best_c = code; }
    }
    ASSERT_EQ(h.codes[i], best_c) << i;
    differ += h.codes[i] != choose_scales(FormatId::kNVFP4, x, 1, 16, ScaleMethod::kMse, gs).codes[0];
  }
  EXPECT_GT(differ, 0);  // the weights matter
  EXPECT_THROW(choose_scales(FormatId::kNVFP4, w.data(), rows, cols, ScaleMethod::kMseHess), fp4q::Error);
}
