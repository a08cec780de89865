// src/linalg/blas.cpp — row-major BLAS-3 wrappers (see blas.h); with tiled.cpp and
// cholesky.cpp the only cblas.h users in fp4q.
#include "fp4q/linalg/blas.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <initializer_list>
#include <climits>
#include <utility>
#include <string>

#include <cblas.h>

#include "tiled.h"

#include "fp4q/core/error.h"
#include "fp4q/core/parallel.h"
#include "fp4q/core/parallel_dynamic.h"

extern "C" char* openblas_get_config(void);
extern "C" char* openblas_get_corename(void);

namespace fp4q::linalg {

namespace {

blasint to_blas(int64_t v, const char* what) {
  if (v < 0 || v > INT_MAX)
    throw Error(ErrorKind::kInternal,
                std::string("BLAS argument ") + what + " = " + std::to_string(v) +
                    " is outside [0, 2^31)",
                "linalg");
  return static_cast<blasint>(v);
}

}  // namespace

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc) {
  for (auto [v, name] : {std::pair{m, "m"}, {n, "n"}, {k, "k"}, {lda, "lda"}, {ldb, "ldb"},
                         {ldc, "ldc"}})
    to_blas(v, name);
  detail::gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void sgemm_ref(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
               const double* a, int64_t lda, const double* b, int64_t ldb, double beta, double* c,
               int64_t ldc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0.0;
      for (int64_t p = 0; p < k; ++p) {
        const double av = trans_a ? a[p * lda + i] : a[i * lda + p];
        const double bv = trans_b ? b[j * ldb + p] : b[p * ldb + j];
        s += av * bv;
      }
      c[i * ldc + j] = alpha * s + (beta == 0.0 ? 0.0 : beta * c[i * ldc + j]);
    }
}

void syrk_xtx_lower(int64_t n, int64_t k, float alpha, const float* x, int64_t ldx, float beta,
                    float* c, int64_t ldc) {
  for (auto [v, name] : {std::pair{n, "n"}, {k, "k"}, {ldx, "ldx"}, {ldc, "ldc"}}) to_blas(v, name);
  detail::syrk_xtx(n, k, alpha, x, ldx, beta, c, ldc);
}

void syrk_xtx_lower_ref(int64_t n, int64_t k, double alpha, const double* x, int64_t ldx,
                        double beta, double* c, int64_t ldc) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j <= i; ++j) {
      double s = 0.0;
      for (int64_t t = 0; t < k; ++t) s += x[t * ldx + i] * x[t * ldx + j];
      c[i * ldc + j] = alpha * s + (beta == 0.0 ? 0.0 : beta * c[i * ldc + j]);
    }
}

void mirror_lower_to_upper(float* a, int64_t n, int64_t lda) {
  // Tile-wise so that both the read (column of the lower part) and the write stay in cache.
  constexpr int64_t kT = 64;
  const int64_t tiles = (n + kT - 1) / kT;
  parallel_for_dynamic(tiles, [&](long ti) {
    const int64_t i0 = ti * kT, i1 = std::min<int64_t>(n, i0 + kT);
    for (int64_t j0 = i0; j0 < n; j0 += kT) {  // tiles of the upper part in block row ti
      const int64_t j1 = std::min<int64_t>(n, j0 + kT);
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = std::max(j0, i + 1); j < j1; ++j) a[i * lda + j] = a[j * lda + i];
    }
  });
}

void sgemm_native(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                  const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                  int64_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, to_blas(m, "m"), to_blas(n, "n"),
              to_blas(k, "k"), alpha, a, to_blas(lda, "lda"), b, to_blas(ldb, "ldb"), beta, c,
              to_blas(ldc, "ldc"));
}

const char* blas_config() {
  static const std::string s =
      std::string(openblas_get_config()) + " (core " + openblas_get_corename() + ")";
  return s.c_str();
}

std::string better_openblas_core(const std::string& picked, bool avx2_fma, bool avx512,
                                 bool avx512_bf16) {
  std::string p = picked;
  std::transform(p.begin(), p.end(), p.begin(), [](unsigned char c) { return std::tolower(c); });
  const auto is = [&](std::initializer_list<const char*> names) {
    return std::any_of(names.begin(), names.end(), [&](const char* n) { return p == n; });
  };
  // Cores whose SGEMM uses AVX-512 / AVX2+FMA (OpenBLAS's names, lower case).
  const bool picked_avx512 = is({"skylakex", "cooperlake", "sapphirerapids"});
  const bool picked_avx2 = picked_avx512 || is({"haswell", "zen"});
  if (avx512 && !picked_avx512) return avx512_bf16 ? "Cooperlake" : "SkylakeX";
  if (avx2_fma && !picked_avx2) return "Haswell";
  return "";
}

std::string openblas_core_name() { return openblas_get_corename(); }

std::string openblas_core_upgrade() {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return "";
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512vl");
  bool bf16 = false;
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
  bf16 = __builtin_cpu_supports("avx512bf16");
#endif
  return better_openblas_core(openblas_get_corename(), avx2_fma, avx512, bf16);
#else
  return "";
#endif
}

}  // namespace fp4q::linalg
