// fp4q/transform/hadamard.h — the MR-GPTQ block Hadamard rotation.
//
// B = blockdiag(H_b, ..., H_b) with H_b = Sylvester Hadamard (natural order, exactly
// scipy.linalg.hadamard(b)) / sqrt(b): H_1 = [1], H_2n = [[H_n, H_n], [H_n, -H_n]]. H_b is
// symmetric and orthonormal, so B = B^T = B^-1 and applying a transform twice is the identity.
// A weight W [out x in] is rotated on its input dimension, W <- W B, i.e. every row is split into
// consecutive blocks of b columns and each block (a row vector v) becomes v H_b. This is what
// FP-Quant (fast_hadamard_transform with scale 1/sqrt(b)) and compressed-tensors' "hadamard"
// transform (head_dim = b) compute; no random signs, no permutation.
// Block size conventions: block must be a power of two >= 2 that divides cols; block 0 or 1
// means "no rotation" (no-op). Otherwise fp4q::Error: kUsage for a block that is not a power of
// two (or negative), kInput when it does not divide the column count.
#pragma once

#include <cstdint>
#include <vector>

namespace fp4q::transform {

bool is_power_of_two(int64_t n);

// Throws as documented above unless `block` is usable for a matrix with `cols` columns.
// Returns false for the no-op blocks 0 and 1, true otherwise. `where` names the tensor.
bool check_hadamard_block(int64_t cols, int block, const char* where = nullptr);

// In place: x [rows x cols] row-major; each row's consecutive `block`-column blocks v become
// v * H_b / sqrt(b). Fast Walsh–Hadamard butterflies (b log b adds per block) then one multiply
// by 1/sqrt(b); OpenMP over rows, result independent of the thread count.
void hadamard_rows(float* x, int64_t rows, int64_t cols, int block);
// The same transform applied along the ROWS dimension: x [rows x cols] <- B·x, i.e. each
// consecutive `block`-row block R becomes H_b/sqrt(b) · R (rows must be divisible by block).
// Every column sees exactly the butterflies hadamard_rows applies to a row, so hadamard_cols(x)
// equals transpose(hadamard_rows(transpose(x))) bit for bit. OpenMP over column chunks.
void hadamard_cols(float* x, int64_t rows, int64_t cols, int block);
// Same in double precision (e.g. for rotating a Hessian: H <- B H B is hadamard_rows on H, then
// on its transpose — H is symmetric so twice hadamard_rows with a transpose in between).
void hadamard_rows(double* x, int64_t rows, int64_t cols, int block);
// Scalar reference twin: explicit product of each block with the matrix hadamard_matrix(block)
// (entries computed in double as +-1/sqrt(b)), O(b^2) per block. For tests.
void hadamard_rows_ref(double* x, int64_t rows, int64_t cols, int block);
// [b x b] row-major normalized Sylvester matrix H_b/sqrt(b) in float; entry (i, j) is
// (-1)^popcount(i & j) / sqrt(b). block must be a power of two >= 1.
std::vector<float> hadamard_matrix(int block);

}  // namespace fp4q::transform
