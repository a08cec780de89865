// gptq::column_costs (GPTQ's per-column error weights 1/U_kk^2) against a float64 textbook
// reference, with and without act-order and dead columns.
#include "fp4q/gptq/column_costs.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace {
// H = XᵀX/N + small ridge, [n x n] double, with column `dead` zeroed (dead input) when >= 0.
std::vector<double> make_h(int64_t n, uint32_t seed, int64_t dead) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  const int64_t N = 4 * n;
  std::vector<double> x(static_cast<size_t>(N * n));
  for (int64_t t = 0; t < N; ++t)
    for (int64_t i = 0; i < n; ++i) x[t * n + i] = g(rng) * (1.0 + 0.5 * (i % 7)) + (i % 3 == 0 ? x[t * n] : 0.0);
  std::vector<double> h(static_cast<size_t>(n * n), 0.0);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) h[i * n + j] += x[t * n + i] * x[t * n + j] / N;
  if (dead >= 0)
    for (int64_t i = 0; i < n; ++i) h[dead * n + i] = h[i * n + dead] = 0.0;
  return h;
}
}  // namespace

TEST(ColumnCosts, MatchesFloat64Reference) {
  for (bool ao : {false, true}) {
    for (int64_t dead : {-1, 5}) {
      const int64_t n = 48;
      const auto h = make_h(n, 3, dead);
      std::vector<float> hf(h.begin(), h.end());
      fp4q::gptq::GptqOptions o;
      o.damp = 0.01;
      o.act_order = ao;
      const auto w = fp4q::gptq::column_costs(hf.data(), n, o);
      const auto r = fp4q::gptq::column_costs_ref(h.data(), n, 0.01, ao);
      ASSERT_EQ(w.size(), static_cast<size_t>(n));
      ASSERT_EQ(r.size(), static_cast<size_t>(n));
      for (int64_t j = 0; j < n; ++j) {
        if (j == dead) {
          EXPECT_EQ(w[j], 0.0f);
          continue;
        }
        EXPECT_NEAR(w[j], r[j], 2e-3 * r[j]) << "ao " << ao << " col " << j;
        // between the Schur-complement end and the damped diagonal
        EXPECT_LE(w[j], h[j * n + j] * 1.0 + 0.02 * 10) << j;
        EXPECT_GT(w[j], 0.0f);
      }
      if (!ao) {  // the last column is processed last: its weight is its damped diagonal
        double mean = 0;
        for (int64_t i = 0; i < n; ++i) mean += i == dead ? 1.0 : h[i * n + i];
        mean /= n;
        EXPECT_NEAR(w[n - 1], h[(n - 1) * n + n - 1] + 0.01 * mean, 1e-3 * w[n - 1]);
      }
    }
  }
}
