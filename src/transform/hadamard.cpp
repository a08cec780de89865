// src/transform/hadamard.cpp — block Hadamard rotation (see hadamard.h).
#include "fp4q/transform/hadamard.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "fp4q/core/error.h"
#include "fp4q/core/parallel.h"

namespace fp4q::transform {
namespace {

// Sylvester sign of entry (i, j): (-1)^popcount(i & j).
inline int sylvester_sign(uint32_t i, uint32_t j) {
  return (__builtin_popcount(i & j) & 1) ? -1 : 1;
}

// In-place unnormalized FWHT of v[0..b): v <- v * H_b (natural / Sylvester order).
template <class T>
void fwht(T* v, int b) {
  for (int h = 1; h < b; h *= 2)
    for (int i = 0; i < b; i += 2 * h)
      for (int j = i; j < i + h; ++j) {
        const T a = v[j], c = v[j + h];
        v[j] = a + c;
        v[j + h] = a - c;
      }
}

template <class T>
void hadamard_rows_fast(T* x, int64_t rows, int64_t cols, int block) {
  if (!check_hadamard_block(cols, block)) return;
  const T norm = static_cast<T>(1.0 / std::sqrt(static_cast<double>(block)));
  parallel_for(rows, [&](long r) {
    T* row = x + r * cols;
    for (int64_t c0 = 0; c0 < cols; c0 += block) {
      fwht(row + c0, block);
      for (int j = 0; j < block; ++j) row[c0 + j] *= norm;
    }
  });
}

// float32 rows of blocks >= 16 with 16-lane vectors: the butterflies of stages h < 16 are lane
// permutations (lane k pairs with k ^ h; low lanes a + c, high lanes c - a, i.e. the scalar
// fwht's v[j] + v[j+h] and v[j] - v[j+h]), stages h >= 16 add/subtract whole vectors. The same
// float operations on the same operands as fwht(): bit-identical, ~8x faster (AVX-512/AVX2
// clones; the library's baseline has no AVX).
typedef float V16f __attribute__((vector_size(64)));
typedef int32_t V16i __attribute__((vector_size(64)));

// Lane permutation k -> k ^ H. GCC's __builtin_shuffle takes the mask vector; clang (used by
// the fuzzing build, -DFP4Q_FUZZ=ON) needs the constant indices of __builtin_shufflevector.
#if defined(__clang__)
#define FP4Q_XOR_SHUFFLE(a, pmask, H)                                                    \
  __builtin_shufflevector(a, a, 0 ^ H, 1 ^ H, 2 ^ H, 3 ^ H, 4 ^ H, 5 ^ H, 6 ^ H, 7 ^ H, \
                          8 ^ H, 9 ^ H, 10 ^ H, 11 ^ H, 12 ^ H, 13 ^ H, 14 ^ H, 15 ^ H)
#else
#define FP4Q_XOR_SHUFFLE(a, pmask, H) __builtin_shuffle(a, pmask)
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void fwht16_rows(float* x, int64_t rows, int64_t cols, int block, float norm, int64_t r0, int64_t r1) {
  const V16i lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  [[maybe_unused]] const V16i p1 = lane ^ 1, p2 = lane ^ 2, p4 = lane ^ 4, p8 = lane ^ 8;
  const V16i hi1 = (lane & 1) != 0, hi2 = (lane & 2) != 0, hi4 = (lane & 4) != 0, hi8 = (lane & 8) != 0;
  const V16f nv = {norm, norm, norm, norm, norm, norm, norm, norm,
                   norm, norm, norm, norm, norm, norm, norm, norm};
  const int nvec = block / 16;
  V16f v[8];  // block <= 128
  for (int64_t r = r0; r < r1; ++r) {
    float* row = x + r * cols;
    for (int64_t c0 = 0; c0 < cols; c0 += block) {
      float* b = row + c0;
      for (int q = 0; q < nvec; ++q) __builtin_memcpy(&v[q], b + 16 * q, sizeof(V16f));
      for (int q = 0; q < nvec; ++q) {
        V16f a = v[q], c;
        c = FP4Q_XOR_SHUFFLE(a, p1, 1);
        a = reinterpret_cast<V16f>((hi1 & reinterpret_cast<V16i>(c - a)) | (~hi1 & reinterpret_cast<V16i>(a + c)));
        c = FP4Q_XOR_SHUFFLE(a, p2, 2);
        a = reinterpret_cast<V16f>((hi2 & reinterpret_cast<V16i>(c - a)) | (~hi2 & reinterpret_cast<V16i>(a + c)));
        c = FP4Q_XOR_SHUFFLE(a, p4, 4);
        a = reinterpret_cast<V16f>((hi4 & reinterpret_cast<V16i>(c - a)) | (~hi4 & reinterpret_cast<V16i>(a + c)));
        c = FP4Q_XOR_SHUFFLE(a, p8, 8);
        a = reinterpret_cast<V16f>((hi8 & reinterpret_cast<V16i>(c - a)) | (~hi8 & reinterpret_cast<V16i>(a + c)));
        v[q] = a;
      }
      for (int h = 1; h < nvec; h *= 2)
        for (int i = 0; i < nvec; i += 2 * h)
          for (int j = i; j < i + h; ++j) {
            const V16f a = v[j], c = v[j + h];
            v[j] = a + c;
            v[j + h] = a - c;
          }
      for (int q = 0; q < nvec; ++q) {
        const V16f o = v[q] * nv;
        __builtin_memcpy(b + 16 * q, &o, sizeof(V16f));
      }
    }
  }
}

}  // namespace

bool is_power_of_two(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

bool check_hadamard_block(int64_t cols, int block, const char* where) {
  const std::string w = where ? where : "";
  if (block == 0 || block == 1) return false;
  if (block < 0 || !is_power_of_two(block))
    throw Error(ErrorKind::kUsage,
                "Hadamard block size must be a power of two >= 2 (or 0/1 for none), got " +
                    std::to_string(block),
                w, "use e.g. 16, 32, 64 or 128");
  if (cols < 0 || cols % block != 0)
    throw Error(ErrorKind::kInput,
                "Hadamard block size " + std::to_string(block) + " does not divide the " +
                    std::to_string(cols) + " input columns",
                w, "choose a block size that divides every rotated layer's input size");
  return true;
}

void hadamard_rows(float* x, int64_t rows, int64_t cols, int block) {
  if (block < 16 || block > 128) {
    hadamard_rows_fast(x, rows, cols, block);
    return;
  }
  if (!check_hadamard_block(cols, block)) return;
  const float norm = static_cast<float>(1.0 / std::sqrt(static_cast<double>(block)));
  constexpr int64_t kRows = 16;  // rows per work item
  parallel_for(static_cast<long>((rows + kRows - 1) / kRows), [&](long t) {
    fwht16_rows(x, rows, cols, block, norm, t * kRows, std::min<int64_t>(rows, (t + 1) * kRows));
  });
}

void hadamard_cols(float* x, int64_t rows, int64_t cols, int block) {
  if (!check_hadamard_block(rows, block)) return;
  const float norm = static_cast<float>(1.0 / std::sqrt(static_cast<double>(block)));
  // Column chunks as work items: every butterfly combines two rows elementwise over the chunk.
  constexpr int64_t kChunk = 1024;
  const int64_t chunks = (cols + kChunk - 1) / kChunk;
  parallel_for(static_cast<long>((rows / block) * chunks), [&](long t) {
    const int64_t r0 = (t / chunks) * block, c0 = (t % chunks) * kChunk;
    const int64_t n = std::min(kChunk, cols - c0);
    for (int h = 1; h < block; h *= 2)
      for (int i = 0; i < block; i += 2 * h)
        for (int j = i; j < i + h; ++j) {
          float* a = x + (r0 + j) * cols + c0;
          float* c = x + (r0 + j + h) * cols + c0;
          for (int64_t k = 0; k < n; ++k) {
            const float av = a[k], cv = c[k];
            a[k] = av + cv;
            c[k] = av - cv;
          }
        }
    for (int j = 0; j < block; ++j) {
      float* a = x + (r0 + j) * cols + c0;
      for (int64_t k = 0; k < n; ++k) a[k] *= norm;
    }
  });
}

void hadamard_rows(double* x, int64_t rows, int64_t cols, int block) {
  hadamard_rows_fast(x, rows, cols, block);
}

void hadamard_rows_ref(double* x, int64_t rows, int64_t cols, int block) {
  if (!check_hadamard_block(cols, block)) return;
  const double norm = 1.0 / std::sqrt(static_cast<double>(block));
  std::vector<double> tmp(static_cast<size_t>(block));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c0 = 0; c0 < cols; c0 += block) {
      double* v = x + r * cols + c0;
      for (int j = 0; j < block; ++j) {  // (v H)_j = sum_i v_i H_ij
        double s = 0.0;
        for (int i = 0; i < block; ++i) s += v[i] * (sylvester_sign(i, j) * norm);
        tmp[j] = s;
      }
      for (int j = 0; j < block; ++j) v[j] = tmp[j];
    }
}

std::vector<float> hadamard_matrix(int block) {
  if (!is_power_of_two(block))
    throw Error(ErrorKind::kUsage,
                "Hadamard block size must be a power of two, got " + std::to_string(block));
  const double norm = 1.0 / std::sqrt(static_cast<double>(block));
  std::vector<float> h(static_cast<size_t>(block) * block);
  for (int i = 0; i < block; ++i)
    for (int j = 0; j < block; ++j)
      h[static_cast<size_t>(i) * block + j] = static_cast<float>(sylvester_sign(i, j) * norm);
  return h;
}

}  // namespace fp4q::transform
