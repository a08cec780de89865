// --dump-calib / --calib-windows end to end: the dumped windows are exactly calib::sample_windows
// over the tokenized calibration text, and quantizing from the dumped windows reproduces the
// sampled run byte for byte.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "fp4q/calib/dataset.h"
#include "fp4q/model/tokenizer.h"
#include "run_util.h"

namespace fs = std::filesystem;

namespace {

const std::string kModel = std::string(FP4Q_DATA_DIR) + "/models/stories260K";
const std::string kText = std::string(FP4Q_DATA_DIR) + "/text/calib-frankenstein.txt";

std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

nlohmann::json load(const std::string& p) {
  std::ifstream f(p);
  return nlohmann::json::parse(f);
}

fp4q_test::Run run(const std::string& args, const std::string& tmp) { return fp4q_test::run_fp4q(args, false, tmp); }

}  // namespace

TEST(CalibWindowsCli, DryRunDumpEqualsSampleWindows) {
  fp4q_test::TempDir t;
  const auto r = run("-q quantize " + kModel + " " + t / "o" + " --dry-run --samples 6 --seqlen 64 --seed 7 --dump-calib " +
                         t / "w.json",
                     t.path());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(fs::exists(t / "o"));
  const auto j = load(t / "w.json");
  // Independent reproduction: tokenize the default calibration text and sample.
  const auto tok = fp4q::model::Tokenizer::from_dir(kModel);
  const auto stream = tok.encode(slurp(kText), false);
  const auto specials = tok.encode("", true);
  const int32_t bos = specials.empty() ? -1 : specials.front();
  const auto set = fp4q::calib::sample_windows(stream, 6, 64, 7, bos, "t");
  EXPECT_EQ(j["seed"], 7);
  EXPECT_EQ(j["seqlen"], 64);
  EXPECT_EQ(j["bos"], bos);
  EXPECT_EQ(j["source"], kText);
  ASSERT_EQ(j["samples"].size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(j["samples"][i].get<std::vector<int32_t>>(), set.samples[i]) << i;
    EXPECT_EQ(j["offsets"][i].get<int64_t>(), set.offsets[i]) << i;
  }
}

TEST(CalibWindowsCli, QuantizingFromDumpedWindowsReproducesTheSampledRun) {
  fp4q_test::TempDir t;
  const std::string common = " --format nvfp4 --method mr-gptq --activations fp4 --samples 4 --seqlen 64 --seed 3";
  auto a = run("-q quantize " + kModel + " " + t / "a" + common + " --dump-calib " + t / "w.json", t.path());
  ASSERT_EQ(a.code, 0) << a.err;
  // --samples/--seqlen/--seed are ignored with --calib-windows (different values on purpose).
  auto b = run("-q quantize " + kModel + " " + t / "b --format nvfp4 --method mr-gptq --activations fp4 --samples 9 --seqlen 32"
               " --calib-windows " + t / "w.json" + " --dump-calib " + t / "w2.json",
               t.path());
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_EQ(load(t / "w.json")["samples"], load(t / "w2.json")["samples"]);
  EXPECT_EQ(load(t / "w.json")["offsets"], load(t / "w2.json")["offsets"]);
  const auto ma = slurp(t / "a/model.safetensors"), mb = slurp(t / "b/model.safetensors");
  ASSERT_FALSE(ma.empty());
  EXPECT_TRUE(ma == mb) << "quantized weights differ between sampled and file windows";
  // A different window set changes the result (the test can fail).
  std::ofstream(t / "w3.json") << "[[1, 300, 301, 302, 303, 304, 305, 306], [1, 20, 21, 22, 23, 24, 25, 26]]";
  auto c = run("-q quantize " + kModel + " " + t / "c --format nvfp4 --method mr-gptq --activations fp4 --calib-windows " + t / "w3.json",
               t.path());
  ASSERT_EQ(c.code, 0) << c.err;
  EXPECT_FALSE(ma == slurp(t / "c/model.safetensors"));
}

TEST(CalibWindowsCli, RtnDumpAndBadWindowsFile) {
  fp4q_test::TempDir t;
  // RTN never calibrates, but --dump-calib still writes the windows it would use.
  auto r = run("-q quantize " + kModel + " " + t / "o --method rtn --samples 2 --seqlen 16 --dump-calib " + t / "w.json", t.path());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(load(t / "w.json")["samples"].size(), 2u);
  std::ofstream(t / "bad.json") << "[[1, 2, 3], [1, 2, 99999]]";
  r = run("-q quantize " + kModel + " " + t / "p --calib-windows " + t / "bad.json", t.path());
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_NE(r.err.find("samples[1][2]"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("vocab_size 512"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(t / "p"));
  // report and hessians accept the same options.
  r = run("-q hessians " + kModel + " " + t / "h.safetensors --calib-windows " + t / "w.json" + " --dump-calib " + t / "w4.json", t.path());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(load(t / "w.json")["samples"], load(t / "w4.json")["samples"]);
}

// `fp4q tokenize` gives the ids `fp4q eval --text` scores: evaluating them with --ids gives the
// identical result line (except the directory name), and they start with BOS.
TEST(CalibWindowsCli, TokenizeIdsEvaluateLikeTheText) {
  fp4q_test::TempDir t;
  const std::string text = std::string(FP4Q_DATA_DIR) + "/text/wikitext2-test.txt";
  auto r = run("-q tokenize " + kModel + " " + text + " -o " + t / "ids.json", t.path());
  ASSERT_EQ(r.code, 0) << r.err;
  const auto ids = load(t / "ids.json").get<std::vector<int32_t>>();
  const auto tok = fp4q::model::Tokenizer::from_dir(kModel);
  auto expect = tok.encode(slurp(text), false);
  expect.insert(expect.begin(), tok.encode("", true).front());
  EXPECT_EQ(ids, expect);
  const auto a = run("-q eval " + kModel + " --text " + text + " --seqlen 128 --max-windows 4", t.path());
  const auto b = run("-q eval " + kModel + " --ids " + t / "ids.json" + " --seqlen 128 --max-windows 4", t.path());
  ASSERT_EQ(a.code, 0) << a.err;
  ASSERT_EQ(b.code, 0) << b.err;
  auto tail = [](const std::string& s) { return s.substr(s.find('\t')); };
  EXPECT_EQ(tail(a.out), tail(b.out));
  EXPECT_NE(a.out.find("windows=4"), std::string::npos) << a.out;
  r = run("-q tokenize " + kModel + " " + text + " --no-bos", t.path());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out).size() + 1, ids.size());
}
