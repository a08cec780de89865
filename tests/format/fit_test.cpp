// MXFP4-fit (MXFP4†, paper App. H): the 8-bit log2 scale codec (exhaustive over 256 codes), the
// per-tensor grid against a float64 reference, absmax and MSE choices, and the guarantee that the
// MSE choice is never worse than MXFP4's on any group.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "fp4q/core/error.h"
#include "fp4q/format/format.h"

using namespace fp4q::format;

namespace {

// Independent float64 E2M1 RNE quantization error of a group at scale s (0 = zero group).
double e2m1_error(const float* x, int g, float s) {
  static const double kGrid[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  double e = 0;
  for (int j = 0; j < g; ++j) {
    double d = 0;
    if (s > 0) {
      const double a = std::min(std::fabs(static_cast<double>(x[j]) / s), 6.0);
      int best = 0;
      for (int i = 1; i < 8; ++i) {
        const double di = std::fabs(a - kGrid[i]), db = std::fabs(a - kGrid[best]);
        if (di < db || (di == db && i % 2 == 0)) best = i;
      }
      d = kGrid[best] * s * (std::signbit(x[j]) ? -1 : 1);
    }
    const double diff = static_cast<double>(x[j]) - static_cast<float>(d);
    e += diff * diff;
  }
  return e;
}

// Float64 reference of the MXFP4 absmax exponent: floor(log2 amax) - 2, +1 when the mantissa of
// amax (in [1, 2)) is >= 1.75; amax below the smallest normal float gives -127.
int ref_e0(float amax) {
  if (amax < 1.1754943508222875e-38f) return -127;
  int ex;
  const double m = std::frexp(static_cast<double>(amax), &ex);  // amax = m * 2^ex, m in [0.5, 1)
  int e = (ex - 1) - 2 + (2 * m >= 1.75 ? 1 : 0);
  return std::max(-127, std::min(127, e));
}

std::vector<float> weights(int64_t rows, int64_t cols, uint32_t seed, double spread) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> n(0.0, 1.0);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<float> w(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    const double row = std::exp2(spread * (u(rng) - 0.5)) * 0.02;
    for (int64_t c = 0; c < cols; ++c) {
      double v = n(rng) * row;
      if (u(rng) < 0.02) v *= 8;          // outliers
      if (c % 32 == 5 && r % 9 == 4) v *= 1e-3;  // a few odd elements
      w[r * cols + c] = static_cast<float>(v);
    }
  }
  return w;
}

}  // namespace

TEST(Mxfp4Fit, TableRow) {
  const auto& s = spec(FormatId::kMXFP4Fit);
  EXPECT_STREQ(s.name, "mxfp4-fit");
  EXPECT_EQ(s.group_size, 32);
  EXPECT_EQ(s.scale, ScaleType::kLog8);
  EXPECT_EQ(s.element, ElementType::kE2M1);
  EXPECT_DOUBLE_EQ(s.bits_per_weight, 4.25);
  EXPECT_FALSE(s.has_global_scale);
  EXPECT_EQ(parse_format("mxfp4-fit"), FormatId::kMXFP4Fit);
}

// All 256 codes for several grids against a float64 (long double) reference: value, strict
// monotonicity, exact powers of two every `steps` codes, code 0 = 0.
TEST(Mxfp4Fit, CodecExhaustive) {
  for (int beta : {-127, -40, -12, 0, 3}) {
    for (int steps : {1, 2, 7, 21, 63, 254}) {
      float prev = 0.0f;
      EXPECT_EQ(fit_scale_value(0, beta, steps), 0.0f);
      for (int q = 1; q < 256; ++q) {
        const long double ref = std::exp2(static_cast<long double>(beta) + static_cast<long double>(q - 1) / steps);
        if (ref > 3.0e38L) break;  // beyond float range: never a chosen code (grid spans <= 255/steps octaves)
        const float v = fit_scale_value(static_cast<uint16_t>(q), beta, steps);
        EXPECT_EQ(v, static_cast<float>(ref)) << beta << " " << steps << " " << q;
        EXPECT_GT(v, prev) << beta << " " << steps << " " << q;
        prev = v;
        if ((q - 1) % steps == 0) EXPECT_EQ(v, std::ldexp(1.0f, beta + (q - 1) / steps));
      }
    }
  }
  EXPECT_THROW(fit_scale_value(256, 0, 1), fp4q::Error);
  EXPECT_THROW(fit_scale_value(1, 0, 0), fp4q::Error);
  EXPECT_THROW(scale_value(FormatId::kMXFP4Fit, 1, 1.0f), fp4q::Error);
}

// The fitted grid against a float64 reference over tensors of very different dynamic ranges.
TEST(Mxfp4Fit, GridMatchesFloat64Reference) {
  for (double spread : {0.0, 2.0, 8.0, 30.0}) {
    for (uint32_t seed : {1u, 2u, 3u}) {
      const int64_t rows = 37, cols = 256;
      auto w = weights(rows, cols, seed, spread);
      if (seed == 3) std::fill(w.begin(), w.begin() + 64, 0.0f);  // zero groups are ignored
      int emin = 1000, emax = -1000;
      for (int64_t i = 0; i < rows * cols / 32; ++i) {
        double amax = 0;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(static_cast<double>(w[i * 32 + j])));
        if (amax == 0) continue;
        emin = std::min(emin, ref_e0(static_cast<float>(amax)));
        emax = std::max(emax, ref_e0(static_cast<float>(amax)));
      }
      const int lo = std::max(-127, emin - 4), hi = std::min(127, emax + 1);
      const int steps = std::max(1, static_cast<int>(std::floor(254.0 / std::max(1, hi - lo))));
      int b = 0, m = 0;
      mxfp4_fit_grid(w.data(), rows, cols, &b, &m);
      EXPECT_EQ(b, lo) << spread;
      EXPECT_EQ(m, steps) << spread;
      const auto s = choose_scales(FormatId::kMXFP4Fit, w.data(), rows, cols, ScaleMethod::kMse);
      EXPECT_EQ(s.fit_beta, lo);
      EXPECT_EQ(s.fit_steps, steps);
      // the grid reaches 2^hi with codes to spare
      EXPECT_LE((hi - lo) * steps + 1, 255);
    }
  }
}

// MSE choice: per group never worse than MXFP4's MSE choice (hence than MXFP4 absmax), and the
// exact optimum over its documented window [2^(e0-4), 2^(e0+1)] (largest scale on ties).
TEST(Mxfp4Fit, MseNeverWorseThanMxfp4OnAnyGroupAndOptimalInWindow) {
  int strictly_better = 0, groups_total = 0;
  for (double spread : {0.0, 4.0, 12.0}) {
    const int64_t rows = 64, cols = 512;
    const auto w = weights(rows, cols, 7, spread);
    const auto fit = choose_scales(FormatId::kMXFP4Fit, w.data(), rows, cols, ScaleMethod::kMse);
    const auto mx = choose_scales(FormatId::kMXFP4, w.data(), rows, cols, ScaleMethod::kMse);
    const auto mxa = choose_scales(FormatId::kMXFP4, w.data(), rows, cols, ScaleMethod::kAbsmax);
    for (int64_t i = 0; i < rows * cols / 32; ++i) {
      const float* x = w.data() + i * 32;
      const double ef = e2m1_error(x, 32, fit.values[i]);
      EXPECT_EQ(fit.values[i], fit_scale_value(fit.codes[i], fit.fit_beta, fit.fit_steps));
      ASSERT_LE(ef, e2m1_error(x, 32, mx.values[i])) << "group " << i;
      ASSERT_LE(ef, e2m1_error(x, 32, mxa.values[i])) << "group " << i;
      strictly_better += ef < e2m1_error(x, 32, mx.values[i]);
      ++groups_total;
      // brute force over the window
      float amax = 0;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
      const int e0 = ref_e0(amax);
      double best = 1e300;
      int best_q = -1;
      for (int q = 255; q >= 1; --q) {
        const double v = fit_scale_value(static_cast<uint16_t>(q), fit.fit_beta, fit.fit_steps);
        if (v > std::ldexp(1.0, e0 + 1) || v < std::ldexp(1.0, e0 - 4)) continue;
        const double e = e2m1_error(x, 32, static_cast<float>(v));
        if (e < best) { best = e; best_q = q; }
      }
      ASSERT_EQ(fit.codes[i], best_q) << "group " << i;
    }
  }
  // the finer grid pays on most groups
  EXPECT_GT(strictly_better, groups_total / 2) << strictly_better << " of " << groups_total;
}

TEST(Mxfp4Fit, AbsmaxRuleAndZeroGroups) {
  const int64_t rows = 8, cols = 128;
  auto w = weights(rows, cols, 11, 6.0);
  std::fill(w.begin() + 32, w.begin() + 64, 0.0f);  // group 1 of row 0
  const auto s = choose_scales(FormatId::kMXFP4Fit, w.data(), rows, cols, ScaleMethod::kAbsmax);
  for (int64_t i = 0; i < rows * cols / 32; ++i) {
    double amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(static_cast<double>(w[i * 32 + j])));
    if (amax == 0) {
      EXPECT_EQ(s.codes[i], 0);
      EXPECT_EQ(s.values[i], 0.0f);
      continue;
    }
    const double t = s.fit_steps * (std::log2(static_cast<double>(static_cast<float>(amax)) / 6.0) - s.fit_beta);
    const int q = static_cast<int>(std::min(255.0, std::max(1.0, 1.0 + std::nearbyint(t))));
    EXPECT_EQ(s.codes[i], q) << i;
  }
  const auto q = quantize_rtn(w.data(), rows, cols, s);
  std::vector<float> d(w.size());
  dequantize(q, d.data());
  for (int j = 32; j < 64; ++j) EXPECT_EQ(d[j], 0.0f);
  // all-zero tensor
  std::vector<float> z(256, 0.0f);
  const auto sz = choose_scales(FormatId::kMXFP4Fit, z.data(), 2, 128, ScaleMethod::kMse);
  for (auto c : sz.codes) EXPECT_EQ(c, 0);
  EXPECT_EQ(sz.fit_steps, 1);
}

// On typical weights the fitted grid's total error is far below MXFP4's and close to NVFP4's
// (the paper's claim for MXFP4†), for both scale methods.
TEST(Mxfp4Fit, TotalErrorBetweenMxfp4AndAboutNvfp4) {
  const int64_t rows = 128, cols = 1024;
  const auto w = weights(rows, cols, 5, 3.0);
  auto total = [&](FormatId id, ScaleMethod m) {
    const auto s = choose_scales(id, w.data(), rows, cols, m);
    const int g = spec(id).group_size;
    double t = 0;
    for (int64_t i = 0; i < rows * cols / g; ++i) t += e2m1_error(w.data() + i * g, g, s.values[i]);
    return t;
  };
  for (auto m : {ScaleMethod::kAbsmax, ScaleMethod::kMse}) {
    const double fit = total(FormatId::kMXFP4Fit, m), mx = total(FormatId::kMXFP4, m);
    EXPECT_LT(fit, 0.95 * mx) << scale_method_name(m);
  }
}
