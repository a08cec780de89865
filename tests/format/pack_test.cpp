// Nibble packing against hand-computed bytes.
#include <gtest/gtest.h>

#include <vector>

#include "fp4q/core/error.h"
#include "fp4q/format/format.h"

using namespace fp4q::format;

TEST(Pack, HandComputedBytes) {
  // row 0: codes 1,2,3,4 -> 0x21, 0x43; row 1: 0xF,0x0,0x8,0x7 -> 0x0F, 0x78
  const std::vector<uint8_t> codes = {1, 2, 3, 4, 0xF, 0x0, 0x8, 0x7};
  auto p = pack_nibbles(codes.data(), 2, 4);
  EXPECT_EQ(p, (std::vector<uint8_t>{0x21, 0x43, 0x0F, 0x78}));
  EXPECT_EQ(unpack_nibbles(p.data(), 2, 4), codes);
}

TEST(Pack, FromValues) {
  // FP-Quant/CT example [0.5, 0, 0, 6]: CT packs +0 as code 0 -> 0x01, 0x70 (FP-Quant's
  // bucketize would give 0x81, 0x78; both decode to the same values).
  const float x[4] = {0.5f, 0.0f, -0.0f, 6.0f};
  uint8_t c[4];
  for (int i = 0; i < 4; ++i) c[i] = e2m1_encode(x[i]);
  auto p = pack_nibbles(c, 1, 4);
  EXPECT_EQ(p, (std::vector<uint8_t>{0x01, 0x78}));
}

TEST(Pack, UpperBitsOfCodesIgnoredAndAllBytesRoundTrip) {
  std::vector<uint8_t> codes(512);
  for (int i = 0; i < 256; ++i) {
    codes[2 * i] = static_cast<uint8_t>(0xA0 | (i & 0xF));
    codes[2 * i + 1] = static_cast<uint8_t>(0x50 | (i >> 4));
  }
  auto p = pack_nibbles(codes.data(), 4, 128);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(p[i], i);
  auto u = unpack_nibbles(p.data(), 4, 128);
  for (int i = 0; i < 512; ++i) EXPECT_EQ(u[i], codes[i] & 0xF);
}

TEST(Pack, OddColumnsRejected) {
  uint8_t c[3] = {0, 0, 0};
  EXPECT_THROW(pack_nibbles(c, 1, 3), fp4q::Error);
  EXPECT_THROW(unpack_nibbles(c, 1, 3), fp4q::Error);
}
