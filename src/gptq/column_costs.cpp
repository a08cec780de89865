// src/gptq/column_costs.cpp — GPTQ's per-column error weights (see fp4q/gptq/column_costs.h).
#include "fp4q/gptq/column_costs.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "fp4q/linalg/cholesky.h"

namespace fp4q::gptq {

namespace {
// Dead columns, permutation and mean diagonal exactly as gptq_solve.
void setup(const float* h, int64_t n, bool act_order, std::vector<char>* dead, std::vector<int64_t>* perm,
           double* mean_diag) {
  dead->assign(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < n; ++i) (*dead)[i] = h[i * n + i] == 0.0f;
  if (act_order) {
    *perm = act_order_permutation(h, n);
  } else {
    perm->resize(static_cast<size_t>(n));
    std::iota(perm->begin(), perm->end(), int64_t{0});
  }
  double m = 0.0;
  for (int64_t i = 0; i < n; ++i) m += (*dead)[i] ? 1.0 : static_cast<double>(h[i * n + i]);
  *mean_diag = m / std::max<int64_t>(n, 1);
}
}  // namespace

std::vector<float> column_costs(const float* h, int64_t n, const GptqOptions& opt) {
  std::vector<char> dead;
  std::vector<int64_t> perm;
  double mean_diag = 0.0;
  setup(h, n, opt.act_order, &dead, &perm, &mean_diag);
  std::vector<float> u(static_cast<size_t>(n * n));
  double lambda = opt.damp;
  for (int t = 0; t < opt.max_damp_tries; ++t, lambda *= 10.0) {
    const float add = static_cast<float>(lambda * mean_diag);
    for (int64_t i = 0; i < n; ++i) {  // upper triangle of P H Pᵀ (dead rows/cols -> identity)
      const int64_t a = perm[i];
      for (int64_t j = i; j < n; ++j) {
        const int64_t b = perm[j];
        const int64_t r = std::max(a, b), c = std::min(a, b);  // lower triangle of h
        u[i * n + j] = (dead[a] || dead[b]) ? 0.0f : h[r * n + c];
      }
      u[i * n + i] = (dead[a] ? 1.0f : u[i * n + i]) + add;
    }
    if (linalg::inverse_upper_cholesky(u.data(), n) == 0) {
      std::vector<float> w(static_cast<size_t>(n), 0.0f);
      bool finite = true;
      for (int64_t k = 0; k < n; ++k) {
        const double d = u[k * n + k];
        if (!std::isfinite(d) || d == 0.0) finite = false;
        if (!dead[perm[k]]) w[perm[k]] = static_cast<float>(1.0 / (d * d));
      }
      if (finite) return w;
    }
  }
  std::vector<float> w(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) w[i] = dead[i] ? 0.0f : h[i * n + i];
  return w;
}

std::vector<double> column_costs_ref(const double* h, int64_t n, double damp, bool act_order) {
  std::vector<float> hf(h, h + n * n);
  std::vector<char> dead;
  std::vector<int64_t> perm;
  double mean_diag = 0.0;
  setup(hf.data(), n, act_order, &dead, &perm, &mean_diag);
  std::vector<double> a(static_cast<size_t>(n * n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      const int64_t p = perm[i], q = perm[j];
      a[i * n + j] = (dead[p] || dead[q]) ? (i == j ? 1.0 : 0.0) : h[p * n + q];
      if (i == j) a[i * n + j] += damp * mean_diag;
    }
  if (linalg::inverse_upper_cholesky_ref(a.data(), n) != 0) return {};
  std::vector<double> w(static_cast<size_t>(n), 0.0);
  for (int64_t k = 0; k < n; ++k)
    if (!dead[perm[k]]) w[perm[k]] = 1.0 / (a[k * n + k] * a[k * n + k]);
  return w;
}

}  // namespace fp4q::gptq
