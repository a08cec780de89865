// src/gptq/hessian.cpp — running-mean Hessian accumulation (see hessian.h).
#include "fp4q/gptq/hessian.h"

#include <cmath>

#include "fp4q/core/error.h"
#include "fp4q/core/parallel.h"
#include "fp4q/core/parallel_dynamic.h"
#include "fp4q/linalg/blas.h"

namespace fp4q::gptq {

namespace {

// Throws Error(kNumeric) naming the first (row, col) non-finite entry of x [rows x cols].
void check_finite(const float* x, int64_t rows, int64_t cols, const std::string& where,
                  const char* what) {
  std::vector<int64_t> bad(static_cast<size_t>(rows), -1);
  parallel_for_dynamic(rows, [&](long r) {
    const float* row = x + r * cols;
    for (int64_t c = 0; c < cols; ++c)
      if (!std::isfinite(row[c])) {
        bad[r] = c;
        return;
      }
  });
  for (int64_t r = 0; r < rows; ++r)
    if (bad[r] >= 0)
      throw Error(ErrorKind::kNumeric,
                  std::string(what) + " has a non-finite value " +
                      std::to_string(x[r * cols + bad[r]]) + " at row " + std::to_string(r) +
                      ", column " + std::to_string(bad[r]),
                  where, "the calibration forward pass produced NaN/Inf");
}

}  // namespace

HessianAccumulator::HessianAccumulator(int64_t n, std::string where)
    : n_(n), where_(std::move(where)) {
  if (n < 0)
    throw Error(ErrorKind::kInternal, "Hessian dimension must be >= 0, got " + std::to_string(n),
                where_);
  h_ = linalg::HugeBuffer<float>(static_cast<size_t>(n * n));
  parallel_for_dynamic(n, [&](long i) { std::fill(h_.data() + i * n, h_.data() + (i + 1) * n, 0.0f); });
}

void HessianAccumulator::add_batch(const float* x, int64_t tokens, int64_t n_samples) {
  if (tokens < 0 || n_samples < 0 || (tokens > 0 && n_samples < 1))
    throw Error(ErrorKind::kInternal,
                "add_batch: " + std::to_string(tokens) + " tokens in " +
                    std::to_string(n_samples) + " samples (need tokens >= 0, samples >= 1)",
                where_);
  if (n_samples == 0) return;
  check_finite(x, tokens, n_, where_, "layer input");
  const int64_t total = samples_ + n_samples;
  const float beta = static_cast<float>(static_cast<double>(samples_) / static_cast<double>(total));
  const float alpha = static_cast<float>(2.0 / static_cast<double>(total));
  if (tokens > 0) {
    // H <- beta·H + alpha·XᵀX (lower triangle), one ssyrk; beta == 0 on the first batch.
    linalg::syrk_xtx_lower(n_, tokens, alpha, x, n_, beta, h_.data(), n_);
  } else if (beta != 1.0f) {
    parallel_for_dynamic(n_, [&](long i) {
      for (int64_t j = 0; j <= i; ++j) h_[i * n_ + j] *= beta;
    });
  }
  samples_ = total;
  tokens_ += tokens;
}

void HessianAccumulator::merge(const HessianAccumulator& other) {
  if (other.n_ != n_)
    throw Error(ErrorKind::kInternal,
                "cannot merge Hessians of dimension " + std::to_string(n_) + " and " +
                    std::to_string(other.n_),
                where_);
  const int64_t total = samples_ + other.samples_;
  if (total == 0) return;
  const float wa = static_cast<float>(static_cast<double>(samples_) / total);
  const float wb = static_cast<float>(static_cast<double>(other.samples_) / total);
  parallel_for_dynamic(n_, [&](long i) {
    for (int64_t j = 0; j <= i; ++j)
      h_[i * n_ + j] = wa * h_[i * n_ + j] + wb * other.h_[i * n_ + j];
  });
  samples_ = total;
  tokens_ += other.tokens_;
}

void HessianAccumulator::hessian_into(float* out) const {
  parallel_for_dynamic(n_, [&](long i) {
    for (int64_t j = 0; j <= i; ++j) out[i * n_ + j] = h_[i * n_ + j];
  });
  linalg::mirror_lower_to_upper(out, n_, n_);
}

linalg::HugeBuffer<float> HessianAccumulator::take_hessian() {
  linalg::mirror_lower_to_upper(h_.data(), n_, n_);
  linalg::HugeBuffer<float> out = std::move(h_);
  n_ = 0;
  samples_ = tokens_ = 0;
  return out;
}

std::vector<float> HessianAccumulator::hessian() const {
  std::vector<float> out(static_cast<size_t>(n_ * n_));
  hessian_into(out.data());
  return out;
}

HessianAccumulator HessianAccumulator::from_vector(const float* h, int64_t n, int64_t samples,
                                                   std::string where) {
  HessianAccumulator acc(n, std::move(where));
  if (samples < 0)
    throw Error(ErrorKind::kInput, "Hessian sample count is negative: " + std::to_string(samples),
                acc.where_);
  std::vector<int64_t> bad(static_cast<size_t>(n), -1);
  parallel_for_dynamic(n, [&](long i) {
    for (int64_t j = 0; j <= i; ++j) {
      const float v = h[i * n + j];
      if (!std::isfinite(v) && bad[i] < 0) bad[i] = j;
      acc.h_[i * n + j] = v;
    }
  });
  for (int64_t i = 0; i < n; ++i)
    if (bad[i] >= 0)
      throw Error(ErrorKind::kNumeric,
                  "Hessian has a non-finite value at (" + std::to_string(i) + ", " +
                      std::to_string(bad[i]) + ")",
                  acc.where_, "recompute the Hessian file");
  acc.samples_ = samples;
  return acc;
}

HessianAccumulator HessianAccumulator::from_vector(const std::vector<float>& h, int64_t n,
                                                   int64_t samples, std::string where) {
  if (n < 0 || static_cast<int64_t>(h.size()) != n * n)
    throw Error(ErrorKind::kInput,
                "Hessian has " + std::to_string(h.size()) + " values, expected " +
                    std::to_string(n) + " x " + std::to_string(n),
                where);
  return from_vector(h.data(), n, samples, std::move(where));
}

std::vector<double> hessian_ref(const std::vector<const float*>& batches,
                                const std::vector<int64_t>& tokens, int64_t n, int64_t samples) {
  std::vector<double> h(static_cast<size_t>(n * n), 0.0);
  for (size_t b = 0; b < batches.size(); ++b)
    for (int64_t t = 0; t < tokens[b]; ++t) {
      const float* x = batches[b] + t * n;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j)
          h[i * n + j] += static_cast<double>(x[i]) * static_cast<double>(x[j]);
    }
  if (samples > 0)
    for (double& v : h) v *= 2.0 / static_cast<double>(samples);
  return h;
}

}  // namespace fp4q::gptq
