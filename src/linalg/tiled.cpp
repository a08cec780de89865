// src/linalg/tiled.cpp — thread-count-independent tiled level-3 BLAS (see tiled.h).
#include "tiled.h"

#include <algorithm>
#include <climits>
#include <mutex>
#include <string>
#include <vector>

#include "fp4q/core/error.h"
#include "fp4q/core/parallel.h"
#include "fp4q/core/parallel_dynamic.h"

#include <omp.h>

extern "C" int openblas_get_num_threads(void);
extern "C" void openblas_set_num_threads(int);

namespace fp4q::linalg::detail {

namespace {

// Output tile of gemm: big enough that packing overhead is < 1 %, small enough for load balance.
constexpr int64_t kTileM = 256;
constexpr int64_t kTileN = 1024;
// Square tile of syrk and row/column chunk of trsm.
constexpr int64_t kTileS = 512;
constexpr int64_t kChunk = 256;

std::mutex g_mu;
int g_depth = 0;
int g_saved = 1;

int bi(int64_t v) {
  if (v < 0 || v > INT_MAX)
    throw Error(ErrorKind::kInternal, "BLAS dimension " + std::to_string(v) + " out of range",
                "linalg");
  return static_cast<int>(v);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Below this many flops a call runs its tiles serially in the calling thread: opening an OpenMP
// region costs more than it saves (and much more when the cores are shared). Above it the
// tiles are handed out dynamically (a descheduled thread does not stall the others). The tiles
// and their calls are the same either way, so the bits do not change.
constexpr double kParallelFlops = 64e6;

template <class F>
void run_tiles(int64_t count, double flops, F&& f) {
  if (count <= 1 || flops < kParallelFlops || omp_in_parallel()) {
    for (int64_t t = 0; t < count; ++t) f(t);
  } else {
    parallel_for_dynamic(count, [&](long t) { f(t); });
  }
}

}  // namespace

BlasSerialGuard::BlasSerialGuard() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_depth++ == 0) {
    g_saved = openblas_get_num_threads();
    if (g_saved != 1) openblas_set_num_threads(1);
  }
}

BlasSerialGuard::~BlasSerialGuard() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (--g_depth == 0 && g_saved != 1) openblas_set_num_threads(g_saved);
}

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  BlasSerialGuard guard;
  const int64_t tm = ceil_div(m, kTileM), tn = ceil_div(n, kTileN);
  run_tiles(tm * tn, 2.0 * m * n * k, [&](int64_t t) {
    const int64_t i0 = (t / tn) * kTileM, j0 = (t % tn) * kTileN;
    const int64_t mm = std::min(kTileM, m - i0), nn = std::min(kTileN, n - j0);
    const float* ap = ta ? a + i0 : a + i0 * lda;  // op(A) rows i0.. : A cols i0.. when ta
    const float* bp = tb ? b + j0 * ldb : b + j0;
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                bi(mm), bi(nn), bi(k), alpha, ap, bi(lda), bp, bi(ldb), beta, c + i0 * ldc + j0,
                bi(ldc));
  });
}

namespace {

// Lower-triangle tiles (I >= J) of an n x n matrix in kTileS blocks, as a flat list.
std::vector<std::pair<int64_t, int64_t>> lower_tiles(int64_t n) {
  std::vector<std::pair<int64_t, int64_t>> t;
  const int64_t nt = ceil_div(n, kTileS);
  for (int64_t i = 0; i < nt; ++i)
    for (int64_t j = 0; j <= i; ++j) t.emplace_back(i, j);
  return t;
}

}  // namespace

void syrk_xtx(int64_t n, int64_t k, float alpha, const float* x, int64_t ldx, float beta, float* c,
              int64_t ldc) {
  if (n <= 0) return;
  BlasSerialGuard guard;
  const auto tiles = lower_tiles(n);
  run_tiles(static_cast<int64_t>(tiles.size()), double(n) * n * k, [&](int64_t t) {
    const int64_t i0 = tiles[t].first * kTileS, j0 = tiles[t].second * kTileS;
    const int64_t ni = std::min(kTileS, n - i0), nj = std::min(kTileS, n - j0);
    float* ct = c + i0 * ldc + j0;
    if (i0 == j0) {
      cblas_ssyrk(CblasRowMajor, CblasLower, CblasTrans, bi(ni), bi(k), alpha, x + i0, bi(ldx),
                  beta, ct, bi(ldc));
    } else {  // C[I,J] = alpha·X[:,I]ᵀ·X[:,J] + beta·C[I,J]
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bi(ni), bi(nj), bi(k), alpha, x + i0,
                  bi(ldx), x + j0, bi(ldx), beta, ct, bi(ldc));
    }
  });
}

void syrk_aat(int64_t n, int64_t k, float alpha, const float* a, int64_t lda, float beta, float* c,
              int64_t ldc) {
  if (n <= 0) return;
  BlasSerialGuard guard;
  const auto tiles = lower_tiles(n);
  run_tiles(static_cast<int64_t>(tiles.size()), double(n) * n * k, [&](int64_t t) {
    const int64_t i0 = tiles[t].first * kTileS, j0 = tiles[t].second * kTileS;
    const int64_t ni = std::min(kTileS, n - i0), nj = std::min(kTileS, n - j0);
    float* ct = c + i0 * ldc + j0;
    if (i0 == j0) {
      cblas_ssyrk(CblasRowMajor, CblasLower, CblasNoTrans, bi(ni), bi(k), alpha, a + i0 * lda,
                  bi(lda), beta, ct, bi(ldc));
    } else {  // C[I,J] = alpha·A[I,:]·A[J,:]ᵀ + beta·C[I,J]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bi(ni), bi(nj), bi(k), alpha,
                  a + i0 * lda, bi(lda), a + j0 * lda, bi(lda), beta, ct, bi(ldc));
    }
  });
}

void trsm_right_lower(bool trans, int64_t m, int64_t n, float alpha, const float* l, int64_t ldl,
                      float* b, int64_t ldb) {
  if (m <= 0 || n <= 0) return;
  BlasSerialGuard guard;
  run_tiles(ceil_div(m, kChunk), double(m) * n * n, [&](int64_t t) {
    const int64_t i0 = t * kChunk, mm = std::min(kChunk, m - i0);
    cblas_strsm(CblasRowMajor, CblasRight, CblasLower, trans ? CblasTrans : CblasNoTrans,
                CblasNonUnit, bi(mm), bi(n), alpha, l, bi(ldl), b + i0 * ldb, bi(ldb));
  });
}

void trsm_left_lower(int64_t m, int64_t n, float alpha, const float* l, int64_t ldl, float* b,
                     int64_t ldb) {
  if (m <= 0 || n <= 0) return;
  BlasSerialGuard guard;
  run_tiles(ceil_div(n, kChunk), double(m) * m * n, [&](int64_t t) {
    const int64_t j0 = t * kChunk, nn = std::min(kChunk, n - j0);
    cblas_strsm(CblasRowMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit, bi(m), bi(nn),
                alpha, l, bi(ldl), b + j0, bi(ldb));
  });
}

}  // namespace fp4q::linalg::detail
