#include "fp4q/calib/dataset.h"

#include <gtest/gtest.h>

#include <numeric>

#include "fp4q/core/error.h"

using fp4q::calib::sample_windows;

TEST(CalibDataset, WindowsAreSlicesOfTheStreamWithBos) {
  std::vector<int32_t> stream(1000);
  std::iota(stream.begin(), stream.end(), 10);
  auto set = sample_windows(stream, 16, 64, 42, /*bos=*/1, "test");
  ASSERT_EQ(set.samples.size(), 16u);
  for (size_t i = 0; i < set.samples.size(); ++i) {
    const auto& s = set.samples[i];
    ASSERT_EQ(s.size(), 64u);
    EXPECT_EQ(s[0], 1);
    for (size_t j = 1; j < s.size(); ++j) EXPECT_EQ(s[j], stream[set.offsets[i] + j - 1]);
    EXPECT_LE(set.offsets[i] + 63, 1000);
  }
}

TEST(CalibDataset, DeterministicPerSeedAndSeedsDiffer) {
  std::vector<int32_t> stream(5000);
  std::iota(stream.begin(), stream.end(), 0);
  auto a = sample_windows(stream, 8, 32, 7, -1, "t");
  auto b = sample_windows(stream, 8, 32, 7, -1, "t");
  auto c = sample_windows(stream, 8, 32, 8, -1, "t");
  EXPECT_EQ(a.offsets, b.offsets);
  EXPECT_NE(a.offsets, c.offsets);
  for (const auto& s : a.samples) EXPECT_EQ(s.size(), 32u);
}

TEST(CalibDataset, ExactFitAndTooShort) {
  std::vector<int32_t> stream(31, 5);
  auto set = sample_windows(stream, 3, 32, 1, 1, "t");  // 31 body tokens fit exactly
  for (auto off : set.offsets) EXPECT_EQ(off, 0);
  try {
    sample_windows(stream, 3, 33, 1, 1, "calib.txt");
    FAIL() << "expected an error";
  } catch (const fp4q::Error& e) {
    EXPECT_EQ(e.kind(), fp4q::ErrorKind::kInput);
    EXPECT_NE(std::string(e.what()).find("calib.txt"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("31 tokens"), std::string::npos);
  }
}

TEST(CalibDataset, OffsetsCoverTheRangeRoughlyUniformly) {
  std::vector<int32_t> stream(1100);
  auto set = sample_windows(stream, 4000, 101, 3, -1, "t");  // 1000 possible starts
  int low = 0;
  for (auto off : set.offsets) {
    ASSERT_GE(off, 0);
    ASSERT_LE(off, 999);
    low += off < 500;
  }
  EXPECT_NEAR(low / 4000.0, 0.5, 0.05);
}
