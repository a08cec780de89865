// fp4q/linalg/bf16_gemm.h — C(fp32) = bf16(A) · bf16(B)ᵀ with float32 accumulation, on CPUs with
// AVX512_BF16 (vdpbf16ps), for the optional bf16 calibration matmuls (`--compute bf16`).
//
// Why: GPU quantizers (GPTQModel, llm-compressor, FP-Quant) run their calibration forward with
// bf16 activations and weights and float32 accumulation. This kernel reproduces that arithmetic
// on the CPU, and is faster than float32 SGEMM because vdpbf16ps does 32 multiply-adds per
// 512-bit instruction where vfmadd231ps does 16. It is OFF by default; float32 (linalg::sgemm)
// stays the reference path.
//
// Numerics of gemm_bf16_nt (all of it is a function of the inputs only):
//   * inputs: every element of A and B is rounded to bf16 with round-to-nearest-even
//     (fp4q::float_to_bf16 in core/half.h: NaN stays NaN, overflow goes to +-Inf);
//   * vdpbf16ps treats bf16 inputs below 2^-126 in magnitude (bf16 subnormals) as zero and
//     flushes subnormal float32 results to zero (DAZ/FTZ, whatever MXCSR says); it rounds to
//     nearest even;
//   * products: a bf16 × bf16 product has at most 16 significant bits, so it is exact in float32
//     (barring underflow below 2^-126, flushed as above);
//   * accumulation: float32, in ONE fixed order per output element: k is consumed in pairs
//     (2p, 2p+1), p = 0, 1, ..., ceil(k/2)-1 (an odd k is padded with a zero pair element), and
//     each pair does acc = fma(a[2p+1], b[2p+1], acc); acc = fma(a[2p], b[2p], acc) from acc = +0
//     (Intel SDM's definition of VDPBF16PS). Partial sums between k blocks are stored in C as
//     float32, which loses nothing, so the order never depends on the tile grid, the k blocking,
//     the position of an element inside a register tile or the thread count;
//   * output: float32 (no rounding to bf16).
// gemm_bf16_nt_emul is a scalar emulation of exactly this order (tests compare bits with it);
// gemm_bf16_nt_ref accumulates the same bf16-rounded inputs in float64 (the independent
// reference; the kernel differs from it by float32 accumulation error only:
// |C - C_ref| <= k·2^-24·Σ_p |a_p b_p| to first order).
// Because vdpbf16ps's internal order is the CPU's, a CPU that implements it differently from the
// SDM's two sequential FMAs (tests/linalg checks this one bit-exactly against the emulation)
// may give different last bits; on one machine results are identical for any thread count.
//
// Threading: the output is cut into a fixed grid of kTileM x kTileN tiles (a function of the shape
// only), each tile packs its own bf16 panels and runs on one thread; parallel_for_dynamic over
// tiles. Safe to call from inside an OpenMP region (tiles then run serially).
//
// AMX-BF16 (Sapphire Rapids) is not used: this machine (AMD Zen 4) has no AMX to test a tile
// kernel on; the AVX512_BF16 kernel runs there too.
#pragma once

#include <cstdint>
#include <string>

namespace fp4q::linalg {

// True when the CPU and OS support AVX512_BF16 (with AVX512F/BW/VL), detected at run time.
bool cpu_has_avx512_bf16();
// Throws Error(kUsage) naming the missing CPU feature (AVX512_BF16) and `where` (e.g. the CLI
// option) when cpu_has_avx512_bf16() is false.
void require_bf16_gemm(const std::string& where);

// C [m x n] (ld ldc) = bf16(A) · bf16(B)ᵀ, A [m x k] row-major (ld lda), B [n x k] row-major
// (ld ldb) — the nn.Linear layout: C = X · Wᵀ with X = A, W = B. C's previous contents are
// ignored. Needs AVX512_BF16 (Error(kUsage) otherwise). k == 0 gives zeros.
void gemm_bf16_nt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                  int64_t ldb, float* c, int64_t ldc);

// Scalar emulation of gemm_bf16_nt's documented order (same rounding, DAZ/FTZ, pair order), for
// tests: bit-identical to the kernel on a CPU that implements vdpbf16ps as the SDM defines it.
void gemm_bf16_nt_emul(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                       const float* b, int64_t ldb, float* c, int64_t ldc);

// Reference: the same bf16-rounded inputs (RNE, bf16 subnormals as zero), products and sums in
// float64, output double.
void gemm_bf16_nt_ref(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                      const float* b, int64_t ldb, double* c, int64_t ldc);

}  // namespace fp4q::linalg
