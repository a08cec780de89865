// src/linalg/cholesky.cpp — recursive float32 Cholesky / triangular inverse on BLAS-3 with a
// thread-count-independent split (see cholesky.h); replaces LAPACK spotrf/strtri.
#include "fp4q/linalg/cholesky.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "tiled.h"

#include "fp4q/core/error.h"
#include "fp4q/core/parallel.h"
#include "fp4q/core/parallel_dynamic.h"

namespace fp4q::linalg {

namespace {

constexpr int64_t kLeaf = 64;

// Fixed split of a recursive step: half of n rounded up to a multiple of 32 (so the big BLAS
// calls see aligned panels), a function of n only.
int64_t split(int64_t n) {
  int64_t n1 = ((n / 2) + 31) / 32 * 32;
  if (n1 <= 0 || n1 >= n) n1 = n / 2;
  return n1;
}

// Unblocked Cholesky of the leaf block a [b x b] (ld lda), float64 accumulation.
int64_t potf2_leaf(float* a, int64_t b, int64_t lda) {
  std::vector<double> t(static_cast<size_t>(b * b));
  for (int64_t i = 0; i < b; ++i)
    for (int64_t j = 0; j <= i; ++j) t[i * b + j] = a[i * lda + j];
  for (int64_t j = 0; j < b; ++j) {
    const double* tj = &t[j * b];
    double s = tj[j];
    for (int64_t p = 0; p < j; ++p) s -= tj[p] * tj[p];
    if (!(s > 0.0) || !std::isfinite(s)) return j + 1;
    const double d = std::sqrt(s);
    t[j * b + j] = d;
    for (int64_t i = j + 1; i < b; ++i) {
      double* ti = &t[i * b];
      double v = ti[j];
      for (int64_t p = 0; p < j; ++p) v -= ti[p] * tj[p];
      ti[j] = v / d;
    }
  }
  for (int64_t i = 0; i < b; ++i)
    for (int64_t j = 0; j <= i; ++j) a[i * lda + j] = static_cast<float>(t[i * b + j]);
  return 0;
}

// Unblocked inverse of the lower-triangular leaf l [b x b] (ld lda), float64 accumulation.
void trti2_leaf(float* l, int64_t b, int64_t lda) {
  std::vector<double> t(static_cast<size_t>(b * b), 0.0), x(static_cast<size_t>(b * b), 0.0);
  for (int64_t i = 0; i < b; ++i)
    for (int64_t j = 0; j <= i; ++j) t[i * b + j] = l[i * lda + j];
  for (int64_t j = 0; j < b; ++j) {
    x[j * b + j] = 1.0 / t[j * b + j];
    for (int64_t i = j + 1; i < b; ++i) {
      double s = 0.0;
      for (int64_t p = j; p < i; ++p) s += t[i * b + p] * x[p * b + j];
      x[i * b + j] = -s / t[i * b + i];
    }
  }
  for (int64_t i = 0; i < b; ++i)
    for (int64_t j = 0; j <= i; ++j) l[i * lda + j] = static_cast<float>(x[i * b + j]);
}

int64_t potrf_rec(float* a, int64_t n, int64_t lda) {
  if (n <= kLeaf) return potf2_leaf(a, n, lda);
  const int64_t n1 = split(n), n2 = n - n1;
  if (int64_t info = potrf_rec(a, n1, lda)) return info;
  float* a21 = a + n1 * lda;
  float* a22 = a21 + n1;
  // L21 = A21 · L11⁻ᵀ  (solve X · L11ᵀ = A21)
  detail::trsm_right_lower(true, n2, n1, 1.0f, a, lda, a21, lda);
  // A22 -= L21 · L21ᵀ (lower triangle)
  detail::syrk_aat(n2, n1, -1.0f, a21, lda, 1.0f, a22, lda);
  if (int64_t info = potrf_rec(a22, n2, lda)) return n1 + info;
  return 0;
}

void trtri_rec(float* l, int64_t n, int64_t lda) {
  if (n <= kLeaf) {
    trti2_leaf(l, n, lda);
    return;
  }
  const int64_t n1 = split(n), n2 = n - n1;
  float* l21 = l + n1 * lda;
  float* l22 = l21 + n1;
  // X21 = -L22⁻¹ · L21 · L11⁻¹: first L21 <- L21 · L11⁻¹ (solve Y · L11 = L21) ...
  detail::trsm_right_lower(false, n2, n1, 1.0f, l, lda, l21, lda);
  // ... then L21 <- -L22⁻¹ · L21 (solve L22 · Z = -L21).
  detail::trsm_left_lower(n2, n1, -1.0f, l22, lda, l21, lda);
  trtri_rec(l, n1, lda);
  trtri_rec(l22, n2, lda);
}

void check_dims(int64_t n, int64_t lda) {
  if (n < 0 || lda < n || lda > (int64_t{1} << 31) - 1)
    throw Error(ErrorKind::kInternal,
                "bad matrix dimensions n = " + std::to_string(n) + ", lda = " + std::to_string(lda),
                "linalg");
}

// Reverses the n*n row-major buffer in place: a <- J·a·J.
void reverse_square(float* a, int64_t n) {
  const int64_t total = n * n, half = total / 2;
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (half + kChunk - 1) / kChunk;
  parallel_for_dynamic(chunks, [&](long c) {
    const int64_t b = c * kChunk, e = std::min(half, b + kChunk);
    for (int64_t k = b; k < e; ++k) std::swap(a[k], a[total - 1 - k]);
  });
}

}  // namespace

int64_t cholesky_lower(float* a, int64_t n, int64_t lda) {
  check_dims(n, lda);
  if (n == 0) return 0;
  const int64_t info = potrf_rec(a, n, lda);
  if (info) return info;
  parallel_for_dynamic(n, [&](long i) { std::fill(a + i * lda + i + 1, a + i * lda + n, 0.0f); });
  return 0;
}

int64_t cholesky_lower_ref(double* a, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    double s = a[j * n + j];
    for (int64_t p = 0; p < j; ++p) s -= a[j * n + p] * a[j * n + p];
    if (!(s > 0.0) || !std::isfinite(s)) return j + 1;
    const double d = std::sqrt(s);
    a[j * n + j] = d;
    for (int64_t i = j + 1; i < n; ++i) {
      double v = a[i * n + j];
      for (int64_t p = 0; p < j; ++p) v -= a[i * n + p] * a[j * n + p];
      a[i * n + j] = v / d;
    }
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) a[i * n + j] = 0.0;
  return 0;
}

void invert_lower(float* l, int64_t n, int64_t lda) {
  check_dims(n, lda);
  if (n == 0) return;
  trtri_rec(l, n, lda);
}

void invert_lower_ref(double* l, int64_t n) {
  std::vector<double> x(static_cast<size_t>(n * n), 0.0);
  for (int64_t j = 0; j < n; ++j) {
    x[j * n + j] = 1.0 / l[j * n + j];
    for (int64_t i = j + 1; i < n; ++i) {
      double s = 0.0;
      for (int64_t p = j; p < i; ++p) s += l[i * n + p] * x[p * n + j];
      x[i * n + j] = -s / l[i * n + i];
    }
  }
  std::copy(x.begin(), x.end(), l);
}

int64_t inverse_upper_cholesky(float* a, int64_t n) {
  check_dims(n, n);
  if (n == 0) return 0;
  reverse_square(a, n);  // J·A·J: its lower triangle is A's upper triangle
  const int64_t info = cholesky_lower(a, n, n);
  if (info) return n - info + 1;  // reversed index info-1 is original index n - info
  invert_lower(a, n, n);
  reverse_square(a, n);  // U = J·L2⁻¹·J (upper; lower triangle is 0)
  return 0;
}

int64_t inverse_upper_cholesky_ref(double* a, int64_t n) {
  std::vector<double> l(static_cast<size_t>(n * n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) l[i * n + j] = (j >= i) ? a[i * n + j] : a[j * n + i];
  if (int64_t info = cholesky_lower_ref(l.data(), n)) return info;
  invert_lower_ref(l.data(), n);  // l = L⁻¹
  std::vector<double> inv(static_cast<size_t>(n * n), 0.0);  // A⁻¹ = L⁻ᵀ · L⁻¹
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0.0;
      for (int64_t p = std::max(i, j); p < n; ++p) s += l[p * n + i] * l[p * n + j];
      inv[i * n + j] = s;
    }
  if (int64_t info = cholesky_lower_ref(inv.data(), n)) return info;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) a[i * n + j] = (j >= i) ? inv[j * n + i] : 0.0;
  return 0;
}

}  // namespace fp4q::linalg
