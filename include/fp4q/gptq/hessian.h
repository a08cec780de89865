// fp4q/gptq/hessian.h — the GPTQ Hessian H = 2/N · Σ_tokens x·xᵀ of one layer input.
//
// N counts calibration SAMPLES (sequences), not tokens, exactly as FP-Quant and llm-compressor
// (`GPTQ.update`: batch_size = input.shape[0] sequences). The scale of H is irrelevant to GPTQ
// itself (damping is relative) but it is what the Hessian files store.
//
// Accumulation (float32, like FP-Quant): H is kept as the running mean over samples. A batch
// X [tokens x n] that holds m samples is folded in by ONE BLAS ssyrk with beta:
//     N' = N + m;   H <- (N/N')·H + (2/N')·XᵀX
// so no separate batch buffer is needed and the scale never depends on how the data was split
// into batches. Rounding: each fold costs O(eps_f32) relative error (plus the float32 dot
// products of length `tokens` inside ssyrk); over 1024 batches that is ~1e-5 relative, far
// below the 1 % damping GPTQ adds. Splitting the same data differently changes H only by that
// rounding (tested against a float64 naive 2/N·XᵀX). Only the lower triangle is stored and
// updated; hessian() returns the full, exactly symmetric matrix.
// Results do not depend on the thread count (ssyrk, see linalg/blas.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fp4q/linalg/buffer.h"

namespace fp4q::gptq {

class HessianAccumulator {
 public:
  // n = number of input features (columns of X). `where` names the layer in errors.
  explicit HessianAccumulator(int64_t n, std::string where = {});

  // Adds X [tokens x n] row-major float32 (ld = n) holding `n_samples` calibration samples
  // (sequences). n_samples >= 1 when tokens > 0. Non-finite values throw Error(kNumeric).
  void add_batch(const float* x, int64_t tokens, int64_t n_samples);

  // this <- the accumulator of the union of both data sets: H = (N_a·H_a + N_b·H_b)/(N_a + N_b).
  // Dimensions must match (Error(kInternal) otherwise).
  void merge(const HessianAccumulator& other);

  int64_t dim() const { return n_; }
  int64_t samples() const { return samples_; }
  int64_t tokens() const { return tokens_; }  // informational; not saved by to_vector

  // Full symmetric H [n x n] row-major (all zeros before the first batch).
  std::vector<float> hessian() const;
  // The same without a copy: completes the upper triangle in place and hands the storage over;
  // the accumulator is empty (dim 0) afterwards.
  linalg::HugeBuffer<float> take_hessian();
  void hessian_into(float* out) const;  // same into caller memory [n x n]

  // Save / load: the full symmetric matrix plus the sample count (the file format lives in the
  // pipeline). from_vector reads the lower triangle (i >= j) of h [n x n]; it must be finite.
  std::vector<float> to_vector() const { return hessian(); }
  static HessianAccumulator from_vector(const float* h, int64_t n, int64_t samples,
                                        std::string where = {});
  static HessianAccumulator from_vector(const std::vector<float>& h, int64_t n, int64_t samples,
                                        std::string where = {});

 private:
  int64_t n_ = 0;
  int64_t samples_ = 0;
  int64_t tokens_ = 0;
  linalg::HugeBuffer<float> h_;  // [n x n], lower triangle valid (huge pages: n² is large)
  std::string where_;
};

// Float64 naive reference for tests: 2/N · XᵀX over the given batches (full symmetric).
std::vector<double> hessian_ref(const std::vector<const float*>& batches,
                                const std::vector<int64_t>& tokens, int64_t n, int64_t samples);

}  // namespace fp4q::gptq
