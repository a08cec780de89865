// Calibration windows JSON (fp4q/calib/windows.h): what --dump-calib writes is exactly what
// sample_windows produced, and read_windows gives it back; malformed files are refused with the
// file and the offending window named.
#include "fp4q/calib/windows.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "fp4q/core/error.h"

namespace {

std::string tmp_file(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("fp4q-windows-" + std::to_string(::getpid()) + "-" + name)).string();
}

void write(const std::string& path, const std::string& s) { std::ofstream(path, std::ios::binary) << s; }

fp4q::Error read_error(const std::string& text, int64_t vocab = 0) {
  const auto p = tmp_file("bad.json");
  write(p, text);
  try {
    fp4q::calib::read_windows(p, vocab);
  } catch (const fp4q::Error& e) {
    std::remove(p.c_str());
    return e;
  }
  std::remove(p.c_str());
  ADD_FAILURE() << "no error for " << text;
  return fp4q::Error(fp4q::ErrorKind::kInternal, "none");
}

}  // namespace

TEST(CalibWindows, DumpEqualsSampleWindowsAndReadsBack) {
  std::vector<int32_t> stream(5000);
  for (size_t i = 0; i < stream.size(); ++i) stream[i] = static_cast<int32_t>((i * 7919) % 50000);
  const auto set = fp4q::calib::sample_windows(stream, 12, 96, 42, /*bos=*/1, "t");
  const auto p = tmp_file("rt.json");
  fp4q::calib::write_windows(p, set, {"some/text.txt", "some/model", 42, 1});
  // Independent check of the file with a JSON parser: every window is the sampled one.
  std::ifstream f(p);
  const auto j = nlohmann::json::parse(f);
  EXPECT_EQ(j["format"], "fp4q-calib-windows");
  EXPECT_EQ(j["seed"], 42);
  EXPECT_EQ(j["seqlen"], 96);
  EXPECT_EQ(j["n"], 12);
  EXPECT_EQ(j["bos"], 1);
  EXPECT_EQ(j["source"], "some/text.txt");
  ASSERT_EQ(j["samples"].size(), 12u);
  for (size_t i = 0; i < 12; ++i) {
    EXPECT_EQ(j["samples"][i].get<std::vector<int32_t>>(), set.samples[i]);
    EXPECT_EQ(j["offsets"][i].get<int64_t>(), set.offsets[i]);
    // and the window is BOS + the stream at its offset
    const auto& w = set.samples[i];
    EXPECT_EQ(w[0], 1);
    for (size_t k = 1; k < w.size(); ++k) ASSERT_EQ(w[k], stream[set.offsets[i] + k - 1]);
  }
  fp4q::calib::WindowsMeta meta;
  const auto back = fp4q::calib::read_windows(p, 50000, &meta);
  EXPECT_EQ(back.seqlen, 96);
  EXPECT_EQ(back.samples, set.samples);
  EXPECT_EQ(back.offsets, set.offsets);
  EXPECT_EQ(meta.seed, 42u);
  EXPECT_EQ(meta.bos, 1);
  EXPECT_EQ(meta.tokenizer, "some/model");
  std::remove(p.c_str());
}

TEST(CalibWindows, BareArrayOfArraysIsAccepted) {
  const auto p = tmp_file("bare.json");
  write(p, " [[5, 6, 7], [0,1,2]]\n");
  const auto s = fp4q::calib::read_windows(p);
  std::remove(p.c_str());
  EXPECT_EQ(s.seqlen, 3);
  ASSERT_EQ(s.samples.size(), 2u);
  EXPECT_EQ(s.samples[0], (std::vector<int32_t>{5, 6, 7}));
  EXPECT_EQ(s.offsets, (std::vector<int64_t>{-1, -1}));
}

TEST(CalibWindows, MalformedFilesAreRefusedWithTheWindowNamed) {
  auto e = read_error("[[1,2,3],[4,5]]");
  EXPECT_EQ(e.kind(), fp4q::ErrorKind::kInput);
  EXPECT_NE(std::string(e.what()).find("samples[1]"), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("2 tokens"), std::string::npos) << e.what();
  e = read_error("{\"samples\": [[1, 2, 3], [4, 5, 99]]}", 50);
  EXPECT_NE(std::string(e.what()).find("samples[1][2]"), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("vocab_size 50"), std::string::npos) << e.what();
  e = read_error("[[1, -2]]");
  EXPECT_NE(std::string(e.what()).find("samples[0][1]"), std::string::npos) << e.what();
  e = read_error("[[1, 2.5]]");
  EXPECT_EQ(e.kind(), fp4q::ErrorKind::kInput);
  e = read_error("[[1]]");
  EXPECT_NE(std::string(e.what()).find("at least 2"), std::string::npos) << e.what();
  e = read_error("{\"seqlen\": 4, \"samples\": [[1, 2, 3]]}");
  EXPECT_NE(std::string(e.what()).find("\"seqlen\" is 4"), std::string::npos) << e.what();
  e = read_error("{\"format\": \"other\", \"samples\": [[1, 2]]}");
  EXPECT_NE(std::string(e.what()).find("fp4q-calib-windows"), std::string::npos) << e.what();
  e = read_error("{\"windows\": []}");
  EXPECT_NE(std::string(e.what()).find("samples"), std::string::npos) << e.what();
  e = read_error("[]");
  EXPECT_EQ(e.kind(), fp4q::ErrorKind::kInput);
  e = read_error("[[1, 2]");
  EXPECT_NE(std::string(e.what()).find("not valid JSON"), std::string::npos) << e.what();
  try {
    fp4q::calib::read_windows("/nonexistent/w.json");
    FAIL();
  } catch (const fp4q::Error& x) {
    EXPECT_EQ(x.kind(), fp4q::ErrorKind::kIo);
  }
}
