// src/linalg/tiled.h — private to linalg: thread-count-independent level-3 BLAS.
//
// OpenBLAS 0.3.21 is NOT bit-reproducible across thread counts on this machine (measured:
// sgemm, ssyrk and strsm with 1 vs 2 threads differ in the last bits for every K tried, because
// the partition decides which edge-tile kernel computes an element). So fp4q never lets
// OpenBLAS thread: the output is cut into a FIXED grid of tiles (a function of the shape only),
// each tile is one single-threaded BLAS call, and the tiles run in an OpenMP loop. The same
// tile always gets the same call, hence identical bits for any number of threads.
#pragma once

#include <cstdint>

#include <cblas.h>

namespace fp4q::linalg::detail {

// RAII: OpenBLAS runs single-threaded while at least one guard is alive (reference counted,
// restores the previous thread count when the last guard dies).
class BlasSerialGuard {
 public:
  BlasSerialGuard();
  ~BlasSerialGuard();
  BlasSerialGuard(const BlasSerialGuard&) = delete;
  BlasSerialGuard& operator=(const BlasSerialGuard&) = delete;
};

// Row-major C [m x n] = alpha·op(A)·op(B) + beta·C, tiled (kTileM x kTileN output tiles).
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
// Lower triangle of C [n x n] = alpha·Xᵀ·X + beta·C, X [k x n]; diagonal tiles ssyrk,
// off-diagonal tiles sgemm.
void syrk_xtx(int64_t n, int64_t k, float alpha, const float* x, int64_t ldx, float beta, float* c,
              int64_t ldc);
// Lower triangle of C [n x n] = alpha·A·Aᵀ + beta·C, A [n x k] (ld lda).
void syrk_aat(int64_t n, int64_t k, float alpha, const float* a, int64_t lda, float beta, float* c,
              int64_t ldc);
// B [m x n] <- B·op(L)⁻¹ (right side), L [n x n] lower, non-unit; rows of B tiled.
void trsm_right_lower(bool trans, int64_t m, int64_t n, float alpha, const float* l, int64_t ldl,
                      float* b, int64_t ldb);
// B [m x n] <- L⁻¹·B (left side), L [m x m] lower non-unit, no transpose; columns of B tiled.
void trsm_left_lower(int64_t m, int64_t n, float alpha, const float* l, int64_t ldl, float* b,
                     int64_t ldb);

}  // namespace fp4q::linalg::detail
