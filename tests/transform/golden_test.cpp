// The block Hadamard rotation against PyTorch: tools/golden_formats.py stores each source matrix
// and its rotation x @ blockdiag(H_b/sqrt b) (Sylvester recursion in torch, float64 product,
// rounded once to float32) in tests/data/golden_formats/. hadamard_rows (float FWHT) must match
// to 1e-6 relative.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fp4q/transform/hadamard.h"

namespace {

const std::string kDir = std::string(FP4Q_TEST_DATA_DIR) + "/golden_formats/";

std::vector<float> read_f32(const std::string& name) {
  std::ifstream f(kDir + name, std::ios::binary);
  EXPECT_TRUE(f.good()) << "missing golden file " << kDir + name;
  std::vector<char> b((std::istreambuf_iterator<char>(f)), {});
  std::vector<float> v(b.size() / 4);
  std::memcpy(v.data(), b.data(), v.size() * 4);  // little-endian host assumed
  return v;
}

}  // namespace

TEST(Golden, HadamardMatchesPyTorchRotation) {
  std::ifstream mf(kDir + "manifest.json");
  auto m = nlohmann::json::parse(mf);
  int compared = 0;
  for (const auto& c : m["cases"]) {
    const int b = c["hadamard"];
    if (b == 0) continue;
    const int64_t rows = c["rows"], cols = c["cols"];
    auto x = read_f32(std::string(c["source"]) + ".in.f32");
    auto want = read_f32(std::string(c["name"]) + ".in.f32");
    fp4q::transform::hadamard_rows(x.data(), rows, cols, b);
    double num = 0, den = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      num += (double(x[i]) - want[i]) * (double(x[i]) - want[i]);
      den += double(want[i]) * want[i];
    }
    // Per element: float rounding of the butterflies is relative to the block's magnitude, so
    // allow 1e-6 of the element plus 1e-6 of its row's RMS (cancellation in small outputs; m3's
    // rows span 2^-20 .. 2^11, so a per-row scale keeps the bound tight).
    for (int64_t r = 0; r < rows; ++r) {
      double ss = 0;
      for (int64_t j = 0; j < cols; ++j) ss += double(want[r * cols + j]) * want[r * cols + j];
      const double rms = std::sqrt(ss / cols);
      for (int64_t j = 0; j < cols; ++j) {
        const size_t i = r * cols + j;
        ASSERT_NEAR(x[i], want[i], 1e-6 * (std::fabs(want[i]) + rms)) << c["name"] << " " << i;
      }
    }
    EXPECT_LT(std::sqrt(num / den), 1e-6) << c["name"];
    ++compared;
  }
  EXPECT_EQ(compared, 3);
}
