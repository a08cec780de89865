// Exhaustive tests of the element/scale codecs and the format table.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "fp4q/core/error.h"
#include "fp4q/format/format.h"

using namespace fp4q::format;

namespace {

// Independent E4M3fn value of a byte, in double.
double e4m3_ref(int b) {
  int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
  double v = (e == 0) ? (m / 8.0) * std::pow(2.0, -6) : (1.0 + m / 8.0) * std::pow(2.0, e - 7);
  return s ? -v : v;
}

// Brute force nearest E4M3 byte for finite x (saturating), ties to the even byte (= even mantissa).
int e4m3_brute(double x) {
  double a = std::fabs(x);
  int best = 0;
  double bd = std::numeric_limits<double>::infinity();
  for (int b = 0; b <= 0x7e; ++b) {
    double d = std::fabs(a - e4m3_ref(b));
    if (d < bd || (d == bd && (b % 2 == 0))) { bd = d; best = b; }
  }
  return (std::signbit(x) ? 0x80 : 0) | best;
}

const double kE2M1[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};

int e2m1_brute(double x) {
  double a = std::min(std::fabs(x), 6.0);
  int best = 0;
  double bd = 1e9;
  for (int i = 0; i < 8; ++i) {
    double d = std::fabs(a - kE2M1[i]);
    if (d < bd || (d == bd && i % 2 == 0)) { bd = d; best = i; }  // even index == even mantissa
  }
  return (std::signbit(x) ? 8 : 0) | best;
}

}  // namespace

TEST(E2M1, DecodeTable) {
  const float expect[16] = {0, .5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -.5f, -1, -1.5f, -2, -3, -4, -6};
  for (int c = 0; c < 16; ++c) {
    EXPECT_EQ(e2m1_decode(static_cast<uint8_t>(c)), expect[c]) << c;
    EXPECT_EQ(std::signbit(e2m1_decode(static_cast<uint8_t>(c))), c >= 8) << c;
    EXPECT_EQ(e2m1_decode(static_cast<uint8_t>(c | 0xF0)), expect[c]) << "upper bits ignored";
  }
}

TEST(E2M1, EncodeRoundTripsEveryCode) {
  for (int c = 0; c < 16; ++c) EXPECT_EQ(e2m1_encode(e2m1_decode(static_cast<uint8_t>(c))), c);
}

TEST(E2M1, TiesToEvenAndSaturation) {
  struct Case { float x; float expect; };
  const Case cases[] = {{0.25f, 0}, {0.75f, 1}, {1.25f, 1}, {1.75f, 2}, {2.5f, 2}, {3.5f, 4},
                        {5.0f, 4},  {0.2500001f, 0.5f}, {0.2499999f, 0}, {5.0001f, 6},
                        {6.0f, 6},  {6.5f, 6}, {7.0f, 6}, {1e30f, 6},
                        {std::numeric_limits<float>::max(), 6}};
  for (const auto& c : cases) {
    EXPECT_EQ(e2m1_decode(e2m1_encode(c.x)), c.expect) << c.x;
    EXPECT_EQ(e2m1_decode(e2m1_encode(-c.x)), -c.expect) << -c.x;
  }
  EXPECT_EQ(e2m1_encode(-0.0f), 8);
  EXPECT_EQ(e2m1_encode(0.0f), 0);
  EXPECT_EQ(e2m1_encode(-0.1f), 8) << "negative rounding to zero keeps the sign bit";
}

TEST(E2M1, MatchesBruteForceNearest) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-8.0f, 8.0f);
  for (int i = 0; i < 200000; ++i) {
    float x = u(rng);
    ASSERT_EQ(e2m1_encode(x), e2m1_brute(x)) << x;
  }
  // every midpoint and its neighbours
  for (int i = 0; i + 1 < 8; ++i) {
    float mid = static_cast<float>((kE2M1[i] + kE2M1[i + 1]) / 2);
    for (float x : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 10.0f)})
      EXPECT_EQ(e2m1_encode(x), e2m1_brute(x)) << x;
  }
}

TEST(E4M3, DecodeAll256) {
  for (int b = 0; b < 256; ++b) {
    float v = e4m3_decode(static_cast<uint8_t>(b));
    if ((b & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(v)) << b;
      continue;
    }
    EXPECT_EQ(static_cast<double>(v), e4m3_ref(b)) << b;
  }
  EXPECT_EQ(e4m3_decode(0x7e), 448.0f);
  EXPECT_EQ(e4m3_decode(0x38), 1.0f);
  EXPECT_EQ(e4m3_decode(0x08), 0.015625f);
  EXPECT_EQ(e4m3_decode(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(e4m3_decode(0xfe), -448.0f);
}

TEST(E4M3, EncodeRoundTripsEveryFiniteByte) {
  for (int b = 0; b < 256; ++b) {
    if ((b & 0x7f) == 0x7f) continue;
    EXPECT_EQ(e4m3_encode(e4m3_decode(static_cast<uint8_t>(b))), b) << b;  // incl. 0x80 = -0
  }
}

TEST(E4M3, MidpointsRoundToEven) {
  for (int b = 0; b < 0x7e; ++b) {
    double lo = e4m3_ref(b), hi = e4m3_ref(b + 1);
    float mid = static_cast<float>((lo + hi) / 2);  // exact in float (<= 5 mantissa bits)
    ASSERT_EQ(static_cast<double>(mid), (lo + hi) / 2);
    int even = (b % 2 == 0) ? b : b + 1;
    EXPECT_EQ(e4m3_encode(mid), even) << "midpoint after byte " << b;
    EXPECT_EQ(e4m3_encode(-mid), 0x80 | even);
    EXPECT_EQ(e4m3_encode(std::nextafter(mid, 0.0f)), b);
    EXPECT_EQ(e4m3_encode(std::nextafter(mid, 1e9f)), b + 1);
  }
}

TEST(E4M3, SaturatesAndNeverNaN) {
  for (double x = 448.0; x < 1e9; x = x * 1.01 + 1) {
    EXPECT_EQ(e4m3_encode(static_cast<float>(x)), 0x7e) << x;
    EXPECT_EQ(e4m3_encode(static_cast<float>(-x)), 0xfe) << x;
  }
  EXPECT_EQ(e4m3_encode(449.0f), 0x7e);
  EXPECT_EQ(e4m3_encode(479.0f), 0x7e) << "torch would give NaN here; we saturate";
  EXPECT_EQ(e4m3_encode(std::numeric_limits<float>::max()), 0x7e);
  EXPECT_EQ(e4m3_encode(std::numeric_limits<float>::infinity()), 0x7e);
  std::mt19937 rng(2);
  std::uniform_int_distribution<uint32_t> bits(0, 0xffffffffu);
  for (int i = 0; i < 300000; ++i) {
    uint32_t u = bits(rng);
    float x;
    std::memcpy(&x, &u, 4);
    if (!std::isfinite(x)) continue;
    uint8_t b = e4m3_encode(x);
    ASSERT_NE(b & 0x7f, 0x7f) << x;
    ASSERT_EQ(b, e4m3_brute(x)) << x;
  }
}

TEST(E4M3, MatchesBruteForceOnScaleRange) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> lg(-12.0, 9.5);
  for (int i = 0; i < 100000; ++i) {
    float x = static_cast<float>(std::pow(2.0, lg(rng)));
    ASSERT_EQ(e4m3_encode(x), e4m3_brute(x)) << x;
  }
  EXPECT_EQ(e4m3_encode(std::ldexp(1.0f, -10)), 0x00) << "2^-10 is the tie between 0 and 2^-9";
  EXPECT_EQ(e4m3_encode(std::nextafter(std::ldexp(1.0f, -10), 1.0f)), 0x01);
}

TEST(E8M0, AllBytes) {
  for (int b = 0; b < 255; ++b) {
    EXPECT_EQ(static_cast<double>(e8m0_decode(static_cast<uint8_t>(b))), std::pow(2.0, b - 127))
        << b;
  }
  EXPECT_TRUE(std::isnan(e8m0_decode(255)));
  for (int e = -127; e <= 127; ++e) EXPECT_EQ(e8m0_encode_exponent(e), e + 127);
  EXPECT_THROW(e8m0_encode_exponent(128), fp4q::Error);
  EXPECT_THROW(e8m0_encode_exponent(-128), fp4q::Error);
}

TEST(Int4, AllCodesAndRounding) {
  for (int c = 0; c < 16; ++c) {
    float v = int4_decode(static_cast<uint8_t>(c));
    EXPECT_EQ(v, c < 8 ? c : c - 16);
    EXPECT_EQ(int4_encode(v), c);
  }
  struct Case { float x; int v; };
  const Case cases[] = {{0.5f, 0}, {1.5f, 2}, {2.5f, 2}, {-0.5f, 0}, {-1.5f, -2}, {-2.5f, -2},
                        {6.5f, 6}, {7.49f, 7}, {7.5f, 7}, {100.f, 7}, {-7.5f, -8}, {-8.5f, -8},
                        {-1e30f, -8}, {0.49f, 0}, {0.51f, 1}, {-0.0f, 0}};
  for (const auto& c : cases) EXPECT_EQ(int4_decode(int4_encode(c.x)), c.v) << c.x;
}

TEST(QuantizeValue, PerFormat) {
  float d = -1;
  EXPECT_EQ(quantize_value(FormatId::kNVFP4, 0.3f, 0.1f, &d), 5);  // 3.0
  EXPECT_FLOAT_EQ(d, 0.3f);
  EXPECT_EQ(quantize_value(FormatId::kMXFP4, -0.7f, 0.25f, &d), 8 | 5);  // -2.8 -> -3
  EXPECT_EQ(d, -0.75f);
  EXPECT_EQ(quantize_value(FormatId::kINT4, -0.7f, 0.25f, &d), (-3) & 0xF);
  EXPECT_EQ(d, -0.75f);
  EXPECT_EQ(quantize_value(FormatId::kNVFP4, 100.0f, 1.0f, &d), 7);  // saturates
  EXPECT_EQ(d, 6.0f);
  for (FormatId id : {FormatId::kNVFP4, FormatId::kMXFP4, FormatId::kINT4}) {
    d = -1;
    EXPECT_EQ(quantize_value(id, 3.0f, 0.0f, &d), 0) << "zero scale";
    EXPECT_EQ(d, 0.0f);
    EXPECT_THROW(quantize_value(id, std::nanf(""), 1.0f, &d), fp4q::Error);
  }
  EXPECT_EQ(quantize_value(FormatId::kNVFP4, -0.0f, 1.0f, nullptr), 8);
}

TEST(ScaleValue, PerFormat) {
  EXPECT_EQ(scale_value(FormatId::kNVFP4, 0x7e, 2.0f), 224.0f);
  EXPECT_EQ(scale_value(FormatId::kMXFP4, 127, 1.0f), 1.0f);
  EXPECT_EQ(scale_value(FormatId::kMXFP4, 120, 1.0f), 1.0f / 128);
  EXPECT_EQ(scale_value(FormatId::kINT4, 0x3c00, 1.0f), 1.0f);
}

TEST(FormatTable, Entries) {
  ASSERT_EQ(all_formats().size(), 4u);  // + mxfp4-fit (tests/format/fit_test.cpp)
  const auto& nv = spec(FormatId::kNVFP4);
  EXPECT_STREQ(nv.name, "nvfp4");
  EXPECT_EQ(nv.group_size, 16);
  EXPECT_TRUE(nv.has_global_scale);
  EXPECT_EQ(nv.scale, ScaleType::kE4M3);
  EXPECT_DOUBLE_EQ(nv.bits_per_weight, 4.5);
  const auto& mx = spec(FormatId::kMXFP4);
  EXPECT_EQ(mx.group_size, 32);
  EXPECT_EQ(mx.scale, ScaleType::kE8M0);
  EXPECT_FALSE(mx.has_global_scale);
  EXPECT_DOUBLE_EQ(mx.bits_per_weight, 4.25);
  const auto& i4 = spec(FormatId::kINT4);
  EXPECT_EQ(i4.element, ElementType::kInt4);
  EXPECT_EQ(i4.element_max, 8.0f);
  for (const auto& f : all_formats()) EXPECT_EQ(parse_format(f.name), f.id);
  try {
    parse_format("fp8");
    FAIL();
  } catch (const fp4q::Error& e) {
    EXPECT_EQ(e.kind(), fp4q::ErrorKind::kUsage);
    EXPECT_NE(std::string(e.what()).find("nvfp4, mxfp4, int4"), std::string::npos) << e.what();
  }
  EXPECT_EQ(parse_scale_method("mse"), ScaleMethod::kMse);
  EXPECT_EQ(parse_scale_method("absmax"), ScaleMethod::kAbsmax);
  EXPECT_STREQ(scale_method_name(ScaleMethod::kMse), "mse");
  EXPECT_THROW(parse_scale_method("minmax"), fp4q::Error);
}

TEST(Mxfp4Rule, MatchesCompressedTensorsRoundToPower2) {
  // Independent double formulation: E = floor(log2 a), f = a / 2^E in [1,2);
  // e = E - 2 + (f >= 1.75).
  auto ref = [](double a) {
    int E = static_cast<int>(std::floor(std::log2(a)));
    double f = a / std::pow(2.0, E);
    if (f < 1.0) { --E; f *= 2; }
    if (f >= 2.0) { ++E; f /= 2; }
    int e = E - 2 + (f >= 1.75 ? 1 : 0);
    return std::max(-127, std::min(127, e));
  };
  EXPECT_EQ(mxfp4_absmax_exponent(1.0f), -2);
  EXPECT_EQ(mxfp4_absmax_exponent(1.7499999f), -2);
  EXPECT_EQ(mxfp4_absmax_exponent(1.75f), -1);
  EXPECT_EQ(mxfp4_absmax_exponent(6.0f), 0);
  EXPECT_EQ(mxfp4_absmax_exponent(7.0f), 1);
  EXPECT_EQ(mxfp4_absmax_exponent(1e-40f), -127);
  EXPECT_EQ(mxfp4_absmax_exponent(std::ldexp(1.0f, -126)), -127);
  std::mt19937 rng(4);
  std::uniform_real_distribution<double> lg(-120.0, 120.0);
  for (int i = 0; i < 100000; ++i) {
    float a = static_cast<float>(std::pow(2.0, lg(rng)));
    ASSERT_EQ(mxfp4_absmax_exponent(a), ref(a)) << a;
  }
}
