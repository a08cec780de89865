// fp4q/gptq/gptq.h — the MR-GPTQ solver: block-Hadamard rotation, static scales, static
// act-order, GPTQ with lazy batch updates, and error statistics.
//
// Shapes and layout: W [rows = out_features x cols = in_features] row-major float32,
// H [cols x cols] row-major float32 symmetric (only its LOWER triangle, i >= j, is read by the
// solvers). Both are given in the ROTATED domain (rotate_weight / rotate_hessian first).
//
// gptq_solve, step by step (see docs in the implementation for the exact rules):
//  1. Dead inputs: diag(H)[i] == 0 (original GPTQ rule, in UNPERMUTED coordinates, before any
//     permutation) -> row/column i of H zeroed, H[i,i] = 1, W[:, i] = 0. (FP-Quant instead
//     looks for all-zero weight columns and applies that mask to the permuted H — a bug with
//     act-order; we do not copy it.)
//  2. Static act-order (act_order = true): columns are processed in descending diag(H) order
//     (original diagonal, stable: ties by ascending index, dead columns last), but every column
//     keeps the scale of its ORIGINAL group; codes are written back in the original column order,
//     so the on-disk layout does not change.
//  3. Damping: H += λ·mean(diag H)·I (mean after step 1), λ = damp. The factor U (upper, with
//     (H_damped)⁻¹ = Uᵀ·U) comes from linalg::inverse_upper_cholesky. If the factorisation fails,
//     λ is multiplied by 10 and the factorisation retried, at most max_damp_tries attempts in all
//     (defaults: 0.01, 0.1, 1.0). The λ actually used and the number of attempts are reported;
//     if every attempt fails, fp4q::Error(kNumeric) names the layer (`where`). There is no silent
//     fallback to RTN.
//  4. Sweep in blocks of block_size columns (lazy batch updates): inside a block, column by
//     column, q = quantize_value(w, scale of its original group) (values past the format range
//     saturate), err = (w - q)/U[j,j], and the remaining columns of the block get w -= err·U[j,:];
//     after the block the trailing columns get one GEMM W[:, c2:] -= Err·U[c1:c2, c2:]. Rows are
//     independent given U, so the work is split into fixed panels of 256 rows, each running the
//     whole sweep (in-block loop + its own trailing GEMM) in one dynamically scheduled OpenMP
//     region.
//  5. Statistics (compute_stats): relative weight error ‖Ŵ−W‖_F/‖W‖_F and Hessian-weighted
//     output error tr(ΔW·H·ΔWᵀ)/tr(W·H·Wᵀ) with the UNDAMPED input H (ΔW = Ŵ − W with the input
//     W, dead columns included), for GPTQ and for plain RTN (format::quantize_rtn) under the same
//     scales. All in the rotated domain, which equals the unrotated one because B is orthogonal.
//     Sums in float64. tr(W·H·Wᵀ) and the RTN trace come from float32 ssyrk Gram matrices AᵀA
//     combined with H in float64 (2·rows·cols² flops; switch off with compute_stats = false).
//     The GPTQ trace costs nothing extra: with E the matrix of the sweep's scaled errors
//     e = (w − q)/U[j,j], the sweep's arithmetic makes ΔW_z = −E·U (ΔW_z: the error w.r.t. W with
//     dead columns zeroed, in processing order), so tr(ΔW_z·H̃·ΔW_zᵀ) = ‖E‖²_F for the damped
//     H̃ = H_z + δI (H̃⁻¹ = UᵀU), hence tr(ΔW·H·ΔWᵀ) = ‖E‖²_F − δ·‖ΔW_z‖²_F (dead rows/columns of
//     H are zero, so the dead columns contribute nothing). In float32 arithmetic this holds to a
//     relative ~eps·sqrt(cond(H̃)) (tested against the float64 definition).
// Results (codes and statistics) are bit-identical for any thread count.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "fp4q/format/format.h"

namespace fp4q::gptq {

struct GptqOptions {
  int block_size = 128;      // lazy-batch block width in columns (>= 1)
  double damp = 0.01;        // relative damping λ (> 0): H += λ·mean(diag H)·I
  int max_damp_tries = 3;    // factorisation attempts with λ, 10λ, 100λ, ... (>= 1)
  bool act_order = true;     // static act-order (true) or natural column order (false)
  bool compute_stats = true; // compute the error statistics (else they are NaN)
  // The caller guarantees h is FULL symmetric (both triangles): the solver then gathers the
  // permuted factor input straight from h instead of first making a symmetric copy (saves
  // n² floats of memory and a pass over them). Results are identical either way.
  bool h_full_symmetric = false;
};

struct ErrorStats {
  static constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  double rel_weight_err = kNaN;      // ‖Ŵ−W‖_F / ‖W‖_F  (0 when W == 0)
  double hessian_err = kNaN;         // tr(ΔW H ΔWᵀ) / tr(W H Wᵀ), undamped H (NaN without H)
  double rtn_rel_weight_err = kNaN;  // the same two for RTN under the same scales
  double rtn_hessian_err = kNaN;
  double damp_used = 0.0;            // relative λ of the successful factorisation (0 for RTN)
  int damp_tries = 0;                // factorisation attempts (1 = no escalation; 0 for RTN)
  int64_t dead_columns = 0;          // columns with diag(H) == 0 (reported for RTN too)
  // Wall-clock seconds of the phases (informational, for logs and bench/bench_gptq.cpp):
  double seconds_factor = 0.0;       // dead fix, permutation, damping, U (all attempts)
  double seconds_sweep = 0.0;        // the GPTQ sweep
  double seconds_stats = 0.0;        // statistics, including the RTN comparison
};

struct SolveResult {
  format::QuantizedMatrix q;  // codes [rows x cols] in the ORIGINAL column order + the scales
  ErrorStats stats;
};

// GPTQ with fixed scales. w [rows x cols], h [cols x cols] (lower triangle read), both rotated;
// scales from format::choose_scales on the same rotated w (scales.rows == rows,
// scales.groups == cols / group_size). `where` names the layer in errors and logs.
// Throws Error(kNumeric) for non-finite w or h, a non-positive mean diagonal, or when the
// factorisation fails at every damping; Error(kInput/kInternal/kUsage) for bad shapes/options.
SolveResult gptq_solve(const float* w, int64_t rows, int64_t cols, const float* h,
                       const format::GroupScales& scales, const GptqOptions& opt,
                       const std::string& where);

// Plain RTN (format::quantize_rtn) with the same scales and the same statistics (the GPTQ
// fields equal the RTN fields). h may be nullptr: the Hessian statistics are then NaN.
SolveResult rtn_solve(const float* w, int64_t rows, int64_t cols, const float* h,
                      const format::GroupScales& scales, const std::string& where);

// W [rows x cols] <- W·B (each row, in blocks of `block` columns, times H_b/sqrt(b)).
// block 0/1 = no-op; otherwise a power of two dividing cols (transform::check_hadamard_block).
void rotate_weight(float* w, int64_t rows, int64_t cols, int block);
// H [n x n] full symmetric <- Bᵀ·H·B (= B·H·B): hadamard_rows(H) = H·B, transpose (= B·H since
// B and H are symmetric), hadamard_rows again = B·H·B; then exactly symmetrised
// ((H_ij + H_ji)/2). Same block rules.
void rotate_hessian(float* h, int64_t n, int block);

// ---- building blocks, public for tests and the pipeline ----

// Static act-order permutation: perm[k] = original index of the k-th processed column,
// descending diag(h) (h [n x n], diagonal read), stable (ties by ascending index).
std::vector<int64_t> act_order_permutation(const float* h, int64_t n);

struct ErrorPair {
  double rel_weight_err = ErrorStats::kNaN;
  double hessian_err = ErrorStats::kNaN;
};
// ‖Ŵ−W‖_F/‖W‖_F and tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) (h lower triangle read; nullptr -> NaN).
// w, w_hat [rows x cols]. Float32 Gram matrices via ssyrk, float64 sums; thread-count invariant.
// Zero denominators give 0 when the numerator is 0, else +inf.
ErrorPair quantization_error(const float* w, const float* w_hat, int64_t rows, int64_t cols,
                             const float* h);
// Float64 naive twin (O(rows·cols²)), h full symmetric.
ErrorPair quantization_error_ref(const double* w, const double* w_hat, int64_t rows, int64_t cols,
                                 const double* h);

}  // namespace fp4q::gptq
