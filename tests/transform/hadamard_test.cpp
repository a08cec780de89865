// Block Hadamard: fast WHT vs explicit double matrix product, Sylvester matrix, involution,
// orthonormality, errors.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <random>
#include <vector>

#include "fp4q/core/error.h"
#include "fp4q/transform/hadamard.h"

using namespace fp4q::transform;

namespace {

// Unnormalized Sylvester matrix by the recursion H_2n = [[H, H], [H, -H]] (scipy.linalg.hadamard).
std::vector<int> sylvester(int n) {
  std::vector<int> h{1};
  for (int m = 1; m < n; m *= 2) {
    std::vector<int> g(4 * m * m);
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < m; ++j) {
        int v = h[i * m + j];
        g[i * 2 * m + j] = v;
        g[i * 2 * m + j + m] = v;
        g[(i + m) * 2 * m + j] = v;
        g[(i + m) * 2 * m + j + m] = -v;
      }
    h.swap(g);
  }
  return h;
}

std::vector<float> random_matrix(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(rows * cols));
  for (auto& v : x) v = n(rng);
  return x;
}

}  // namespace

TEST(Hadamard, PowerOfTwo) {
  EXPECT_TRUE(is_power_of_two(1));
  EXPECT_TRUE(is_power_of_two(2));
  EXPECT_TRUE(is_power_of_two(int64_t{1} << 40));
  EXPECT_FALSE(is_power_of_two(0));
  EXPECT_FALSE(is_power_of_two(-4));
  EXPECT_FALSE(is_power_of_two(12));
}

TEST(Hadamard, MatrixEqualsExplicitSylvester) {
  // b = 2, 4, 8 written out by hand (rows of scipy.linalg.hadamard).
  const int h2[4] = {1, 1, 1, -1};
  const int h4[16] = {1, 1, 1, 1, 1, -1, 1, -1, 1, 1, -1, -1, 1, -1, -1, 1};
  const int h8[64] = {1, 1,  1,  1,  1,  1,  1,  1,  1, -1, 1,  -1, 1,  -1, 1,  -1,
                      1, 1,  -1, -1, 1,  1,  -1, -1, 1, -1, -1, 1,  1,  -1, -1, 1,
                      1, 1,  1,  1,  -1, -1, -1, -1, 1, -1, 1,  -1, -1, 1,  -1, 1,
                      1, 1,  -1, -1, -1, -1, 1,  1,  1, -1, -1, 1,  -1, 1,  1,  -1};
  const int* hand[3] = {h2, h4, h8};
  for (int t = 0; t < 3; ++t) {
    const int b = 2 << t;
    auto h = hadamard_matrix(b);
    for (int i = 0; i < b * b; ++i)
      EXPECT_EQ(h[i], static_cast<float>(hand[t][i] / std::sqrt(static_cast<double>(b)))) << b;
  }
  for (int b = 1; b <= 256; b *= 2) {
    auto h = hadamard_matrix(b);
    auto s = sylvester(b);
    for (int i = 0; i < b * b; ++i)
      ASSERT_EQ(h[i], static_cast<float>(s[i] / std::sqrt(static_cast<double>(b))));
  }
}

TEST(Hadamard, MatrixRowsOrthonormalAndSymmetric) {
  for (int b = 2; b <= 128; b *= 2) {
    auto h = hadamard_matrix(b);
    for (int i = 0; i < b; ++i)
      for (int j = 0; j < b; ++j) {
        EXPECT_EQ(h[i * b + j], h[j * b + i]);
        double d = 0;
        for (int k = 0; k < b; ++k) d += static_cast<double>(h[i * b + k]) * h[j * b + k];
        EXPECT_NEAR(d, i == j ? 1.0 : 0.0, 1e-6) << b << " " << i << " " << j;
      }
  }
}

TEST(Hadamard, FastEqualsReference) {
  for (int b = 2; b <= 128; b *= 2) {
    const int64_t rows = 300, cols = 256;  // > 64K elements
    auto x = random_matrix(rows, cols, static_cast<uint32_t>(b));
    std::vector<double> ref(x.begin(), x.end());
    std::vector<float> fast = x;
    std::vector<double> fastd(x.begin(), x.end());
    hadamard_rows(fast.data(), rows, cols, b);
    hadamard_rows(fastd.data(), rows, cols, b);
    hadamard_rows_ref(ref.data(), rows, cols, b);
    double num = 0, den = 0, numd = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      num += (fast[i] - ref[i]) * (fast[i] - ref[i]);
      numd += (fastd[i] - ref[i]) * (fastd[i] - ref[i]);
      den += ref[i] * ref[i];
      ASSERT_NEAR(fast[i], ref[i], 1e-5 * (1 + std::fabs(ref[i]))) << b << " " << i;
    }
    EXPECT_LT(std::sqrt(num / den), 1e-6) << b;
    EXPECT_LT(std::sqrt(numd / den), 1e-14) << b;
  }
}

TEST(Hadamard, ReferenceIsBlockTimesMatrix) {
  // Independent: block (1 x b row vector) times the explicit integer Sylvester matrix.
  const int b = 16;
  const int64_t rows = 3, cols = 48;
  auto x = random_matrix(rows, cols, 7);
  std::vector<double> got(x.begin(), x.end());
  hadamard_rows_ref(got.data(), rows, cols, b);
  auto s = sylvester(b);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t blk = 0; blk < cols / b; ++blk)
      for (int j = 0; j < b; ++j) {
        double e = 0;
        for (int i = 0; i < b; ++i) e += x[r * cols + blk * b + i] * s[i * b + j];
        EXPECT_NEAR(got[r * cols + blk * b + j], e / 4.0, 1e-12);
      }
}

TEST(Hadamard, InvolutionIsIdentity) {
  for (int b = 2; b <= 128; b *= 2) {
    auto x = random_matrix(17, 512, 100 + b);
    auto y = x;
    hadamard_rows(y.data(), 17, 512, b);
    bool changed = false;
    for (size_t i = 0; i < x.size(); ++i) changed |= (x[i] != y[i]);
    EXPECT_TRUE(changed);
    hadamard_rows(y.data(), 17, 512, b);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(y[i], x[i], 1e-5f * (1 + std::fabs(x[i])));
  }
}

TEST(Hadamard, NoOpBlocksAndErrors) {
  auto x = random_matrix(2, 24, 5);
  auto y = x;
  hadamard_rows(y.data(), 2, 24, 0);
  hadamard_rows(y.data(), 2, 24, 1);
  EXPECT_EQ(x, y);
  auto expect_kind = [&](int block, int64_t cols, fp4q::ErrorKind kind) {
    std::vector<float> v(static_cast<size_t>(2 * cols), 1.0f);
    std::vector<double> d(v.begin(), v.end());
    try {
      hadamard_rows(v.data(), 2, cols, block);
      ADD_FAILURE() << "no throw for block " << block << " cols " << cols;
    } catch (const fp4q::Error& e) {
      EXPECT_EQ(e.kind(), kind) << block << " " << cols;
    }
    EXPECT_THROW(hadamard_rows_ref(d.data(), 2, cols, block), fp4q::Error);
  };
  expect_kind(12, 24, fp4q::ErrorKind::kUsage);
  expect_kind(3, 24, fp4q::ErrorKind::kUsage);
  expect_kind(-8, 24, fp4q::ErrorKind::kUsage);
  expect_kind(16, 24, fp4q::ErrorKind::kInput);
  expect_kind(32, 24, fp4q::ErrorKind::kInput);
  EXPECT_THROW(hadamard_matrix(0), fp4q::Error);
  EXPECT_THROW(hadamard_matrix(6), fp4q::Error);
}

TEST(Hadamard, ThreadCountIndependent) {
  auto x = random_matrix(400, 256, 9);
  auto a = x, b = x;
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  hadamard_rows(a.data(), 400, 256, 64);
  omp_set_num_threads(3);
  hadamard_rows(b.data(), 400, 256, 64);
  omp_set_num_threads(saved);
  EXPECT_EQ(a, b);
}

// The vectorised float path (blocks 16..128) and hadamard_cols against the scalar butterflies:
// bit-identical, including the equivalence cols(x) == transpose(rows(transpose(x))).
namespace {
void scalar_fwht_rows(std::vector<float>& x, int64_t rows, int64_t cols, int b) {
  const float norm = static_cast<float>(1.0 / std::sqrt(static_cast<double>(b)));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c0 = 0; c0 < cols; c0 += b) {
      float* v = x.data() + r * cols + c0;
      for (int h = 1; h < b; h *= 2)
        for (int i = 0; i < b; i += 2 * h)
          for (int j = i; j < i + h; ++j) {
            const float a = v[j], c = v[j + h];
            v[j] = a + c;
            v[j + h] = a - c;
          }
      for (int j = 0; j < b; ++j) v[j] *= norm;
    }
}
}  // namespace

TEST(HadamardFloat, VectorPathAndColumnsAreBitIdenticalToScalarButterflies) {
  std::mt19937 rng(77);
  std::normal_distribution<float> d(0.0f, 3.0f);
  for (int b : {2, 4, 8, 16, 32, 64, 128}) {
    const int64_t rows = 2 * b + 3 * (b >= 16), cols = 4 * b;
    std::vector<float> x(static_cast<size_t>(rows * cols));
    for (auto& v : x) v = d(rng);
    std::vector<float> fast = x, ref = x;
    fp4q::transform::hadamard_rows(fast.data(), rows, cols, b);
    scalar_fwht_rows(ref, rows, cols, b);
    ASSERT_EQ(fast, ref) << "rows, block " << b;
    // columns: a [cols x rows'] matrix with rows' divisible by b
    const int64_t r2 = 2 * b, c2 = 37;
    std::vector<float> y(static_cast<size_t>(r2 * c2));
    for (auto& v : y) v = d(rng);
    std::vector<float> yt(y.size());
    for (int64_t i = 0; i < r2; ++i)
      for (int64_t j = 0; j < c2; ++j) yt[j * r2 + i] = y[i * c2 + j];
    fp4q::transform::hadamard_cols(y.data(), r2, c2, b);
    scalar_fwht_rows(yt, c2, r2, b);
    for (int64_t i = 0; i < r2; ++i)
      for (int64_t j = 0; j < c2; ++j) ASSERT_EQ(y[i * c2 + j], yt[j * r2 + i]) << "cols, block " << b;
  }
}
