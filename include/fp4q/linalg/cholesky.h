// fp4q/linalg/cholesky.h — Cholesky factorisation, triangular inverse and the GPTQ factor
// "upper Cholesky factor of H⁻¹", in float32 on top of BLAS-3, with float64 `_ref` twins.
//
// Why not LAPACK spotrf/spotri: OpenBLAS's own spotrf/strtri choose a different recursion
// (blocking) for 1 thread than for several, so their results change in the last bits with the
// thread count. These routines use a FIXED recursive split that depends only on n (never on the
// thread count) and call only strsm/ssyrk, whose per-element arithmetic does not depend on the
// thread count either (see blas.h). So results are bit-identical for any thread count.
//
// Recursive scheme (n > leaf): n1 = split(n), n2 = n - n1; [A11 A21ᵀ; A21 A22]:
//   cholesky:   L11 = chol(A11); L21 = A21·L11⁻ᵀ (trsm); A22 -= L21·L21ᵀ (syrk); L22 = chol(A22)
//   inverse:    X21 = -L22⁻¹·L21·L11⁻¹ (two trsm, using the not yet inverted L11, L22);
//               then X11 = L11⁻¹, X22 = L22⁻¹ recursively.
// Leaves (n <= 64) run unblocked with float64 accumulation.
// Flop counts (what is performed): cholesky n³/3, invert_lower n³/3, i.e. inverse_upper_cholesky
// 2n³/3 (+ O(n²)). The textbook GPTQ route (chol, potri = trtri + lauum, chol again) is 4n³/3.
//
// All matrices are row-major [n x n] with leading dimension n (lda for cholesky_lower).
#pragma once

#include <cstdint>

namespace fp4q::linalg {

// In place: the lower triangle of a (i >= j) is replaced by L with A = L·Lᵀ; the strict upper
// triangle is set to 0. Only the lower triangle of a is read.
// Returns 0 on success; otherwise j+1 where j is the first column whose pivot was not a
// positive finite number (a is then partially overwritten and must be discarded).
int64_t cholesky_lower(float* a, int64_t n, int64_t lda);
int64_t cholesky_lower_ref(double* a, int64_t n);  // unblocked, same contract (lda = n)

// In place: the lower-triangular, non-singular l (strict upper must be 0 and stays 0) becomes
// l⁻¹ (also lower triangular).
void invert_lower(float* l, int64_t n, int64_t lda);
void invert_lower_ref(double* l, int64_t n);

// The GPTQ factor. On entry a is symmetric positive definite; only its UPPER triangle (j >= i)
// is read. On success a holds the upper-triangular U with a⁻¹ = Uᵀ·U (strict lower triangle 0),
// which is exactly torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(A)),
// upper=True) in exact arithmetic.
// Method: with J the reversal permutation, J·A·J = L2·L2ᵀ (cholesky_lower of a reversed copy,
// reversing the row-major buffer IS J·A·J), so A = V·Vᵀ with V = J·L2·J upper triangular, and
// A⁻¹ = V⁻ᵀ·V⁻¹ = Uᵀ·U with U = V⁻¹ = J·L2⁻¹·J. Cost 2n³/3 flops.
// Returns 0 on success; otherwise 1 + the index i (in a's coordinates) of the pivot that was not
// positive/finite; a is then garbage.
int64_t inverse_upper_cholesky(float* a, int64_t n);
// Float64 reference by the textbook route: L = chol(A), A⁻¹ = L⁻ᵀ·L⁻¹ explicitly, then
// U = (chol(A⁻¹))ᵀ. Same contract (returns 0 or a nonzero value on failure).
int64_t inverse_upper_cholesky_ref(double* a, int64_t n);

}  // namespace fp4q::linalg
