// Tests of linalg::gemm_bf16_nt (AVX512_BF16 kernel, bf16_gemm.h):
//  * bit-identical to the scalar emulation of the documented order (pairs in order, odd element
//    then even, FMA per element, DAZ/FTZ) on many edge shapes (m, n not multiples of 6 / 64 /
//    the tile, k odd, k across several k blocks), strided leading dimensions;
//  * within the float32 accumulation bound of the float64 reference on the same bf16 inputs:
//    |C - C_ref| <= k·2^-24·Σ|a_p b_p| (first-order bound of any float32 summation order; the
//    test uses 1.01·k·u·Σ|a_p b_p| + 1e-30);
//  * inputs really are rounded to bf16 with RNE (ties, NaN, Inf, an exactly representable case);
//  * identical bits for 1 and 2 threads.
// Every test skips (GTEST_SKIP) on a CPU without AVX512_BF16, except the CPU-check test.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "fp4q/core/error.h"
#include "fp4q/core/half.h"
#include "fp4q/core/parallel.h"
#include "fp4q/linalg/bf16_gemm.h"

using namespace fp4q::linalg;

namespace {

#define SKIP_WITHOUT_BF16()                                                           \
  if (!cpu_has_avx512_bf16()) GTEST_SKIP() << "CPU lacks AVX512_BF16 (no avx512_bf16 flag)"

std::vector<float> randn(int64_t n, uint64_t seed, float sd = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, sd);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = nd(rng);
  return v;
}

bool same_bits(float x, float y) {
  uint32_t a, b;
  std::memcpy(&a, &x, 4);
  std::memcpy(&b, &y, 4);
  return a == b;
}

struct ThreadGuard {
  int saved_ = fp4q::num_threads();
  ~ThreadGuard() { fp4q::set_num_threads(saved_); }
};

// Runs the kernel on A [m x k] (ld lda), B [n x k] (ld ldb), C with ld ldc; checks bits against
// the emulation, the bound against the float64 reference, and that C's padding is untouched.
void check_shape(int64_t m, int64_t n, int64_t k, int64_t pad, uint64_t seed) {
  const int64_t lda = k + pad, ldb = k + 2 * pad, ldc = n + pad;
  const auto a = randn(m * lda, seed), b = randn(n * ldb, seed + 1, 0.05f);
  std::vector<float> c(static_cast<size_t>(m * ldc), 7.0f), e(static_cast<size_t>(m * ldc), 7.0f);
  gemm_bf16_nt(m, n, k, a.data(), lda, b.data(), ldb, c.data(), ldc);
  gemm_bf16_nt_emul(m, n, k, a.data(), lda, b.data(), ldb, e.data(), ldc);
  std::vector<double> r(static_cast<size_t>(m * n));
  gemm_bf16_nt_ref(m, n, k, a.data(), lda, b.data(), ldb, r.data(), n);
  int64_t mismatch = 0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      const float got = c[i * ldc + j];
      if (!same_bits(got, e[i * ldc + j]) && mismatch++ < 3)
        ADD_FAILURE() << m << "x" << n << "x" << k << " C[" << i << "][" << j << "] = " << got
                      << " emulation " << e[i * ldc + j];
      double abs_sum = 0;
      for (int64_t p = 0; p < k; ++p)
        abs_sum += std::fabs(static_cast<double>(fp4q::bf16_to_float(fp4q::float_to_bf16(a[i * lda + p]))) *
                             fp4q::bf16_to_float(fp4q::float_to_bf16(b[j * ldb + p])));
      const double bound = 1.01 * static_cast<double>(k) * std::ldexp(1.0, -24) * abs_sum + 1e-30;
      ASSERT_LE(std::fabs(got - r[i * n + j]), bound) << m << "x" << n << "x" << k << " [" << i << "][" << j << "]";
    }
    for (int64_t j = n; j < ldc; ++j) ASSERT_EQ(c[i * ldc + j], 7.0f) << "padding written";
  }
  EXPECT_EQ(mismatch, 0) << m << "x" << n << "x" << k;
}

}  // namespace

TEST(Bf16Gemm, CpuCheckNamesTheFeature) {
  if (cpu_has_avx512_bf16()) {
    EXPECT_NO_THROW(require_bf16_gemm("--compute"));
    return;
  }
  try {
    require_bf16_gemm("--compute");
    FAIL() << "expected an error";
  } catch (const fp4q::Error& err) {
    EXPECT_EQ(err.kind(), fp4q::ErrorKind::kUsage);
    EXPECT_NE(std::string(err.what()).find("AVX512_BF16"), std::string::npos);
    EXPECT_EQ(err.where(), "--compute");
  }
}

TEST(Bf16Gemm, EdgeShapesMatchEmulationBitsAndReferenceBound) {
  SKIP_WITHOUT_BF16();
  // m around the 6-row micro-kernel and the 192-row tile, n around 16/64 lanes and the 256
  // tile, k odd / even / across the 512-element k block.
  const int64_t ms[] = {1, 5, 6, 7, 13, 193};
  const int64_t ns[] = {1, 15, 17, 64, 65, 257};
  const int64_t ks[] = {1, 2, 3, 31, 33, 64, 511, 513, 1025};
  uint64_t seed = 1;
  for (int64_t m : ms)
    for (int64_t n : ns)
      for (int64_t k : ks) {
        if (m * n * k > 4000000) continue;  // keep the scalar references quick
        check_shape(m, n, k, (seed % 3) * 3, seed);
        ++seed;
      }
}

TEST(Bf16Gemm, LargerParallelShapeMatchesEmulation) {
  SKIP_WITHOUT_BF16();
  check_shape(200, 300, 1100, 1, 99);  // several tiles, above the parallel threshold
}

TEST(Bf16Gemm, InputsRoundToNearestEven) {
  SKIP_WITHOUT_BF16();
  // 1 x 1 x 2 products with B = (1, 0) select A's first element as rounded to bf16.
  const float cases[][2] = {
      {1.0f + 0x1p-8f, 1.0f},                      // tie, even below -> 1
      {1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-6f},        // tie, odd below -> up
      {1.0f + 0x1p-8f + 0x1p-20f, 1.0f + 0x1p-7f}, // just above the tie -> up
      {-3.0f, -3.0f},                              // exact
      {3.4e38f, std::numeric_limits<float>::infinity()},  // above the largest bf16 -> Inf
  };
  for (const auto& cs : cases) {
    const float a[2] = {cs[0], 0.0f}, b[2] = {1.0f, 0.0f};
    float c = 0;
    gemm_bf16_nt(1, 1, 2, a, 2, b, 2, &c, 1);
    EXPECT_EQ(c, cs[1]) << cs[0];
  }
  const float a[2] = {std::numeric_limits<float>::quiet_NaN(), 1.0f}, b[2] = {1.0f, 1.0f};
  float c = 0;
  gemm_bf16_nt(1, 1, 2, a, 2, b, 2, &c, 1);
  EXPECT_TRUE(std::isnan(c));
  // k = 0: zeros.
  float z[4] = {1, 2, 3, 4};
  gemm_bf16_nt(2, 2, 0, a, 1, b, 1, z, 2);
  for (float v : z) EXPECT_EQ(v, 0.0f);
}

TEST(Bf16Gemm, BitIdenticalFor1And2Threads) {
  SKIP_WITHOUT_BF16();
  ThreadGuard guard;
  const int64_t m = 400, n = 520, k = 777;
  const auto a = randn(m * k, 5), b = randn(n * k, 6);
  std::vector<float> c1(static_cast<size_t>(m * n)), c2(c1.size());
  fp4q::set_num_threads(1);
  gemm_bf16_nt(m, n, k, a.data(), k, b.data(), k, c1.data(), n);
  fp4q::set_num_threads(2);
  gemm_bf16_nt(m, n, k, a.data(), k, b.data(), k, c2.data(), n);
  EXPECT_EQ(std::memcmp(c1.data(), c2.data(), c1.size() * sizeof(float)), 0);
}
