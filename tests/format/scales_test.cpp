// Scale selection (absmax / MSE), RTN, dequantization, zero groups, errors.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "fp4q/core/error.h"
#include "fp4q/core/half.h"
#include "fp4q/format/format.h"

using namespace fp4q::format;

namespace {

const FormatId kAll[] = {FormatId::kNVFP4, FormatId::kMXFP4, FormatId::kINT4};

// Laplace/Gaussian weights with ~1% outliers; a few rows scaled differently.
std::vector<float> make_weights(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> gauss(0.0f, 0.02f);
  std::exponential_distribution<float> expo(50.0f);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> w(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    float row_scale = (r % 7 == 3) ? 10.0f : (r % 5 == 1 ? 0.01f : 1.0f);
    for (int64_t c = 0; c < cols; ++c) {
      float v = (c % 3 == 0) ? (u(rng) < 0.5f ? -1.0f : 1.0f) * expo(rng) : gauss(rng);
      if (u(rng) < 0.01f) v *= 15.0f;  // outlier
      w[r * cols + c] = v * row_scale;
    }
  }
  return w;
}

// Independent per-group squared error (double) of the dequantized group.
double group_error(FormatId id, const float* x, int g, float s) {
  double e = 0;
  for (int j = 0; j < g; ++j) {
    float d = 0;
    if (s > 0) {
      double v = static_cast<double>(x[j]) / s;
      if (id == FormatId::kINT4) {
        double q = std::nearbyint(std::min(7.0, std::max(-8.0, v)));
        d = static_cast<float>(q) * s;
      } else {
        static const double kGrid[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
        double a = std::min(std::fabs(v), 6.0);
        int best = 0;
        for (int i = 1; i < 8; ++i) {
          double di = std::fabs(a - kGrid[i]), db = std::fabs(a - kGrid[best]);
          if (di < db || (di == db && i % 2 == 0)) best = i;
        }
        d = static_cast<float>(kGrid[best]) * s;
        if (std::signbit(x[j])) d = -d;
      }
    }
    double diff = static_cast<double>(x[j]) - d;
    e += diff * diff;
  }
  return e;
}

double total_error(const float* w, int64_t rows, int64_t cols, const GroupScales& s) {
  const int g = spec(s.format).group_size;
  double t = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols / g; ++k)
      t += group_error(s.format, w + r * cols + k * g, g, s.values[r * (cols / g) + k]);
  return t;
}

// The FP-Quant reference MSE search, but with the L2 objective: 100 continuous shrink factors
// of the absmax scale evaluated UNROUNDED, strict improvement; the winner is then rounded to the
// format. Returns the rounded effective scale.
float reference_search_then_round(FormatId id, const float* x, int g, float gs) {
  float amax = 0;
  for (int j = 0; j < g; ++j) amax = std::max(amax, std::fabs(x[j]));
  if (amax == 0) return 0.0f;
  const float s0 = (id == FormatId::kINT4) ? amax / 7.5f : amax / 6.0f;
  float best_f = 1.0f;
  double best = 1e300;
  for (int i = 0; i < 100; ++i) {
    const float f = static_cast<float>(1.0 - i * 0.8 / 100.0);
    const double e = group_error(id, x, g, s0 * f);
    if (e < best) { best = e; best_f = f; }
  }
  const float s = s0 * best_f;
  switch (id) {
    case FormatId::kNVFP4:
      return e4m3_decode(e4m3_encode(std::min(s * gs, 448.0f))) / gs;
    case FormatId::kMXFP4:
      return e8m0_decode(e8m0_encode_exponent(mxfp4_absmax_exponent(6.0f * s)));
    case FormatId::kINT4:
      return fp4q::f16_to_float(fp4q::float_to_f16(s));
    case FormatId::kMXFP4Fit:
      break;  // tests/format/fit_test.cpp
  }
  return 0;
}

}  // namespace

TEST(GlobalScale, Nvfp4IsBf16RoundDown) {
  auto w = make_weights(16, 64, 1);
  float amax = 0;
  for (float v : w) amax = std::max(amax, std::fabs(v));
  const float gs = nvfp4_global_scale(w.data(), static_cast<int64_t>(w.size()));
  EXPECT_EQ(fp4q::bf16_to_float(fp4q::float_to_bf16(gs)), gs) << "bf16-exact";
  EXPECT_LE(static_cast<double>(gs), 2688.0 / amax);
  const float next = fp4q::bf16_to_float(static_cast<uint16_t>(fp4q::float_to_bf16(gs) + 1));
  EXPECT_GT(static_cast<double>(next), static_cast<double>(2688.0f / amax));
  std::vector<float> z(10, 0.0f);
  EXPECT_EQ(nvfp4_global_scale(z.data(), 10), 1.0f);
  float one = 3.0f;
  EXPECT_EQ(nvfp4_global_scale(&one, 1), 896.0f);
}

TEST(Absmax, Nvfp4Formula) {
  const int64_t rows = 8, cols = 64;
  auto w = make_weights(rows, cols, 2);
  auto s = choose_scales(FormatId::kNVFP4, w.data(), rows, cols, ScaleMethod::kAbsmax);
  const float gs = nvfp4_global_scale(w.data(), rows * cols);
  EXPECT_EQ(s.global_scale, gs);
  ASSERT_EQ(s.groups, 4);
  int max_code = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < 4; ++k) {
      float amax = 0;
      for (int j = 0; j < 16; ++j) amax = std::max(amax, std::fabs(w[r * cols + k * 16 + j]));
      const double target = static_cast<double>(amax) / 6.0 * gs;
      const uint16_t code = s.codes[r * 4 + k];
      ASSERT_LE(code, 0x7e);
      max_code = std::max<int>(max_code, code);
      // the stored byte is the nearest E4M3 value to the target
      const double v = e4m3_decode(static_cast<uint8_t>(code));
      if (code > 0) {
        EXPECT_LE(std::fabs(v - target),
                  std::fabs(e4m3_decode(static_cast<uint8_t>(code - 1)) - target) + 1e-9);
      }
      if (code < 0x7e) {
        EXPECT_LE(std::fabs(v - target),
                  std::fabs(e4m3_decode(static_cast<uint8_t>(code + 1)) - target) + 1e-9);
      }
      EXPECT_EQ(s.values[r * 4 + k], e4m3_decode(static_cast<uint8_t>(code)) / gs);
    }
  EXPECT_GE(max_code, 0x7d) << "the largest group maps to ~448";
}

TEST(Absmax, Mxfp4AndInt4Formula) {
  const int64_t rows = 6, cols = 128;
  auto w = make_weights(rows, cols, 3);
  auto mx = choose_scales(FormatId::kMXFP4, w.data(), rows, cols, ScaleMethod::kAbsmax);
  auto i4 = choose_scales(FormatId::kINT4, w.data(), rows, cols, ScaleMethod::kAbsmax);
  EXPECT_EQ(mx.global_scale, 1.0f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < 4; ++k) {
      float amax = 0;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(w[r * cols + k * 32 + j]));
      int E = static_cast<int>(std::floor(std::log2(static_cast<double>(amax))));
      double frac = amax / std::pow(2.0, E);
      int e = E - 2 + (frac >= 1.75);
      EXPECT_EQ(mx.codes[r * 4 + k], e + 127);
      EXPECT_EQ(mx.values[r * 4 + k], std::ldexp(1.0f, e));
      // group max lands in [3.5, 7) units
      double units = amax / std::ldexp(1.0, e);
      EXPECT_GE(units, 3.5);
      EXPECT_LT(units, 7.0);
      uint16_t h = fp4q::float_to_f16(amax / 7.5f);
      EXPECT_EQ(i4.codes[r * 4 + k], h);
      EXPECT_EQ(i4.values[r * 4 + k], fp4q::f16_to_float(h));
    }
}

TEST(Absmax, Nvfp4FixedGlobalScale) {
  const int64_t rows = 4, cols = 32;
  auto w = make_weights(rows, cols, 4);
  auto s = choose_scales(FormatId::kNVFP4, w.data(), rows, cols, ScaleMethod::kAbsmax, 64.0f);
  EXPECT_EQ(s.global_scale, 64.0f);
  for (size_t i = 0; i < s.codes.size(); ++i) EXPECT_EQ(s.values[i], e4m3_decode(s.codes[i]) / 64.0f);
}

TEST(Quantize, RoundTripIdempotentAndBounded) {
  const int64_t rows = 12, cols = 256;
  auto w = make_weights(rows, cols, 5);
  for (FormatId id : kAll)
    for (ScaleMethod m : {ScaleMethod::kAbsmax, ScaleMethod::kMse}) {
      auto s = choose_scales(id, w.data(), rows, cols, m);
      auto q = quantize_rtn(w.data(), rows, cols, s);
      std::vector<float> d(w.size());
      dequantize(q, d.data());
      const int g = spec(id).group_size;
      for (int64_t i = 0; i < rows * cols; ++i) {
        const float sv = s.values[(i / cols) * (cols / g) + (i % cols) / g];
        float dv;
        quantize_value(id, w[i], sv, &dv);
        ASSERT_EQ(d[i], dv);
        ASSERT_LE(std::fabs(d[i]), spec(id).element_max * sv);
      }
      auto q2 = quantize_rtn(d.data(), rows, cols, s);
      std::vector<float> d2(w.size());
      dequantize(q2, d2.data());
      EXPECT_EQ(d, d2) << spec(id).name << " " << scale_method_name(m);
      // absmax never clips badly: error per element <= half the largest grid step (+ clip)
      if (m == ScaleMethod::kAbsmax && id != FormatId::kMXFP4) {
        for (int64_t i = 0; i < rows * cols; ++i) {
          const float sv = s.values[(i / cols) * (cols / g) + (i % cols) / g];
          EXPECT_LE(std::fabs(w[i] - d[i]), 1.07f * sv + 1e-30f) << spec(id).name << " " << i;
        }
      }
    }
}

TEST(Mse, NeverWorseThanAbsmaxOnAnyGroup) {
  for (uint32_t seed : {11u, 12u, 13u}) {
    const int64_t rows = 48, cols = 512;
    auto w = make_weights(rows, cols, seed);
    for (FormatId id : kAll) {
      const float gs = (id == FormatId::kNVFP4) ? nvfp4_global_scale(w.data(), rows * cols) : 0;
      auto a = choose_scales(id, w.data(), rows, cols, ScaleMethod::kAbsmax, gs);
      auto m = choose_scales(id, w.data(), rows, cols, ScaleMethod::kMse, gs);
      const int g = spec(id).group_size;
      int strictly_better = 0;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < cols / g; ++k) {
          const float* x = w.data() + r * cols + k * g;
          const double ea = group_error(id, x, g, a.values[r * (cols / g) + k]);
          const double em = group_error(id, x, g, m.values[r * (cols / g) + k]);
          ASSERT_LE(em, ea) << spec(id).name << " row " << r << " group " << k;
          strictly_better += em < ea;
        }
      EXPECT_GT(strictly_better, 0) << spec(id).name;
    }
  }
}

TEST(Mse, AtLeastAsGoodAsReferenceContinuousSearchOnEveryGroup) {
  for (uint32_t seed : {21u, 22u}) {
    const int64_t rows = 32, cols = 512;
    auto w = make_weights(rows, cols, seed);
    for (FormatId id : kAll) {
      const float gs = (id == FormatId::kNVFP4) ? nvfp4_global_scale(w.data(), rows * cols) : 1;
      auto m = choose_scales(id, w.data(), rows, cols, ScaleMethod::kMse,
                             id == FormatId::kNVFP4 ? gs : 0.0f);
      const int g = spec(id).group_size;
      int strictly_better = 0;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < cols / g; ++k) {
          const float* x = w.data() + r * cols + k * g;
          const double er = group_error(id, x, g, reference_search_then_round(id, x, g, gs));
          const double em = group_error(id, x, g, m.values[r * (cols / g) + k]);
          ASSERT_LE(em, er) << spec(id).name << " row " << r << " group " << k;
          strictly_better += em < er;
        }
      EXPECT_GT(strictly_better, 0) << spec(id).name;
    }
  }
}

TEST(Mse, ExactOptimumOverDocumentedCandidatesLargestOnTies) {
  // Random weights plus tie-heavy rows (multiples of 1/8 and 1/2: many exact E2M1/INT4 ties).
  const int64_t rows = 40, cols = 256;
  auto w = make_weights(rows, cols, 51);
  std::mt19937 rng(52);
  std::uniform_int_distribution<int> k(-48, 48);
  for (int64_t r = 0; r < 10; ++r)
    for (int64_t c = 0; c < cols; ++c) w[r * cols + c] = k(rng) / (r % 2 ? 8.0f : 2.0f);
  int wins_above_absmax = 0;
  for (FormatId id : kAll) {
    const int g = spec(id).group_size;
    const float gs = (id == FormatId::kNVFP4) ? nvfp4_global_scale(w.data(), rows * cols) : 0;
    auto m = choose_scales(id, w.data(), rows, cols, ScaleMethod::kMse, gs);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t q = 0; q < cols / g; ++q) {
        const float* x = w.data() + r * cols + q * g;
        float amax = 0;
        for (int j = 0; j < g; ++j) amax = std::max(amax, std::fabs(x[j]));
        if (amax == 0) continue;
        std::vector<float> cand;  // documented candidate scales (format.h / scales.cpp)
        float absmax_scale = 0;
        if (id == FormatId::kNVFP4) {
          const float sg = amax / 6.0f * gs;
          const int c0 = e4m3_encode(std::min(sg, 448.0f));
          absmax_scale = e4m3_decode(static_cast<uint8_t>(c0)) / gs;
          for (int c = std::max<int>(1, e4m3_encode(0.2f * sg)); c <= std::min(c0 + 1, 0x7e); ++c)
            cand.push_back(e4m3_decode(static_cast<uint8_t>(c)) / gs);
        } else if (id == FormatId::kMXFP4) {
          const int e0 = mxfp4_absmax_exponent(amax);
          absmax_scale = std::ldexp(1.0f, e0);
          for (int e = e0 - 3; e <= e0 + 1; ++e) cand.push_back(std::ldexp(1.0f, e));
        } else {
          const float s0 = amax / 7.5f;
          absmax_scale = fp4q::f16_to_float(fp4q::float_to_f16(s0));
          std::vector<float> f = {7.5f / 7.0f};
          for (int j = 1; j <= 9; ++j) f.push_back(static_cast<float>(1.0 + j * 0.008));
          for (int i = 0; i < 100; ++i) f.push_back(static_cast<float>(1.0 - i * 0.8 / 100.0));
          for (float fi : f) cand.push_back(fp4q::f16_to_float(fp4q::float_to_f16(s0 * fi)));
        }
        double best = 1e300;
        float best_s = 0;
        for (float sc : cand) {
          const double e = group_error(id, x, g, sc);
          if (e < best || (e == best && sc > best_s)) { best = e; best_s = sc; }
        }
        const float got = m.values[r * (cols / g) + q];
        ASSERT_EQ(group_error(id, x, g, got), best) << spec(id).name << " r" << r << " g" << q;
        ASSERT_EQ(got, best_s) << spec(id).name << " ties must pick the larger scale";
        wins_above_absmax += got > absmax_scale;
      }
  }
  EXPECT_GT(wins_above_absmax, 0) << "the +1 code / larger INT4 scales are sometimes optimal";
}

TEST(Mse, Nvfp4GlobalScaleSearch) {
  const int64_t rows = 64, cols = 256;
  auto w = make_weights(rows, cols, 31);
  const float gs0 = nvfp4_global_scale(w.data(), rows * cols);
  auto a = choose_scales(FormatId::kNVFP4, w.data(), rows, cols, ScaleMethod::kAbsmax);
  auto fixed = choose_scales(FormatId::kNVFP4, w.data(), rows, cols, ScaleMethod::kMse, gs0);
  auto m = choose_scales(FormatId::kNVFP4, w.data(), rows, cols, ScaleMethod::kMse);
  EXPECT_EQ(fp4q::bf16_to_float(fp4q::float_to_bf16(m.global_scale)), m.global_scale);
  EXPECT_LE(m.global_scale, gs0);
  EXPECT_GT(m.global_scale, 0.49f * gs0);
  const double ta = total_error(w.data(), rows, cols, a);
  const double tf = total_error(w.data(), rows, cols, fixed);
  const double tm = total_error(w.data(), rows, cols, m);
  EXPECT_LE(tf, ta);
  EXPECT_LE(tm, tf);
  for (size_t i = 0; i < m.codes.size(); ++i) {
    ASSERT_LE(m.codes[i], 0x7e);
    ASSERT_EQ(m.values[i], m.codes[i] ? e4m3_decode(m.codes[i]) / m.global_scale : 0.0f);
  }
}

TEST(ZeroGroups, CodesAndValuesZeroDequantExact) {
  const int64_t rows = 3, cols = 64;
  std::vector<float> w(rows * cols, 0.0f);
  for (int c = 32; c < 64; ++c) w[1 * cols + c] = 0.001f * (c - 40);   // row 1 second half
  w[2 * cols + 5] = -0.0f;                                             // -0 in a zero group
  w[2 * cols + 40] = 1e-12f;                                           // tiny vs the others
  w[2 * cols + 41] = 100.0f;  // keeps NVFP4 gs small so 1e-12's own group scale underflows
  for (FormatId id : kAll)
    for (ScaleMethod m : {ScaleMethod::kAbsmax, ScaleMethod::kMse}) {
      auto s = choose_scales(id, w.data(), rows, cols, m);
      auto q = quantize_rtn(w.data(), rows, cols, s);
      std::vector<float> d(w.size(), 7.0f);
      dequantize(q, d.data());
      const int g = spec(id).group_size;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < cols / g; ++k) {
          bool zero = true;
          for (int j = 0; j < g; ++j) zero &= (w[r * cols + k * g + j] == 0.0f);
          if (!zero) continue;
          EXPECT_EQ(s.codes[r * (cols / g) + k], 0) << spec(id).name;
          EXPECT_EQ(s.values[r * (cols / g) + k], 0.0f) << spec(id).name;
          for (int j = 0; j < g; ++j) {
            EXPECT_EQ(q.codes[r * cols + k * g + j], 0);
            EXPECT_EQ(d[r * cols + k * g + j], 0.0f);
          }
        }
      for (float v : d) ASSERT_FALSE(std::isnan(v));
    }
  // All-zero matrix.
  for (FormatId id : kAll) {
    auto s = choose_scales(id, w.data(), 1, 32, ScaleMethod::kMse);
    EXPECT_EQ(s.codes[0], 0);
    EXPECT_EQ(s.values[0], 0.0f);
  }
}

TEST(ZeroGroups, Nvfp4UnderflowingScaleGivesZero) {
  // group 0 amax 1e-9 with global scale from amax 100: 1e-9/6*26.875 -> E4M3 0.
  std::vector<float> w(32, 0.0f);
  w[3] = 1e-9f;
  w[20] = 100.0f;
  auto s = choose_scales(FormatId::kNVFP4, w.data(), 1, 32, ScaleMethod::kAbsmax);
  EXPECT_EQ(s.codes[0], 0);
  EXPECT_EQ(s.values[0], 0.0f);
  auto q = quantize_rtn(w.data(), 1, 32, s);
  EXPECT_EQ(q.codes[3], 0);
}

TEST(NegativeZero, EncodesWithSignBit) {
  std::vector<float> w(32, 0.5f);
  w[0] = -0.0f;
  w[1] = 0.0f;
  w[2] = -1e-30f;
  for (FormatId id : {FormatId::kNVFP4, FormatId::kMXFP4}) {
    auto s = choose_scales(id, w.data(), 1, 32, ScaleMethod::kAbsmax);
    auto q = quantize_rtn(w.data(), 1, 32, s);
    EXPECT_EQ(q.codes[0], 8);
    EXPECT_EQ(q.codes[1], 0);
    EXPECT_EQ(q.codes[2], 8);
    std::vector<float> d(32);
    dequantize(q, d.data());
    EXPECT_EQ(d[0], 0.0f);
  }
}

TEST(Errors, NonFiniteNamesTensorRowAndColumn) {
  const int64_t rows = 5, cols = 64;
  std::vector<float> w(rows * cols, 0.1f);
  w[3 * cols + 17] = std::nanf("");
  w[4 * cols + 1] = INFINITY;
  for (FormatId id : kAll) {
    try {
      choose_scales(id, w.data(), rows, cols, ScaleMethod::kMse, 0.0f, "model.layers.0.q_proj");
      FAIL() << "no throw";
    } catch (const fp4q::Error& e) {
      EXPECT_EQ(e.kind(), fp4q::ErrorKind::kNumeric);
      EXPECT_EQ(e.where(), "model.layers.0.q_proj");
      std::string msg = e.what();
      EXPECT_NE(msg.find("model.layers.0.q_proj"), std::string::npos) << msg;
      EXPECT_NE(msg.find("row 3, column 17"), std::string::npos) << msg;
    }
  }
  auto s = choose_scales(FormatId::kNVFP4, std::vector<float>(rows * cols, 1.f).data(), rows, cols,
                         ScaleMethod::kAbsmax);
  try {
    quantize_rtn(w.data(), rows, cols, s, "lm.x");
    FAIL();
  } catch (const fp4q::Error& e) {
    EXPECT_EQ(e.kind(), fp4q::ErrorKind::kNumeric);
    EXPECT_NE(std::string(e.what()).find("lm.x"), std::string::npos);
  }
}

TEST(Errors, ShapeNotMultipleOfGroup) {
  std::vector<float> w(40, 1.0f);
  try {
    choose_scales(FormatId::kMXFP4, w.data(), 1, 40, ScaleMethod::kAbsmax, 0, "t");
    FAIL();
  } catch (const fp4q::Error& e) {
    EXPECT_EQ(e.kind(), fp4q::ErrorKind::kInput);
  }
}

TEST(Threads, ResultsIndependentOfThreadCount) {
  const int64_t rows = 301, cols = 256;  // > 64K elements: the parallel path
  auto w = make_weights(rows, cols, 41);
  const int saved = omp_get_max_threads();
  for (FormatId id : kAll) {
    omp_set_num_threads(1);
    auto s1 = choose_scales(id, w.data(), rows, cols, ScaleMethod::kMse);
    auto q1 = quantize_rtn(w.data(), rows, cols, s1);
    omp_set_num_threads(3);
    auto s3 = choose_scales(id, w.data(), rows, cols, ScaleMethod::kMse);
    auto q3 = quantize_rtn(w.data(), rows, cols, s3);
    EXPECT_EQ(s1.codes, s3.codes);
    EXPECT_EQ(s1.global_scale, s3.global_scale);
    EXPECT_EQ(q1.codes, q3.codes);
  }
  omp_set_num_threads(saved);
}
