// fp4q/gptq/column_costs.h — GPTQ's per-column error weights, for a GPTQ-aware scale choice
// (format::ScaleMethod::kMseGptq, issue 9).
//
// GPTQ's loss decomposes over the processed columns: with U the upper Cholesky factor of the
// damped, permuted inverse Hessian ((P H Pᵀ + λ·mean(diag H)·I)⁻¹ = Uᵀ·U, exactly as gptq_solve
// builds it: same dead-column rule, static act-order permutation and damping), quantizing the
// (already updated) k-th processed column with error e costs ‖e‖² / U_kk². So the weight of
// original column j = perm[k] is 1 / U_kk² — between the Schur complement of j given the later
// columns and H_jj (the last column gets the full damped diagonal).
#pragma once

#include <cstdint>
#include <vector>

#include "fp4q/gptq/gptq.h"

namespace fp4q::gptq {

// h [n x n] symmetric (lower triangle read), rotated like the weights. Returns [n] weights in the
// ORIGINAL column order (dead columns: 0). Damping escalates like gptq_solve (opt.damp,
// opt.max_damp_tries); if every factorisation fails, returns diag(h) (dead columns 0).
std::vector<float> column_costs(const float* h, int64_t n, const GptqOptions& opt);

// Float64 reference (textbook: explicit inverse, Cholesky), same contract, for tests.
std::vector<double> column_costs_ref(const double* h, int64_t n, double damp, bool act_order);

}  // namespace fp4q::gptq
