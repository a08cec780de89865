// Byte-for-byte comparison with golden files computed independently by PyTorch
// (tools/golden_formats.py, run once on the GPU machine; files in tests/data/golden_formats/).
// For every case and format: packed element bytes, scale bytes, NVFP4 global scale bits and
// (unrotated cases) dequantized floats must be identical. Rotated cases store the rotated input
// (float64 product rounded to float32); the quantization is compared on that stored rotated input
// so that the bytes are well defined (tests/transform/golden_test.cpp checks that our
// hadamard_rows reproduces the stored rotation to 1e-6 relative).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fp4q/core/half.h"
#include "fp4q/format/format.h"

using namespace fp4q::format;

namespace {

const std::string kDir = std::string(FP4Q_TEST_DATA_DIR) + "/golden_formats/";

std::vector<uint8_t> read_bytes(const std::string& name) {
  std::ifstream f(kDir + name, std::ios::binary);
  EXPECT_TRUE(f.good()) << "missing golden file " << kDir + name;
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

std::vector<float> read_f32(const std::string& name) {
  auto b = read_bytes(name);
  std::vector<float> v(b.size() / 4);
  std::memcpy(v.data(), b.data(), v.size() * 4);  // little-endian host assumed (x86/arm64)
  return v;
}

nlohmann::json manifest() {
  std::ifstream f(kDir + "manifest.json");
  return nlohmann::json::parse(f);
}

// Scale codes as they are stored on disk: 1 byte (E4M3 / E8M0) or 2 bytes LE (F16).
std::vector<uint8_t> scale_bytes(const GroupScales& s) {
  std::vector<uint8_t> out;
  for (uint16_t c : s.codes) {
    out.push_back(static_cast<uint8_t>(c & 0xff));
    if (s.format == FormatId::kINT4) out.push_back(static_cast<uint8_t>(c >> 8));
  }
  return out;
}

}  // namespace

TEST(Golden, ManifestComplete) {
  auto m = manifest();
  EXPECT_TRUE(m["errors"].empty()) << m["errors"].dump();
  EXPECT_EQ(m["cases"].size(), 6u);
}

TEST(Golden, QuantizedBytesMatchPyTorch) {
  auto m = manifest();
  int compared = 0;
  for (const auto& c : m["cases"]) {
    const std::string name = c["name"];
    const int64_t rows = c["rows"], cols = c["cols"];
    auto x = read_f32(name + ".in.f32");
    ASSERT_EQ(static_cast<int64_t>(x.size()), rows * cols) << name;
    for (const auto& [fmt, f] : c["formats"].items()) {
      SCOPED_TRACE(name + " " + fmt);
      const FormatId id = parse_format(fmt);
      auto s = choose_scales(id, x.data(), rows, cols, ScaleMethod::kAbsmax, 0.0f, name);
      const uint32_t gs_bits = f["global_scale_bits"];
      EXPECT_EQ(fp4q::float_to_bits(s.global_scale), gs_bits)
          << s.global_scale << " vs " << fp4q::bits_to_float(gs_bits);
      auto q = quantize_rtn(x.data(), rows, cols, s, name);
      auto packed = pack_nibbles(q.codes.data(), rows, cols);
      auto gp = read_bytes(f["packed"]);
      ASSERT_EQ(packed.size(), gp.size());
      int bad = 0;
      for (size_t i = 0; i < gp.size(); ++i)
        if (packed[i] != gp[i] && bad++ < 5)
          ADD_FAILURE() << "packed byte " << i << " (row " << i / (cols / 2) << "): ours 0x"
                        << std::hex << int(packed[i]) << " torch 0x" << int(gp[i]) << std::dec;
      EXPECT_EQ(bad, 0) << "differing packed bytes";
      auto sb = scale_bytes(s);
      auto gsb = read_bytes(f["scales"]);
      ASSERT_EQ(sb.size(), gsb.size());
      bad = 0;
      for (size_t i = 0; i < gsb.size(); ++i)
        if (sb[i] != gsb[i] && bad++ < 5)
          ADD_FAILURE() << "scale byte " << i << ": ours " << int(sb[i]) << " torch " << int(gsb[i]);
      EXPECT_EQ(bad, 0) << "differing scale bytes";
      if (f.contains("deq")) {
        std::vector<float> d(x.size());
        dequantize(q, d.data());
        auto gd = read_f32(f["deq"]);
        ASSERT_EQ(gd.size(), d.size());
        bad = 0;
        for (size_t i = 0; i < d.size(); ++i)
          if (d[i] != gd[i] && bad++ < 5)
            ADD_FAILURE() << "dequant " << i << ": ours " << d[i] << " torch " << gd[i];
        EXPECT_EQ(bad, 0) << "differing dequantized values";
      }
      ++compared;
    }
  }
  EXPECT_EQ(compared, 18);
}
