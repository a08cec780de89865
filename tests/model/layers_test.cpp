// Fast layer kernels vs their scalar double-precision twins, RoPE frequencies vs closed forms.
#include <gtest/gtest.h>

#include <cmath>

#include "fp4q/core/parallel.h"
#include "fp4q/model/layers.h"
#include "test_util.h"

namespace fp4q::model {
namespace {

using testing::compare;
using testing::random_vec;

struct AttnCase {
  int64_t T;
  int heads, kv_heads, head_dim;
};

class AttentionTest : public ::testing::TestWithParam<AttnCase> {};

TEST_P(AttentionTest, FastMatchesNaiveReference) {
  const AttnCase c = GetParam();
  const int64_t qd = int64_t{c.heads} * c.head_dim, kvd = int64_t{c.kv_heads} * c.head_dim;
  auto q = random_vec(c.T * qd, 1 + c.T, 1.0f);
  auto k = random_vec(c.T * kvd, 2 + c.T, 1.0f);
  auto v = random_vec(c.T * kvd, 3 + c.T, 1.0f);
  std::vector<float> out(c.T * qd, NAN), ref(c.T * qd, NAN);
  attention(q.data(), k.data(), v.data(), c.T, c.heads, c.kv_heads, c.head_dim, out.data());
  attention_ref(q.data(), k.data(), v.data(), c.T, c.heads, c.kv_heads, c.head_dim, ref.data());
  auto d = compare(out, ref, out.size());
  EXPECT_LE(d.worst_scaled, 2e-6) << "max abs " << d.max_abs;
  for (float x : out) ASSERT_TRUE(std::isfinite(x));
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest,
                         ::testing::Values(AttnCase{1, 2, 2, 8}, AttnCase{5, 4, 2, 16},
                                           AttnCase{63, 4, 1, 16}, AttnCase{64, 4, 4, 8},
                                           AttnCase{65, 8, 2, 16}, AttnCase{200, 6, 3, 32},
                                           AttnCase{300, 2, 1, 64}));

TEST(Attention, NaiveReferenceBasics) {
  // T = 1: softmax over one key -> out = v (of the shared KV head).
  const int heads = 4, kvh = 2, hd = 4;
  auto q = random_vec(heads * hd, 7), k = random_vec(kvh * hd, 8), v = random_vec(kvh * hd, 9);
  std::vector<float> out(heads * hd);
  attention_ref(q.data(), k.data(), v.data(), 1, heads, kvh, hd, out.data());
  for (int h = 0; h < heads; ++h)
    for (int e = 0; e < hd; ++e) EXPECT_FLOAT_EQ(out[h * hd + e], v[(h / 2) * hd + e]);
  // Two equal keys at positions 0, 1 -> position 1 averages the two values.
  std::vector<float> q2(2 * hd, 0.3f), k2(2 * hd, 0.5f), v2 = random_vec(2 * hd, 10), o2(2 * hd);
  attention_ref(q2.data(), k2.data(), v2.data(), 2, 1, 1, hd, o2.data());
  for (int e = 0; e < hd; ++e) EXPECT_NEAR(o2[hd + e], 0.5 * (v2[e] + v2[hd + e]), 1e-6);
  // Causality of the fast kernel: changing the last token changes no earlier output.
  const int64_t T = 70;
  auto qa = random_vec(T * heads * hd, 11), ka = random_vec(T * kvh * hd, 12),
       va = random_vec(T * kvh * hd, 13);
  std::vector<float> oa(T * heads * hd), ob(T * heads * hd);
  attention(qa.data(), ka.data(), va.data(), T, heads, kvh, hd, oa.data());
  for (int e = 0; e < kvh * hd; ++e) {
    ka[(T - 1) * kvh * hd + e] += 1.0f;
    va[(T - 1) * kvh * hd + e] -= 2.0f;
  }
  attention(qa.data(), ka.data(), va.data(), T, heads, kvh, hd, ob.data());
  for (int64_t i = 0; i < (T - 1) * heads * hd; ++i) ASSERT_EQ(oa[i], ob[i]) << i;
  bool last_changed = false;
  for (int64_t i = (T - 1) * heads * hd; i < T * heads * hd; ++i) last_changed |= oa[i] != ob[i];
  EXPECT_TRUE(last_changed);
}

TEST(Attention, ThreadCountIndependent) {
  const int64_t T = 257;
  const int heads = 8, kvh = 2, hd = 16;
  auto q = random_vec(T * heads * hd, 21), k = random_vec(T * kvh * hd, 22),
       v = random_vec(T * kvh * hd, 23);
  std::vector<float> a(T * heads * hd), b(T * heads * hd);
  const int before = num_threads();
  set_num_threads(1);
  attention(q.data(), k.data(), v.data(), T, heads, kvh, hd, a.data());
  set_num_threads(3);
  attention(q.data(), k.data(), v.data(), T, heads, kvh, hd, b.data());
  set_num_threads(before);
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4));
}

TEST(Linear, MatchesReferenceWithAndWithoutBias) {
  const int64_t T = 37, in = 70, out = 45;
  auto x = random_vec(T * in, 31), W = random_vec(out * in, 32, 0.1f), b = random_vec(out, 33);
  for (const float* bias : {static_cast<const float*>(nullptr), static_cast<const float*>(b.data())}) {
    std::vector<float> y(T * out), r(T * out);
    linear(x.data(), T, in, W.data(), out, bias, y.data());
    linear_ref(x.data(), T, in, W.data(), out, bias, r.data());
    EXPECT_LE(compare(y, r, y.size()).worst_scaled, 2e-6);
  }
}

TEST(Linear, ThreadCountIndependentAcrossBlocks) {
  const int64_t T = 600, in = 300, out = 1100;  // 3 x 3 output blocks
  auto x = random_vec(T * in, 34), W = random_vec(out * in, 35, 0.05f), b = random_vec(out, 36);
  std::vector<float> y1(T * out), y3(T * out), r(T * out);
  const int before = num_threads();
  set_num_threads(1);
  linear(x.data(), T, in, W.data(), out, b.data(), y1.data());
  set_num_threads(3);
  linear(x.data(), T, in, W.data(), out, b.data(), y3.data());
  set_num_threads(before);
  EXPECT_EQ(0, std::memcmp(y1.data(), y3.data(), y1.size() * 4));
  linear_ref(x.data(), T, in, W.data(), out, b.data(), r.data());
  EXPECT_LE(compare(y3, r, r.size()).worst_scaled, 5e-6);
}

TEST(RmsNorm, MatchesReferenceAndFormula) {
  const int64_t rows = 9, n = 64;
  auto x = random_vec(rows * n, 41, 3.0f), w = random_vec(n, 42);
  std::vector<float> y(rows * n), r(rows * n);
  rms_norm(x.data(), rows, n, n, w.data(), 1e-5, y.data());
  rms_norm_ref(x.data(), rows, n, n, w.data(), 1e-5, r.data());
  EXPECT_LE(compare(y, r, y.size()).worst_scaled, 1e-6);
  // Formula spot check: a constant row c with unit weights -> c / sqrt(c^2 + eps).
  std::vector<float> cx(n, 2.0f), one(n, 1.0f), cy(n);
  rms_norm(cx.data(), 1, n, n, one.data(), 1e-5, cy.data());
  EXPECT_NEAR(cy[5], 2.0 / std::sqrt(4.0 + 1e-5), 1e-7);
  // In place with a row stride larger than n: other columns untouched.
  std::vector<float> z = x;
  rms_norm(z.data(), rows / 2, n / 2, n, w.data(), 1e-5, z.data());
  std::vector<float> zr = x;
  rms_norm_ref(zr.data(), rows / 2, n / 2, n, w.data(), 1e-5, zr.data());
  EXPECT_LE(compare(z, zr, z.size()).worst_scaled, 1e-6);
  EXPECT_EQ(z[n / 2], x[n / 2]);
}

ModelConfig llama31_rope() {
  ModelConfig c;
  c.head_dim = 128;
  c.rope_theta = 500000.0;
  c.rope_type = RopeType::kLlama3;
  c.rope_factor = 8.0;
  c.rope_low_freq_factor = 1.0;
  c.rope_high_freq_factor = 4.0;
  c.rope_original_max_pos = 8192;
  return c;
}

TEST(Rope, DefaultFrequenciesVsDoubleFormula) {
  ModelConfig c;
  c.head_dim = 128;
  c.rope_theta = 1e6;
  auto f = rope_inv_freq(c);
  ASSERT_EQ(f.size(), 64u);
  for (int i = 0; i < 64; ++i) {
    double exact = std::pow(1e6, -2.0 * i / 128.0);  // independent closed form
    EXPECT_NEAR(f[i], exact, 4e-7 * exact) << i;
  }
}

TEST(Rope, Llama3FrequenciesVsDoubleFormula) {
  ModelConfig c = llama31_rope();
  auto f = rope_inv_freq(c);
  auto ref = rope_inv_freq_ref(c);
  ASSERT_EQ(f.size(), 64u);
  int high = 0, low = 0, mid = 0;
  for (int i = 0; i < 64; ++i) {
    // Independent restatement of Llama 3.1's apply_scaling (meta-llama reference code).
    const double base = 1.0 / std::pow(500000.0, (2.0 * i) / 128.0);
    const double wavelen = 2 * M_PI / base;
    double want;
    if (wavelen < 8192.0 / 4.0) {
      want = base;
      ++high;
    } else if (wavelen > 8192.0 / 1.0) {
      want = base / 8.0;
      ++low;
    } else {
      const double smooth = (8192.0 / wavelen - 1.0) / (4.0 - 1.0);
      want = (1 - smooth) * base / 8.0 + smooth * base;
      ++mid;
    }
    EXPECT_NEAR(ref[i], want, 1e-12 * want) << i;
    EXPECT_NEAR(f[i], want, 1e-6 * want) << i;  // float32 emulation of transformers
  }
  EXPECT_GT(high, 0);
  EXPECT_GT(low, 0);
  EXPECT_GT(mid, 0);
  EXPECT_EQ(f[0], 1.0f);
  EXPECT_NEAR(f[63], std::pow(500000.0, -126.0 / 128.0) / 8.0, 1e-6 * f[63]);
}

TEST(Rope, Llama3MatchesTransformersInvFreq) {
  auto g = testing::read_json(testing::tiny_dir() + "/llama3_tiny/golden.json");
  ModelConfig c;
  c.head_dim = 16;
  c.rope_theta = 10000.0;
  c.rope_type = RopeType::kLlama3;
  c.rope_factor = 8.0;
  c.rope_low_freq_factor = 1.0;
  c.rope_high_freq_factor = 4.0;
  c.rope_original_max_pos = 64;
  auto f = rope_inv_freq(c);
  auto hf = g.at("inv_freq").get<std::vector<double>>();
  ASSERT_EQ(f.size(), hf.size());
  for (size_t i = 0; i < f.size(); ++i) EXPECT_NEAR(f[i], hf[i], 2.5e-7 * hf[i]) << i;
  // The tiny config exercises all three regimes: i=0 unscaled, i=1,2 smoothed, i>=3 divided by 8.
  auto d = rope_inv_freq_ref(c);
  EXPECT_NEAR(d[0], 1.0, 1e-15);
  EXPECT_NEAR(d[7], std::pow(10000.0, -14.0 / 16.0) / 8.0, 1e-15);
  EXPECT_GT(d[1], std::pow(10000.0, -2.0 / 16.0) / 8.0);
  EXPECT_LT(d[1], std::pow(10000.0, -2.0 / 16.0));
}

TEST(Rope, ApplyMatchesReferenceAndRotates) {
  ModelConfig c = llama31_rope();
  c.head_dim = 32;
  const int64_t T = 256;
  const int heads = 3;
  const int64_t ld = heads * 32 + 5;  // padded rows
  auto x = random_vec(T * ld, 51);
  std::vector<float> a = x, b = x;
  auto tab = make_rope_table(rope_inv_freq(c), T);
  apply_rope(a.data(), T, heads, 32, ld, tab);
  apply_rope_ref(b.data(), T, heads, 32, ld, rope_inv_freq_ref(c));
  // Angle t*inv_freq is rounded to float32 in the fast path (as in transformers): <= ~2e-5 rad here.
  EXPECT_LE(compare(a, b, a.size()).worst_scaled, 5e-5);
  // Position 0 is the identity; rotation preserves each pair's norm; padding untouched.
  for (int j = 0; j < heads * 32; ++j) EXPECT_EQ(a[j], x[j]);
  for (int64_t t = 0; t < T; ++t) {
    for (int i = 0; i < 16; ++i) {
      const double n0 = std::hypot(x[t * ld + i], x[t * ld + i + 16]);
      const double n1 = std::hypot(a[t * ld + i], a[t * ld + i + 16]);
      ASSERT_NEAR(n0, n1, 1e-5 * (1 + n0));
    }
    for (int64_t j = heads * 32; j < ld; ++j) ASSERT_EQ(a[t * ld + j], x[t * ld + j]);
  }
  // rotate_half convention: pair (0, 16) at position 1 rotates by inv_freq[0] = 1 rad.
  std::vector<float> y(2 * 32, 0.0f);
  y[32 + 0] = 1.0f;  // position 1, x[0] = 1, x[16] = 0
  apply_rope(y.data(), 2, 1, 32, 32, tab);
  EXPECT_NEAR(y[32 + 0], std::cos(1.0), 1e-7);
  EXPECT_NEAR(y[32 + 16], std::sin(1.0), 1e-7);
}

TEST(Swiglu, Formula) {
  std::vector<float> g = {-3.0f, -0.5f, 0.0f, 0.7f, 4.0f}, u = {1.0f, 2.0f, 3.0f, -1.0f, 0.5f};
  std::vector<float> g0 = g;
  swiglu(g.data(), u.data(), 5);
  for (int i = 0; i < 5; ++i) {
    double s = g0[i] / (1.0 + std::exp(-static_cast<double>(g0[i])));
    EXPECT_NEAR(g[i], s * u[i], 1e-6 * (1 + std::fabs(s * u[i])));
  }
}

}  // namespace
}  // namespace fp4q::model
