// HessianAccumulator tests: float64 naive 2/N·XᵀX, batch-split independence, merge,
// save/load round trip, errors, thread-count independence.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "fp4q/core/error.h"
#include "fp4q/core/parallel.h"
#include "fp4q/gptq/hessian.h"
#include "gptq_test_util.h"

using namespace fp4q;

namespace {

double max_rel_diff(const std::vector<float>& a, const std::vector<double>& b) {
  double m = 0, d = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    m = std::max(m, std::fabs(b[i]));
    d = std::max(d, std::fabs(a[i] - b[i]));
  }
  return d / m;
}

struct Data {
  int64_t n = 96;
  std::vector<int64_t> tokens{50, 130, 7, 200};
  std::vector<int64_t> samples{1, 2, 1, 3};
  std::vector<std::vector<float>> x;
  Data() {
    std::mt19937_64 rng(21);
    for (int64_t t : tokens) x.push_back(gptq_test::laplace_inputs(t, n, 2, rng));
  }
};

}  // namespace

TEST(Hessian, MatchesFloat64NaiveAndIsSymmetric) {
  Data d;
  gptq::HessianAccumulator acc(d.n, "layer");
  std::vector<const float*> ptrs;
  int64_t total = 0;
  for (size_t b = 0; b < d.x.size(); ++b) {
    acc.add_batch(d.x[b].data(), d.tokens[b], d.samples[b]);
    ptrs.push_back(d.x[b].data());
    total += d.samples[b];
  }
  EXPECT_EQ(acc.samples(), total);
  EXPECT_EQ(acc.tokens(), 50 + 130 + 7 + 200);
  const auto h = acc.hessian();
  const auto ref = gptq::hessian_ref(ptrs, d.tokens, d.n, total);
  EXPECT_LT(max_rel_diff(h, ref), 2e-6);
  for (int64_t i = 0; i < d.n; ++i)
    for (int64_t j = 0; j < d.n; ++j) ASSERT_EQ(h[i * d.n + j], h[j * d.n + i]);
  // The scale is 2/N with N = samples (not tokens): H of one sample, counted as 2 samples, halves.
  gptq::HessianAccumulator one(d.n), two(d.n);
  one.add_batch(d.x[0].data(), d.tokens[0], 1);
  two.add_batch(d.x[0].data(), d.tokens[0], 2);
  const auto h1 = one.hessian(), h2 = two.hessian();
  for (size_t i = 0; i < h1.size(); ++i) ASSERT_FLOAT_EQ(h2[i], 0.5f * h1[i]);
}

TEST(Hessian, IndependentOfBatchSplit) {
  Data d;
  std::vector<float> all;
  int64_t tok = 0, smp = 0;
  for (size_t b = 0; b < d.x.size(); ++b) {
    all.insert(all.end(), d.x[b].begin(), d.x[b].end());
    tok += d.tokens[b];
    smp += d.samples[b];
  }
  gptq::HessianAccumulator whole(d.n), split(d.n), fine(d.n);
  whole.add_batch(all.data(), tok, smp);
  for (size_t b = 0; b < d.x.size(); ++b) split.add_batch(d.x[b].data(), d.tokens[b], d.samples[b]);
  // A different split with the same samples: x0 | x1[:65] | x1[65:] | x2 + x3.
  fine.add_batch(d.x[0].data(), d.tokens[0], 1);
  fine.add_batch(d.x[1].data(), 65, 1);
  fine.add_batch(d.x[1].data() + 65 * d.n, d.tokens[1] - 65, 1);
  std::vector<float> x23(d.x[2]);
  x23.insert(x23.end(), d.x[3].begin(), d.x[3].end());
  fine.add_batch(x23.data(), d.tokens[2] + d.tokens[3], 4);
  const auto hw = whole.hessian();
  const std::vector<double> hwd(hw.begin(), hw.end());
  EXPECT_LT(max_rel_diff(split.hessian(), hwd), 2e-6);
  EXPECT_LT(max_rel_diff(fine.hessian(), hwd), 2e-6);
  EXPECT_EQ(fine.samples(), smp);
}

TEST(Hessian, MergeEqualsAccumulatingEverything) {
  Data d;
  gptq::HessianAccumulator a(d.n), b(d.n), all(d.n);
  for (size_t k = 0; k < d.x.size(); ++k) {
    (k < 2 ? a : b).add_batch(d.x[k].data(), d.tokens[k], d.samples[k]);
    all.add_batch(d.x[k].data(), d.tokens[k], d.samples[k]);
  }
  a.merge(b);
  EXPECT_EQ(a.samples(), all.samples());
  const auto ha = all.hessian();
  EXPECT_LT(max_rel_diff(a.hessian(), std::vector<double>(ha.begin(), ha.end())), 2e-6);
  gptq::HessianAccumulator empty(d.n);
  const auto before = a.hessian();
  a.merge(empty);
  EXPECT_EQ(a.hessian(), before);
  gptq::HessianAccumulator other(d.n + 1);
  EXPECT_THROW(a.merge(other), Error);
}

TEST(Hessian, SaveLoadRoundTrip) {
  Data d;
  gptq::HessianAccumulator a(d.n);
  a.add_batch(d.x[0].data(), d.tokens[0], d.samples[0]);
  a.add_batch(d.x[1].data(), d.tokens[1], d.samples[1]);
  const auto v = a.to_vector();
  auto b = gptq::HessianAccumulator::from_vector(v, d.n, a.samples(), "file.safetensors");
  EXPECT_EQ(b.samples(), a.samples());
  EXPECT_EQ(b.hessian(), v);
  // Continuing after a load is bit-identical to continuing the original.
  a.add_batch(d.x[2].data(), d.tokens[2], d.samples[2]);
  b.add_batch(d.x[2].data(), d.tokens[2], d.samples[2]);
  EXPECT_EQ(a.hessian(), b.hessian());
  // Bad inputs.
  EXPECT_THROW(gptq::HessianAccumulator::from_vector(v, d.n + 1, 3), Error);
  auto bad = v;
  bad[5] = NAN;  // row 0, col 5: upper triangle, ignored
  EXPECT_NO_THROW(gptq::HessianAccumulator::from_vector(bad, d.n, 3));
  bad[5 * d.n] = NAN;  // lower triangle
  try {
    gptq::HessianAccumulator::from_vector(bad, d.n, 3, "h.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNumeric);
    EXPECT_EQ(e.where(), "h.safetensors");
  }
}

TEST(Hessian, RejectsNonFiniteInputsAndBadCounts) {
  Data d;
  gptq::HessianAccumulator a(d.n, "model.layers.0.self_attn.q_proj");
  auto x = d.x[0];
  x[3 * d.n + 4] = INFINITY;
  try {
    a.add_batch(x.data(), d.tokens[0], 1);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNumeric);
    EXPECT_EQ(e.where(), "model.layers.0.self_attn.q_proj");
  }
  EXPECT_EQ(a.samples(), 0);
  EXPECT_THROW(a.add_batch(d.x[0].data(), d.tokens[0], 0), Error);
}

TEST(Hessian, BitIdenticalFor1And2Threads) {
  const int saved = fp4q::num_threads();
  std::mt19937_64 rng(8);
  const int64_t n = 1100, tokens = 700;
  const auto x = gptq_test::laplace_inputs(tokens, n, 3, rng);
  std::vector<float> h[2];
  for (int t = 1; t <= 2; ++t) {
    fp4q::set_num_threads(t);
    gptq::HessianAccumulator a(n);
    a.add_batch(x.data(), 300, 1);
    a.add_batch(x.data() + 300 * n, tokens - 300, 2);
    h[t - 1] = a.hessian();
  }
  fp4q::set_num_threads(saved);
  EXPECT_TRUE(h[0] == h[1]);
}
