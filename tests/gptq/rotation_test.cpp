// Rotation tests: W·B and Bᵀ·H·B against explicit float64 products, output invariance
// (X·B)(W·B)ᵀ = X·Wᵀ, and the MR-GPTQ error statistics computed in the rotated domain equal
// the proxy loss computed in the original domain.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "fp4q/core/error.h"
#include "fp4q/format/format.h"
#include "fp4q/gptq/gptq.h"
#include "fp4q/transform/hadamard.h"
#include "gptq_test_util.h"

using namespace fp4q;

namespace {

// Explicit block-diagonal B [n x n] in double.
std::vector<double> block_hadamard(int64_t n, int b) {
  const auto hb = transform::hadamard_matrix(b);
  std::vector<double> B(static_cast<size_t>(n * n), 0.0);
  for (int64_t k = 0; k < n; k += b)
    for (int i = 0; i < b; ++i)
      for (int j = 0; j < b; ++j) B[(k + i) * n + k + j] = hb[i * b + j];
  return B;
}

std::vector<double> matmul(const std::vector<double>& a, const std::vector<double>& b, int64_t m,
                           int64_t k, int64_t n) {
  std::vector<double> c(static_cast<size_t>(m * n), 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t p = 0; p < k; ++p)
      for (int64_t j = 0; j < n; ++j) c[i * n + j] += a[i * k + p] * b[p * n + j];
  return c;
}

std::vector<double> transpose(const std::vector<double>& a, int64_t m, int64_t n) {
  std::vector<double> t(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) t[j * m + i] = a[i * n + j];
  return t;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

}  // namespace

TEST(Rotation, WeightAndHessianMatchExplicitProducts) {
  std::mt19937_64 rng(3);
  const int64_t rows = 24, n = 128, tokens = 300;
  for (int b : {2, 16, 32, 128}) {
    auto w = gptq_test::gaussian(rows * n, rng);
    const auto x = gptq_test::laplace_inputs(tokens, n, 2, rng);
    auto h = gptq_test::hessian_of(x, tokens, n, 3);
    const auto B = block_hadamard(n, b);
    const std::vector<double> wd(w.begin(), w.end()), hd(h.begin(), h.end());
    const auto wb = matmul(wd, B, rows, n, n);
    const auto bhb = matmul(matmul(transpose(B, n, n), hd, n, n, n), B, n, n, n);
    gptq::rotate_weight(w.data(), rows, n, b);
    gptq::rotate_hessian(h.data(), n, b);
    std::vector<double> dw(wb.size()), dh(bhb.size());
    for (size_t i = 0; i < wb.size(); ++i) dw[i] = w[i] - wb[i];
    for (size_t i = 0; i < bhb.size(); ++i) dh[i] = h[i] - bhb[i];
    EXPECT_LT(max_abs(dw), 1e-5 * max_abs(wb)) << b;
    EXPECT_LT(max_abs(dh), 1e-5 * max_abs(bhb)) << b;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) ASSERT_EQ(h[i * n + j], h[j * n + i]);
  }
  // Block 0 / 1 are no-ops; a non-power-of-two block is rejected.
  auto w = gptq_test::gaussian(4 * 64, rng);
  const auto w0 = w;
  gptq::rotate_weight(w.data(), 4, 64, 0);
  gptq::rotate_weight(w.data(), 4, 64, 1);
  EXPECT_EQ(w, w0);
  EXPECT_THROW(gptq::rotate_weight(w.data(), 4, 64, 24), Error);
}

TEST(Rotation, OutputsAndProxyLossAreRotationInvariant) {
  std::mt19937_64 rng(4);
  const int64_t rows = 64, n = 256, tokens = 512, samples = 8;
  const int b = 16;
  const auto w = gptq_test::gaussian(rows * n, rng, 0.02f);
  const auto x = gptq_test::laplace_inputs(tokens, n, 3, rng);
  const auto h = gptq_test::hessian_of(x, tokens, n, samples);

  // (X·B)(W·B)ᵀ = X·Wᵀ.
  auto xr = x;
  auto wr = w;
  transform::hadamard_rows(xr.data(), tokens, n, b);
  gptq::rotate_weight(wr.data(), rows, n, b);
  double max_y = 0, max_d = 0;
  for (int64_t t = 0; t < tokens; t += 7)
    for (int64_t r = 0; r < rows; ++r) {
      double y = 0, yr = 0;
      for (int64_t i = 0; i < n; ++i) {
        y += double(x[t * n + i]) * w[r * n + i];
        yr += double(xr[t * n + i]) * wr[r * n + i];
      }
      max_y = std::max(max_y, std::fabs(y));
      max_d = std::max(max_d, std::fabs(y - yr));
    }
  EXPECT_LT(max_d, 1e-5 * max_y);

  // The Hessian of the rotated inputs equals the rotated Hessian.
  const auto h_from_xr = gptq_test::hessian_of(xr, tokens, n, samples);
  auto hr = h;
  gptq::rotate_hessian(hr.data(), n, b);
  double mh = 0, dh = 0;
  for (size_t i = 0; i < hr.size(); ++i) {
    mh = std::max(mh, double(std::fabs(hr[i])));
    dh = std::max(dh, double(std::fabs(hr[i] - h_from_xr[i])));
  }
  EXPECT_LT(dh, 1e-5 * mh);

  // MR-GPTQ in the rotated domain; its statistics equal the original-domain proxy loss of the
  // unrotated dequantized weight Ŵ·Bᵀ (B symmetric and self-inverse: Ŵ·B).
  const auto scales = format::choose_scales(format::FormatId::kNVFP4, wr.data(), rows, n,
                                            format::ScaleMethod::kMse);
  const auto res = gptq::gptq_solve(wr.data(), rows, n, hr.data(), scales, {}, "t");
  std::vector<float> what(static_cast<size_t>(rows * n));
  format::dequantize(res.q, what.data());
  gptq::rotate_weight(what.data(), rows, n, b);  // back to the original domain
  const std::vector<double> wd(w.begin(), w.end()), whd(what.begin(), what.end()),
      hd(h.begin(), h.end());
  const auto e = gptq::quantization_error_ref(wd.data(), whd.data(), rows, n, hd.data());
  EXPECT_NEAR(res.stats.rel_weight_err, e.rel_weight_err, 1e-5 * e.rel_weight_err);
  EXPECT_NEAR(res.stats.hessian_err, e.hessian_err, 1e-4 * e.hessian_err);
  // ... and the proxy loss is the layer output error: tr(ΔW H ΔWᵀ) = 2/N·‖X·ΔWᵀ‖².
  double out_err = 0, out_ref = 0;
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t r = 0; r < rows; ++r) {
      double d = 0, y = 0;
      for (int64_t i = 0; i < n; ++i) {
        d += double(x[t * n + i]) * (whd[r * n + i] - wd[r * n + i]);
        y += double(x[t * n + i]) * wd[r * n + i];
      }
      out_err += d * d;
      out_ref += y * y;
    }
  EXPECT_NEAR(res.stats.hessian_err, out_err / out_ref, 1e-4 * out_err / out_ref);
  std::printf("[rotation] nvfp4 mse had16 64x256: rotated-domain h_err %.6e, original-domain "
              "%.6e, output-error ratio %.6e\n",
              res.stats.hessian_err, e.hessian_err, out_err / out_ref);
}
