// tokenizer_test.cpp — fp4q::model::Tokenizer against goldens of the Hugging Face `tokenizers`
// library (npm tokenizers 0.23.2, produced by tools/golden_tokenizer/make_golden.js), plus the
// BPE merge reference twin, NFC, error paths and read_token_ids.
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "fp4q/core/error.h"
#include "fp4q/model/tokenizer.h"

namespace fs = std::filesystem;
using fp4q::Error;
using fp4q::ErrorKind;
using fp4q::model::Tokenizer;
using json = nlohmann::json;

namespace {

const std::string kData = FP4Q_DATA_DIR;
const std::string kTestData = std::string(FP4Q_TEST_DATA_DIR) + "/tokenizer";
const std::string kRepo = fs::path(FP4Q_DATA_DIR).parent_path().string();
const std::string kStoriesDir = kData + "/models/stories260K";

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << path;
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

json read_json(const std::string& path) { return json::parse(read_file(path)); }

std::string show(const std::string& s) {
  std::string r;
  for (unsigned char c : s) {
    if (c == '\n') r += "\\n";
    else if (c == '\t') r += "\\t";
    else if (c == '\r') r += "\\r";
    else if (c < 0x20) { char b[8]; std::snprintf(b, sizeof(b), "\\x%02x", c); r += b; }
    else r += static_cast<char>(c);
  }
  return "\"" + r + "\"";
}

std::string show(const std::vector<int32_t>& v) {
  std::string r = "[";
  for (size_t i = 0; i < v.size(); ++i) r += (i ? "," : "") + std::to_string(v[i]);
  return r + "]";
}

// A scratch directory removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("fp4q_tok_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string write(const std::string& name, const std::string& content) const {
    const std::string p = (path / name).string();
    std::ofstream(p, std::ios::binary) << content;
    return p;
  }
};

const std::vector<std::string>& golden_strings() {
  static const std::vector<std::string> s =
      read_json(kTestData + "/strings.json")["strings"].get<std::vector<std::string>>();
  return s;
}

const std::string& wikitext() {
  static const std::string t = read_file(kData + "/text/wikitext2-test.txt");
  return t;
}

// ------------------------------------------------------------------------------------------------
// Golden comparisons, one test per tokenizer.

class Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(Golden, StringsMatchHuggingFace) {
  const json g = read_json(kTestData + "/" + GetParam() + ".golden.json");
  const Tokenizer tok = Tokenizer::from_file(kRepo + "/" + g["tokenizer"].get<std::string>());
  const auto& strings = golden_strings();
  const auto& ids = g["ids"];
  ASSERT_EQ(ids.size(), strings.size());
  int failures = 0;
  for (size_t i = 0; i < strings.size(); ++i) {
    const auto want = ids[i].get<std::vector<int32_t>>();
    const auto got = tok.encode(strings[i], true);
    if (got != want && ++failures <= 10) {
      ADD_FAILURE() << GetParam() << " string #" << i << " " << show(strings[i]) << "\n  want "
                    << show(want) << "\n  got  " << show(got);
    }
  }
  EXPECT_EQ(failures, 0);
  const auto& nos = g["ids_nospecial"];
  for (size_t i = 0; i < nos.size(); ++i) {
    EXPECT_EQ(tok.encode(strings[i], false), nos[i].get<std::vector<int32_t>>())
        << GetParam() << " (add_special_tokens=false) string #" << i << " " << show(strings[i]);
  }
}

TEST_P(Golden, DecodeMatchesHuggingFace) {
  const json g = read_json(kTestData + "/" + GetParam() + ".golden.json");
  const Tokenizer tok = Tokenizer::from_file(kRepo + "/" + g["tokenizer"].get<std::string>());
  const auto& strings = golden_strings();
  int failures = 0;
  for (size_t i = 0; i < strings.size(); ++i) {
    const auto ids = g["ids"][i].get<std::vector<int32_t>>();
    const std::string want =
        g["decoded"][i].is_null() ? strings[i] : g["decoded"][i].get<std::string>();
    const std::string got = tok.decode(ids);
    if (got != want && ++failures <= 10) {
      ADD_FAILURE() << GetParam() << " decode of string #" << i << "\n  want " << show(want)
                    << "\n  got  " << show(got);
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST_P(Golden, WholeWikiText2MatchesHuggingFace) {
  const json g = read_json(kTestData + "/" + GetParam() + ".golden.json");
  const Tokenizer tok = Tokenizer::from_file(kRepo + "/" + g["tokenizer"].get<std::string>());
  const auto ids = tok.encode(wikitext(), true);
  const json& w = g["wikitext"];
  const auto first = w["first"].get<std::vector<int32_t>>();
  const auto last = w["last"].get<std::vector<int32_t>>();
  ASSERT_EQ(ids.size(), w["count"].get<size_t>());
  ASSERT_GE(ids.size(), first.size());
  EXPECT_EQ(std::vector<int32_t>(ids.begin(), ids.begin() + first.size()), first);
  EXPECT_EQ(std::vector<int32_t>(ids.end() - last.size(), ids.end()), last);
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx",
                static_cast<unsigned long long>(fp4q::model::detail::fnv1a64_ids(ids)));
  EXPECT_EQ(std::string(hex), w["fnv1a64"].get<std::string>());
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, Golden,
                         ::testing::Values("stories260K", "stories260K_metaspace",
                                           "bytelevel_llama3", "bytelevel_gpt2",
                                           "bytelevel_qwen2", "stories260K_wssplit",
                                           "stories260K_split", "stories260K_whitespace"));

// ------------------------------------------------------------------------------------------------
// The bundled model directory.

TEST(Tokenizer, FromDirStories260K) {
  const Tokenizer tok = Tokenizer::from_dir(kStoriesDir);
  EXPECT_EQ(tok.vocab_size(), 512);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.id_to_token(1), "<s>");
  EXPECT_EQ(tok.id_to_token(13), "<0x0A>");
  const auto ids = tok.encode("Once upon a time", true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(tok.encode("Once upon a time", false), std::vector<int32_t>(ids.begin() + 1, ids.end()));
  EXPECT_EQ(tok.decode(std::vector<int32_t>(ids.begin() + 1, ids.end())), "Once upon a time");
  // Unknown ids are skipped by decode.
  EXPECT_EQ(tok.decode({99999, -1}), "");
}

TEST(Tokenizer, CopiesShareTablesAndAreConst) {
  const Tokenizer a = Tokenizer::from_dir(kStoriesDir);
  const Tokenizer b = a;  // NOLINT(performance-unnecessary-copy-initialization)
  EXPECT_EQ(a.encode("Lily and Tom"), b.encode("Lily and Tom"));
}

TEST(Tokenizer, ConfigAddEosOverridesTemplate) {
  TempDir d;
  fs::copy_file(kStoriesDir + "/tokenizer.json", d.path / "tokenizer.json");
  json cfg = read_json(kStoriesDir + "/tokenizer_config.json");
  cfg["add_eos_token"] = true;
  d.write("tokenizer_config.json", cfg.dump());
  const Tokenizer with_eos = Tokenizer::from_dir(d.path.string());
  const Tokenizer plain = Tokenizer::from_dir(kStoriesDir);
  auto want = plain.encode("The cat", true);
  want.push_back(2);
  EXPECT_EQ(with_eos.encode("The cat", true), want);
  EXPECT_EQ(with_eos.encode("The cat", false), plain.encode("The cat", false));

  cfg["add_eos_token"] = false;
  cfg["add_bos_token"] = false;
  d.write("tokenizer_config.json", cfg.dump());
  EXPECT_EQ(Tokenizer::from_dir(d.path.string()).encode("The cat", true), plain.encode("The cat", false));

  // Without tokenizer_config.json the post-processor of tokenizer.json decides (BOS only).
  fs::remove(d.path / "tokenizer_config.json");
  const Tokenizer no_cfg = Tokenizer::from_dir(d.path.string());
  EXPECT_EQ(no_cfg.encode("The cat", true), plain.encode("The cat", true));
  EXPECT_EQ(no_cfg.bos_id(), 1);
  EXPECT_EQ(no_cfg.eos_id(), 2);  // found among the special added tokens
}

TEST(Tokenizer, ByteLevelRoundTripsArbitraryUnicode) {
  const Tokenizer tok = Tokenizer::from_file(kTestData + "/bytelevel_gpt2.tokenizer.json");
  for (const std::string& s : golden_strings()) {
    EXPECT_EQ(tok.decode(tok.encode(s, false)), s) << show(s);
  }
}

// Random valid UTF-8 (ASCII, spaces, marks, CJK, emoji, controls) survives encode -> decode for
// the byte-level tokenizers, and byte_fallback keeps every character for stories260K.
TEST(Tokenizer, RandomUnicodeRoundTrips) {
  const Tokenizer gpt2 = Tokenizer::from_file(kTestData + "/bytelevel_gpt2.tokenizer.json");
  const Tokenizer llama3 = Tokenizer::from_file(kTestData + "/bytelevel_llama3.tokenizer.json");
  const Tokenizer stories = Tokenizer::from_dir(kStoriesDir);
  const std::vector<uint32_t> pool = {'a', 'b', 'Z', ' ', ' ', '\n', '\t', '\'', '1', '9', '.', '<', 's', '>',
                                      0x0301, 0x0323, 0x00e9, 0x4e2d, 0x65e5, 0x1f600, 0x200d, 0x2764,
                                      0xfe0f, 0x0410, 0x05d0, 0x00a0, 0x3000, 0x0001, 0x10ffff, 0x2581};
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    std::string s;
    const int n = static_cast<int>(rng() % 30);
    for (int k = 0; k < n; ++k) {
      const uint32_t cp = pool[rng() % pool.size()];
      if (cp < 0x80) { s += static_cast<char>(cp); }
      else if (cp < 0x800) { s += static_cast<char>(0xC0 | (cp >> 6)); s += static_cast<char>(0x80 | (cp & 0x3F)); }
      else if (cp < 0x10000) {
        s += static_cast<char>(0xE0 | (cp >> 12)); s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (cp & 0x3F));
      } else {
        s += static_cast<char>(0xF0 | (cp >> 18)); s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)); s += static_cast<char>(0x80 | (cp & 0x3F));
      }
    }
    EXPECT_EQ(gpt2.decode(gpt2.encode(s, false)), s) << show(s);
    EXPECT_EQ(llama3.decode(llama3.encode(s, false)), s) << show(s);
    // SentencePiece decode turns every "▁" into a space and strips one leading space.
    std::string want;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s.compare(i, 3, "\u2581") == 0) { want += ' '; i += 2; } else { want += s[i]; }
    }
    if (s.find("<s>") == std::string::npos && s.find("</s>") == std::string::npos) {
      EXPECT_EQ(stories.decode(stories.encode(s, false)), want) << show(s);
    }
  }
}

TEST(Tokenizer, InvalidUtf8IsAnInputError) {
  const Tokenizer tok = Tokenizer::from_dir(kStoriesDir);
  for (const std::string& bad : {std::string("ab\xff"), std::string("\xc3"), std::string("\xed\xa0\x80"),
                                std::string("\xc0\xaf")}) {
    try {
      tok.encode(bad);
      FAIL() << "no error for " << show(bad);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInput);
      EXPECT_NE(std::string(e.what()).find("UTF-8"), std::string::npos) << e.what();
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Unsupported or broken tokenizer.json files.

std::string stories_json_with(const std::function<void(json&)>& edit) {
  json j = read_json(kStoriesDir + "/tokenizer.json");
  edit(j);
  return j.dump();
}

void expect_input_error(const std::string& tokenizer_json_text, const std::vector<std::string>& needles) {
  TempDir d;
  const std::string p = d.write("tokenizer.json", tokenizer_json_text);
  try {
    Tokenizer::from_file(p);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInput) << e.what();
    const std::string msg = e.what();
    EXPECT_NE(msg.find("tokenizer.json"), std::string::npos) << msg;
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

TEST(TokenizerErrors, UnsupportedComponentsNameFileTypeAndHint) {
  expect_input_error(stories_json_with([](json& j) { j["model"]["type"] = "WordPiece"; }),
                     {"model", "WordPiece", "token ids"});
  expect_input_error(stories_json_with([](json& j) { j["model"]["type"] = "Unigram"; }),
                     {"model", "Unigram"});
  expect_input_error(stories_json_with([](json& j) { j["normalizer"] = {{"type", "NFKC"}}; }),
                     {"normalizer", "NFKC", "token ids"});
  expect_input_error(stories_json_with([](json& j) {
                       j["normalizer"]["normalizers"].push_back({{"type", "Lowercase"}});
                     }),
                     {"normalizer.normalizers[2]", "Lowercase"});
  expect_input_error(stories_json_with([](json& j) { j["pre_tokenizer"] = {{"type", "BertPreTokenizer"}}; }),
                     {"pre_tokenizer", "BertPreTokenizer"});
  expect_input_error(stories_json_with([](json& j) {
                       j["post_processor"] = {{"type", "Mystery"}};
                     }),
                     {"post_processor", "Mystery"});
}

TEST(TokenizerErrors, BrokenModelsAreInputErrors) {
  expect_input_error(stories_json_with([](json& j) { j["model"]["merges"].push_back("zz qq"); }),
                     {"merges[165]", "not in the vocab"});
  expect_input_error(stories_json_with([](json& j) { j["model"]["merges"].push_back("a b c"); }),
                     {"merges[165]"});
  expect_input_error(stories_json_with([](json& j) { j["model"]["dropout"] = 0.1; }), {"dropout"});
  expect_input_error(stories_json_with([](json& j) { j["model"]["unk_token"] = "<nope>"; }), {"unk_token"});
  expect_input_error(stories_json_with([](json& j) {
                       j["pre_tokenizer"] = {{"type", "Split"},
                                             {"pattern", {{"Regex", "(unclosed"}}},
                                             {"behavior", "Isolated"}};
                     }),
                     {"regex"});
  expect_input_error("{\"model\": ", {"JSON"});
}

TEST(TokenizerErrors, MissingFiles) {
  try {
    Tokenizer::from_file("/nonexistent/tokenizer.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/tokenizer.json"), std::string::npos);
  }
  TempDir d;
  try {
    Tokenizer::from_dir(d.path.string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInput);
    EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos);
    EXPECT_NE(e.hint().find("token ids"), std::string::npos);
  }
}

// ------------------------------------------------------------------------------------------------
// Components tested directly.

TEST(BpeMerge, PriorityQueueMatchesNaiveReference) {
  using fp4q::model::detail::BpeMergeRule;
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 40; ++trial) {
    // Random merge table over a small alphabet; every merge gets a fresh id so that no two pairs
    // share a merged id (the case where the two algorithms are defined to agree).
    const int alphabet = 2 + trial % 6;
    std::vector<std::pair<std::pair<int32_t, int32_t>, BpeMergeRule>> rules;
    int32_t next_id = alphabet;
    std::set<std::pair<int32_t, int32_t>> used;
    const int n_rules = 5 + trial * 3;
    for (int r = 0; r < n_rules; ++r) {
      const int32_t a = static_cast<int32_t>(rng() % next_id), b = static_cast<int32_t>(rng() % next_id);
      if (!used.insert({a, b}).second) continue;
      rules.push_back({{a, b}, {static_cast<int32_t>(rules.size()), next_id++}});
    }
    // Shuffle ranks so that rank order differs from creation order.
    std::vector<int32_t> ranks(rules.size());
    for (size_t i = 0; i < ranks.size(); ++i) ranks[i] = static_cast<int32_t>(i);
    std::shuffle(ranks.begin(), ranks.end(), rng);
    for (size_t i = 0; i < rules.size(); ++i) rules[i].second.rank = ranks[i];
    const auto table = fp4q::model::detail::make_bpe_merge_table(rules);
    for (int w = 0; w < 50; ++w) {
      std::vector<int32_t> sym(rng() % 40);
      for (auto& s : sym) s = static_cast<int32_t>(rng() % alphabet);
      EXPECT_EQ(fp4q::model::detail::bpe_merge(sym, *table), fp4q::model::detail::bpe_merge_ref(sym, *table))
          << "trial " << trial << " word " << show(sym);
    }
  }
}

TEST(BpeMerge, TiesMergeLeftmostFirst) {
  using fp4q::model::detail::BpeMergeRule;
  // a=0, b=1; "a a" -> 2 (rank 0), "2 a" -> 3 (rank 1)
  const auto table = fp4q::model::detail::make_bpe_merge_table({{{0, 0}, {0, 2}}, {{2, 0}, {1, 3}}});
  EXPECT_EQ(fp4q::model::detail::bpe_merge({0, 0, 0}, *table), (std::vector<int32_t>{3}));
  EXPECT_EQ(fp4q::model::detail::bpe_merge({0, 0, 0, 0}, *table), (std::vector<int32_t>{2, 2}));
  EXPECT_EQ(fp4q::model::detail::bpe_merge({}, *table), std::vector<int32_t>{});
  EXPECT_EQ(fp4q::model::detail::bpe_merge({1}, *table), std::vector<int32_t>{1});
}

TEST(Nfc, ComposesReordersAndKeepsBlockedMarks) {
  using fp4q::model::detail::nfc;
  EXPECT_EQ(nfc("plain ascii"), "plain ascii");
  EXPECT_EQ(nfc("e\u0301"), "\u00e9");                        // e + acute -> é
  EXPECT_EQ(nfc("\u212b"), "\u00c5");                         // Angstrom sign (singleton) -> Å
  EXPECT_EQ(nfc("A\u030a"), "\u00c5");
  EXPECT_EQ(nfc("\u1100\u1161\u11a8"), "\uac01");             // Hangul L V T -> 각
  EXPECT_EQ(nfc("\uac00\u11a8"), "\uac01");                   // LV + T
  EXPECT_EQ(nfc("d\u0307\u0323"), "\u1e0d\u0307");            // reorder dot below first, compose
  EXPECT_EQ(nfc("\u1e0b\u0323"), "\u1e0d\u0307");             // decompose, reorder, recompose
  EXPECT_EQ(nfc("a\u0308\u0304"), "\u01df");                  // ä + macron -> ǟ
  EXPECT_EQ(nfc("\u0344"), "\u0308\u0301");                   // non-starter decomposition
  EXPECT_EQ(nfc("\u0301e"), "\u0301e");                       // leading mark stays
  EXPECT_EQ(nfc("a\u0323\u0323\u0302"), "\u1ead\u0323");  // circumflex (230) not blocked by 220
  EXPECT_EQ(nfc("\u00e9"), "\u00e9");
  EXPECT_EQ(nfc("\ufb01"), "\ufb01");                         // compatibility ligature untouched
  EXPECT_EQ(nfc("\u0958"), "\u0915\u093c");                   // composition exclusion stays decomposed
}

TEST(Fnv, MatchesKnownValue) {
  EXPECT_EQ(fp4q::model::detail::fnv1a64_ids({}), 0xcbf29ce484222325ULL);
  // Bytes 01 00 00 00: computed by hand from the FNV-1a definition.
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned b : {1u, 0u, 0u, 0u}) { h ^= b; h *= 0x100000001b3ULL; }
  EXPECT_EQ(fp4q::model::detail::fnv1a64_ids({1}), h);
  EXPECT_NE(fp4q::model::detail::fnv1a64_ids({1, 2}), fp4q::model::detail::fnv1a64_ids({2, 1}));
}

// ------------------------------------------------------------------------------------------------
// read_token_ids.

TEST(ReadTokenIds, TextAndJsonFormats) {
  TempDir d;
  EXPECT_EQ(fp4q::model::read_token_ids(d.write("a.txt", "1 2 3\n4,5 ,6\n\t7\n")),
            (std::vector<int32_t>{1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(fp4q::model::read_token_ids(d.write("b.txt", "# header\n10 # ten\n2147483647\r\n")),
            (std::vector<int32_t>{10, 2147483647}));
  EXPECT_EQ(fp4q::model::read_token_ids(d.write("c.json", " [1, 2,\n 3]\n")), (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(fp4q::model::read_token_ids(d.write("d.json", "[[1, 2], [], [3]]")), (std::vector<int32_t>{1, 2, 3}));
}

void expect_ids_error(const std::string& content, const std::string& where_suffix, const std::string& needle) {
  TempDir d;
  const std::string p = d.write("ids.txt", content);
  try {
    fp4q::model::read_token_ids(p);
    FAIL() << "no error for " << show(content);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInput);
    EXPECT_EQ(e.where(), p + where_suffix) << e.what();
    EXPECT_NE(e.message().find(needle), std::string::npos) << e.what();
  }
}

TEST(ReadTokenIds, ErrorsNameFileAndLine) {
  expect_ids_error("1 2\n3 x4\n", ":2", "'x4'");
  expect_ids_error("1\n\n-5\n", ":3", "negative");
  expect_ids_error("1.5", ":1", "integer");
  expect_ids_error("99999999999", ":1", "larger");
  expect_ids_error("[1,\n2,\n\"a\"]", ":3", "expected a token id");
  expect_ids_error("[1, 2", ":1", "unterminated");
  expect_ids_error("[1] 2", ":1", "after the JSON array");
  TempDir d;
  try {
    fp4q::model::read_token_ids(d.write("empty.txt", "  \n# nothing\n"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInput);
    EXPECT_NE(e.message().find("no token ids"), std::string::npos);
  }
  try {
    fp4q::model::read_token_ids((d.path / "missing.txt").string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
  }
}

}  // namespace
