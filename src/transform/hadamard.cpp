// src/transform/hadamard.cpp — block Hadamard rotation (see hadamard.h).
#include "fp4q/transform/hadamard.h"

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
  hadamard_rows_fast(x, rows, cols, block);
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
