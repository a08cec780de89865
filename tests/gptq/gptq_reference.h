// tests/gptq/gptq_reference.h — textbook float64 GPTQ for tests, written for clarity.
//
// Same semantics as gptq::gptq_solve (static scales of the ORIGINAL group, static act-order by
// descending diag(H), stable; dead inputs diag(H) == 0 -> H row/col 0, H[i,i] = 1, W[:, i] = 0;
// damping λ·mean(diag H) after the dead fix), but: no lazy batching (every column updates the
// whole rest of the row at once), and the factor comes from an explicit inverse in double:
// Hinv = H⁻¹ (Eigen LLT solve), U = upper Cholesky factor of Hinv (Hinv = UᵀU).
//
// Guided mode: given the fast solver's codes, whenever the reference would pick a different
// code it checks that the reference value sits within `margin` of the decision boundary between
// the two codes (a float32-vs-float64 near-tie), records the distance, and then FOLLOWS the
// fast code so that the histories stay identical (no cascades). That isolates genuine
// disagreements: any mismatch far from a boundary is a bug.
#pragma once

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "fp4q/format/format.h"

namespace fp4q::gptq_test {

struct RefGptq {
  std::vector<uint8_t> codes;   // [rows x cols], original order
  std::vector<double> w_hat;    // dequantized [rows x cols], original order
  int64_t mismatches = 0;       // codes where the reference disagreed with the guide
  double max_tie_distance = 0;  // max |x/s - boundary| over the mismatches (element units)
  int64_t far_mismatches = 0;   // mismatches that are NOT adjacent codes / not near a boundary
};

// Sorted distinct element values of the format (E2M1 ±{0..6}, INT4 -8..7).
inline std::vector<double> element_grid(format::FormatId id) {
  std::vector<double> v;
  for (int c = 0; c < 16; ++c) v.push_back(format::element_decode(id, static_cast<uint8_t>(c)));
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return v;
}

// Distance of y (element units) from the decision boundary between the values a and b, or +inf
// when a and b are not neighbours on the grid. Equal values (E2M1 ±0) -> |y| (sign boundary).
inline double tie_distance(const std::vector<double>& grid, double y, double a, double b) {
  if (a == b) return std::fabs(y);
  const double lo = std::min(a, b), hi = std::max(a, b);
  for (double g : grid)
    if (g > lo && g < hi) return std::numeric_limits<double>::infinity();
  return std::fabs(y - 0.5 * (lo + hi));
}

inline std::vector<int64_t> ref_act_order(const std::vector<float>& h, int64_t n) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), int64_t{0});
  std::stable_sort(p.begin(), p.end(), [&](int64_t a, int64_t b) {
    return static_cast<double>(h[a * n + a]) > static_cast<double>(h[b * n + b]);
  });
  return p;
}

// w [rows x cols], h [cols x cols] (lower triangle used), lambda = relative damping to use.
// guide: fast codes [rows x cols] or nullptr; tie_tol: max allowed tie distance.
inline RefGptq gptq_reference(const std::vector<float>& w, int64_t rows, int64_t cols,
                              const std::vector<float>& h, const format::GroupScales& scales,
                              double lambda, bool act_order, const uint8_t* guide = nullptr,
                              double tie_tol = 1e-4) {
  using Mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const int64_t n = cols;
  const int gsz = format::spec(scales.format).group_size;
  const int64_t groups = cols / gsz;
  const auto grid = element_grid(scales.format);

  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), int64_t{0});
  if (act_order) perm = ref_act_order(h, n);
  std::vector<bool> dead(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) dead[i] = (h[i * n + i] == 0.0f);

  // Full symmetric H from the lower triangle, dead fix, damping, permutation.
  Mat H(n, n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double v = (i >= j) ? h[i * n + j] : h[j * n + i];
      if (dead[i] || dead[j]) v = (i == j) ? 1.0 : 0.0;
      H(i, j) = v;
    }
  double mean = 0;
  for (int64_t i = 0; i < n; ++i) mean += H(i, i);
  mean /= n;
  for (int64_t i = 0; i < n; ++i) H(i, i) += lambda * mean;
  Mat Hp(n, n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) Hp(i, j) = H(perm[i], perm[j]);
  Mat Hinv = Hp.llt().solve(Mat::Identity(n, n));
  Hinv = 0.5 * (Hinv + Hinv.transpose());
  Mat U = Hinv.llt().matrixU();  // Hinv = Uᵀ U

  RefGptq out;
  out.codes.assign(static_cast<size_t>(rows * cols), 0);
  out.w_hat.assign(static_cast<size_t>(rows * cols), 0.0);
  std::vector<double> row(static_cast<size_t>(n));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < n; ++j) row[j] = dead[perm[j]] ? 0.0 : w[r * cols + perm[j]];
    for (int64_t j = 0; j < n; ++j) {
      const int64_t col = perm[j];
      const float s = scales.values[r * groups + col / gsz];
      const double x = row[j];
      float qf = 0.0f;
      uint8_t code = format::quantize_value(scales.format, static_cast<float>(x), s, &qf);
      double q = qf;
      if (guide && guide[r * cols + col] != code) {
        const uint8_t gc = guide[r * cols + col];
        const double y = s > 0 ? x / s : 0.0;
        const double d = tie_distance(grid, y, format::element_decode(scales.format, code),
                                      format::element_decode(scales.format, gc));
        ++out.mismatches;
        if (!(d <= tie_tol)) ++out.far_mismatches;
        out.max_tie_distance = std::max(out.max_tie_distance, d);
        code = gc;  // follow the fast path
        q = static_cast<double>(format::element_decode(scales.format, gc)) * s;
      }
      out.codes[r * cols + col] = code;
      out.w_hat[r * cols + col] = q;
      const double e = (x - q) / U(j, j);
      for (int64_t k = j + 1; k < n; ++k) row[k] -= e * U(j, k);
    }
  }
  return out;
}

}  // namespace fp4q::gptq_test
