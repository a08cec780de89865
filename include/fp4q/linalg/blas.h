// fp4q/linalg/blas.h — the few dense BLAS-3 products fp4q needs, as row-major float32 wrappers.
//
// linalg is the only module that includes cblas.h / lapacke.h; everyone else calls these.
// Conventions: every matrix is row-major with an explicit leading dimension (ld >= number of
// columns); sizes are int64_t but must fit BLAS's 32-bit int (checked, fp4q::Error(kInternal)).
// Thread-count independence: OpenBLAS's own threading is NOT bit-reproducible across thread
// counts (measured with 0.3.21: sgemm/ssyrk/strsm with 1 vs 2 threads differ in the last bits
// for any K, since the partition decides which edge-tile kernel computes an element). So these
// wrappers cut the output into a fixed grid of tiles that depends only on the shape, run each
// tile as a single-threaded OpenBLAS call, and spread the tiles over OpenMP threads. Results are
// bit-identical for any thread count (tests/linalg checks 1 vs 2 threads). Safe to call from
// inside an OpenMP region (the inner loop then runs serially).
// Every wrapper has a float64 `_ref` twin (naive loops) for tests.
#pragma once

#include <cstdint>
#include <string>

namespace fp4q::linalg {

// C [m x n] = alpha · op(A) · op(B) + beta · C.
// op(A) is [m x k]: A is [m x k] (ld lda) or, with trans_a, A is [k x m] and op(A) = Aᵀ.
// op(B) is [k x n]: B is [k x n] (ld ldb) or, with trans_b, B is [n x k] and op(B) = Bᵀ.
// beta == 0 ignores the previous contents of C (NaN-safe).
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc);
void sgemm_ref(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
               const double* a, int64_t lda, const double* b, int64_t ldb, double beta, double* c,
               int64_t ldc);

// OpenBLAS's own multithreaded sgemm, same contract as sgemm but NOT reproducible across
// thread counts. Only for benchmarks (the machine's reference SGEMM speed).
void sgemm_native(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                  const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                  int64_t ldc);

// Gram update: the LOWER triangle (i >= j) of C [n x n] (ld ldc) becomes alpha · Xᵀ·X + beta · C,
// X [k x n] row-major (ld ldx), i.e. C[i][j] = alpha · sum_t X[t][i] · X[t][j] + beta · C[i][j].
// The strict upper triangle of C is not touched. beta == 0 ignores the previous contents of C.
// Tiled: ssyrk on diagonal tiles, sgemm on the others (k·n·(n+1) flops in all).
void syrk_xtx_lower(int64_t n, int64_t k, float alpha, const float* x, int64_t ldx, float beta,
                    float* c, int64_t ldc);
void syrk_xtx_lower_ref(int64_t n, int64_t k, double alpha, const double* x, int64_t ldx,
                        double beta, double* c, int64_t ldc);

// Copies the lower triangle of the square matrix a [n x n] (ld lda) onto its upper triangle,
// making it exactly symmetric. OpenMP over rows.
void mirror_lower_to_upper(float* a, int64_t n, int64_t lda);

// Returns OpenBLAS's configuration string and core name, e.g. "OpenBLAS 0.3.21 ... Haswell"
// (for benchmark logs).
const char* blas_config();

/// The OpenBLAS core (OPENBLAS_CORETYPE value) fp4q should run with instead of the one OpenBLAS's
/// run-time dispatch (DYNAMIC_ARCH) picked, or "" when the pick uses what the CPU offers.
/// Old OpenBLAS releases do not know newer CPUs and fall back to their oldest kernels: Debian 12's
/// 0.3.21 runs Intel family 6 model 207 (Emerald Rapids, AVX-512 + AMX) with its SSE3 "Prescott"
/// kernels, 10x below the AVX-512 ones (measured: 15 vs ~150 GFLOP/s SGEMM on one core).
/// `picked` is openblas_get_corename(); the flags say what the CPU supports:
/// avx512 = AVX-512 F/CD/BW/DQ/VL (SkylakeX kernels), avx512_bf16 adds Cooperlake's bf16,
/// avx2_fma = AVX2 + FMA3 (Haswell kernels). Comparison is case-insensitive.
std::string better_openblas_core(const std::string& picked, bool avx2_fma, bool avx512,
                                 bool avx512_bf16);

/// better_openblas_core() for this process: the loaded OpenBLAS's pick and this CPU's flags;
/// "" when OPENBLAS_CORETYPE is already set (the user's choice stands).
std::string openblas_core_upgrade();

/// openblas_get_corename() of the loaded library.
std::string openblas_core_name();

}  // namespace fp4q::linalg
