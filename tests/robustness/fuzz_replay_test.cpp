// Replays the fuzzers' inputs through the same target functions (tests/fuzz/fuzz_targets.h) in
// the normal test suite (and under ASan + UBSan in the sanitizer build of tools/run_tests.sh):
//   * tests/data/fuzz_regressions/<target>/*: inputs that crashed, hung, leaked, allocated
//     gigabytes or threw a foreign exception before their fix. Each must now be rejected with a
//     clean fp4q::Error (kind input / I/O / usage), except files named ok-*, which must be
//     accepted (inputs whose bug was in an accepted path, e.g. a slow but valid file);
//   * tests/fuzz/seeds/<target>/*: the seed corpora; each must be accepted or cleanly rejected.
// A crash fails the whole binary; anything else is reported per file.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>

#include "fuzz/fuzz_targets.h"

namespace fs = std::filesystem;

namespace {

const std::string kRegressions = std::string(FP4Q_TEST_DATA_DIR) + "/fuzz_regressions";
const std::string kSeeds = std::string(FP4Q_TEST_DATA_DIR) + "/../fuzz/seeds";

std::vector<uint8_t> slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

enum class Outcome { kAccepted, kRejected, kBug };

Outcome run_one(const fp4q_fuzz::Target& t, const std::string& path, std::string* detail) {
  const auto bytes = slurp(path);
  try {
    t.run(bytes.data(), bytes.size());
    return Outcome::kAccepted;
  } catch (const fp4q::Error& e) {
    *detail = std::string(fp4q::error_kind_name(e.kind())) + ": " + e.what();
    return e.kind() == fp4q::ErrorKind::kInternal ? Outcome::kBug : Outcome::kRejected;
  } catch (const std::exception& e) {
    *detail = std::string("foreign exception: ") + e.what();
    return Outcome::kBug;
  }
}

std::vector<std::string> files_in(const std::string& dir) {
  std::vector<std::string> r;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return r;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file()) r.push_back(e.path().string());
  std::sort(r.begin(), r.end());
  return r;
}

class FuzzReplay : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { fp4q_fuzz::init(); }
};

}  // namespace

TEST_F(FuzzReplay, RegressionInputsAreRejectedCleanly) {
  int total = 0;
  for (const auto& t : fp4q_fuzz::targets()) {
    for (const auto& p : files_in(kRegressions + "/" + t.name)) {
      ++total;
      std::string detail;
      const Outcome o = run_one(t, p, &detail);
      const bool want_ok = fs::path(p).filename().string().rfind("ok-", 0) == 0;
      if (want_ok)
        EXPECT_EQ(o, Outcome::kAccepted) << t.name << ": " << p << ": " << detail;
      else
        EXPECT_EQ(o, Outcome::kRejected) << t.name << ": " << p << ": " << (o == Outcome::kAccepted ? "accepted" : detail);
    }
  }
  // The directory is committed with the fixtures; an empty run means a broken path.
  EXPECT_GT(total, 0) << "no regression inputs under " << kRegressions;
}

TEST_F(FuzzReplay, SeedCorporaAreAcceptedOrRejectedCleanly) {
  std::map<std::string, std::pair<int, int>> counts;  // target -> (accepted, rejected)
  for (const auto& t : fp4q_fuzz::targets()) {
    const auto files = files_in(kSeeds + "/" + t.name);
    EXPECT_FALSE(files.empty()) << "no seeds for target " << t.name << " in " << kSeeds;
    for (const auto& p : files) {
      std::string detail;
      const Outcome o = run_one(t, p, &detail);
      EXPECT_NE(o, Outcome::kBug) << t.name << ": " << p << ": " << detail;
      (o == Outcome::kAccepted ? counts[t.name].first : counts[t.name].second)++;
    }
  }
  // Every target's seeds include valid inputs, so each target's accepting path runs here too.
  for (const auto& t : fp4q_fuzz::targets())
    EXPECT_GT(counts[t.name].first, 0) << "no seed of target " << t.name << " is accepted";
}

// The targets themselves must be able to fail: a valid input with one field broken is
// rejected, and its valid twin accepted (guards against a harness that accepts everything or
// swallows errors).
TEST_F(FuzzReplay, TargetsDistinguishGoodFromBad) {
  const fp4q_fuzz::Target* ids = nullptr;
  for (const auto& t : fp4q_fuzz::targets())
    if (std::string(t.name) == "ids") ids = &t;
  ASSERT_NE(ids, nullptr);
  const std::string good = "1 2 3", bad = "1 -2 3";
  EXPECT_NO_THROW(ids->run(reinterpret_cast<const uint8_t*>(good.data()), good.size()));
  EXPECT_THROW(ids->run(reinterpret_cast<const uint8_t*>(bad.data()), bad.size()), fp4q::Error);
  // A safetensors header that claims a tensor beyond the end of the file.
  std::string h = R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})";
  std::string file(8, '\0');
  file[0] = static_cast<char>(h.size());
  file += h + std::string(16, '\0');
  EXPECT_NO_THROW(fp4q_fuzz::safetensors(reinterpret_cast<const uint8_t*>(file.data()), file.size()));
  file.resize(file.size() - 1);
  EXPECT_THROW(fp4q_fuzz::safetensors(reinterpret_cast<const uint8_t*>(file.data()), file.size()),
               fp4q::Error);
}
