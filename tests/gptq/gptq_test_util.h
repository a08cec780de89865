// tests/gptq/gptq_test_util.h — random problems for the GPTQ tests.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "fp4q/linalg/blas.h"

namespace fp4q::gptq_test {

inline std::vector<float> gaussian(int64_t n, std::mt19937_64& rng, float sd = 1.0f) {
  std::normal_distribution<float> nd(0.0f, sd);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = nd(rng);
  return v;
}

// Calibration-like inputs X [tokens x n]: Laplace noise, correlated through a few shared
// factors, with `outliers` channels scaled up by 8..30 (LLM activation outliers).
inline std::vector<float> laplace_inputs(int64_t tokens, int64_t n, int outliers,
                                         std::mt19937_64& rng) {
  std::exponential_distribution<float> ex(1.0f);
  std::normal_distribution<float> nd;
  const int k = 4;  // shared factors
  std::vector<float> load(static_cast<size_t>(k * n));
  for (auto& v : load) v = 0.6f * nd(rng);
  std::vector<float> scale(static_cast<size_t>(n), 1.0f);
  std::uniform_int_distribution<int64_t> pick(0, n - 1);
  std::uniform_real_distribution<float> big(8.0f, 30.0f);
  for (int o = 0; o < outliers; ++o) scale[pick(rng)] = big(rng);
  std::vector<float> x(static_cast<size_t>(tokens * n));
  std::vector<float> f(k);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int j = 0; j < k; ++j) f[j] = ex(rng) - ex(rng);
    for (int64_t i = 0; i < n; ++i) {
      float v = ex(rng) - ex(rng);
      for (int j = 0; j < k; ++j) v += f[j] * load[j * n + i];
      x[t * n + i] = v * scale[i];
    }
  }
  return x;
}

// H = 2/N · XᵀX, full symmetric [n x n], N = samples.
inline std::vector<float> hessian_of(const std::vector<float>& x, int64_t tokens, int64_t n,
                                     int64_t samples) {
  std::vector<float> h(static_cast<size_t>(n * n), 0.0f);
  linalg::syrk_xtx_lower(n, tokens, 2.0f / static_cast<float>(samples), x.data(), n, 0.0f,
                         h.data(), n);
  linalg::mirror_lower_to_upper(h.data(), n, n);
  return h;
}

// Random unit vector of length n.
inline std::vector<double> unit_vector(int64_t n, std::mt19937_64& rng) {
  std::normal_distribution<double> nd;
  std::vector<double> v(static_cast<size_t>(n));
  double s = 0;
  for (auto& x : v) {
    x = nd(rng);
    s += x * x;
  }
  for (auto& x : v) x /= std::sqrt(s);
  return v;
}

// H = I - c·v·vᵀ (eigenvalues 1 and 1 - c), float [n x n].
inline std::vector<float> identity_minus_rank1(int64_t n, double c, std::mt19937_64& rng) {
  const auto v = unit_vector(n, rng);
  std::vector<float> h(static_cast<size_t>(n * n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      h[i * n + j] = static_cast<float>((i == j ? 1.0 : 0.0) - c * v[i] * v[j]);
  return h;
}

}  // namespace fp4q::gptq_test
