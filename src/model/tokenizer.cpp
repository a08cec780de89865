// tokenizer.cpp — Hugging Face tokenizer.json reader and BPE encoder (see fp4q/model/tokenizer.h).
//
// The encode pipeline mirrors tokenizers 0.23 (`TokenizerImpl::encode_single_sequence`):
//   1. added tokens with normalized=false are cut out of the raw text (leftmost-longest);
//   2. every remaining piece is normalised, then added tokens with normalized=true are cut out;
//   3. the pre-tokenizer splits pieces into words (empty pieces are dropped after every split);
//   4. the BPE model maps every word to ids (added-token pieces map to their id);
//   5. the post-processor adds the special tokens of the single-sequence template.
// All strings are UTF-8 byte strings; offsets are byte offsets.
#include "fp4q/model/tokenizer.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <nlohmann/json.hpp>

#include "fp4q/core/error.h"
#include "fp4q/core/log.h"

namespace fp4q::model {
namespace detail {

extern const char kNfcUnicodeVersion[];
extern const uint32_t kNfcDecomp[][5];
extern const int kNfcDecompCount;
extern const uint32_t kNfcCcc[][2];
extern const int kNfcCccCount;
extern const uint32_t kNfcCompose[][3];
extern const int kNfcComposeCount;

namespace {

using json = nlohmann::json;

const char kHintIds[] =
    "tokenize the text with another tool and pass the token ids instead (a text file of "
    "whitespace/comma-separated ids or a JSON array)";

// ---------------------------------------------------------------------------------------------
// UTF-8 helpers.

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Length of the valid UTF-8 sequence starting at s[i] (1..4), or 0 when the bytes there are not
// a valid sequence; `bad_len` then receives the length of the maximal invalid subpart (>= 1),
// which is what Rust's String::from_utf8_lossy replaces by one U+FFFD.
size_t utf8_seq_len(const unsigned char* s, size_t n, size_t i, size_t* bad_len = nullptr) {
  const unsigned char c = s[i];
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    if (bad_len) *bad_len = 1;
    return 0;
  }
  for (size_t k = 1; k < need; ++k) {
    const bool ok = i + k < n && s[i + k] >= (k == 1 ? lo : 0x80) && s[i + k] <= (k == 1 ? hi : 0xBF);
    if (!ok) {
      if (bad_len) *bad_len = k;
      return 0;
    }
  }
  return need;
}

// Decodes the (valid) UTF-8 character at s[i]; advances i.
uint32_t next_cp(const std::string& s, size_t& i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const unsigned char c = p[i];
  if (c < 0x80) { ++i; return c; }
  if (c < 0xE0) { uint32_t cp = ((c & 0x1F) << 6) | (p[i + 1] & 0x3F); i += 2; return cp; }
  if (c < 0xF0) {
    uint32_t cp = ((c & 0x0F) << 12) | ((p[i + 1] & 0x3F) << 6) | (p[i + 2] & 0x3F);
    i += 3;
    return cp;
  }
  uint32_t cp = ((c & 0x07) << 18) | ((p[i + 1] & 0x3F) << 12) | ((p[i + 2] & 0x3F) << 6) |
                (p[i + 3] & 0x3F);
  i += 4;
  return cp;
}

size_t char_len_at(const std::string& s, size_t i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

// Byte offset of the first invalid UTF-8 sequence, or npos.
size_t find_invalid_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    if (p[i] < 0x80) { ++i; continue; }
    const size_t len = utf8_seq_len(p, n, i);
    if (len == 0) return i;
    i += len;
  }
  return std::string::npos;
}

// Rust's String::from_utf8_lossy.
std::string utf8_lossy(const std::string& s) {
  if (find_invalid_utf8(s) == std::string::npos) return s;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  std::string out;
  out.reserve(s.size() + 8);
  size_t i = 0;
  while (i < s.size()) {
    size_t bad = 0;
    const size_t len = utf8_seq_len(p, s.size(), i, &bad);
    if (len) {
      out.append(s, i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      i += bad;
    }
  }
  return out;
}

// Rust's char::is_whitespace (Unicode White_Space); also what the regex crate's \s matches.
bool is_white_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

// A JSON value usable as a token id: an integer in 0..INT32_MAX (a float, a negative or a too
// large number is not, and must never reach a float->int or int64->int32 conversion).
bool is_token_id(const json& v) {
  return v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() <= INT32_MAX;
}

// Writes `s` into `what` as a JSON-ish quoted string for messages (at most 60 bytes).
std::string q_(const std::string& s) {
  std::string q = s.size() > 60 ? s.substr(0, 60) + "..." : s;
  return "'" + q + "'";
}

// ---------------------------------------------------------------------------------------------
// PCRE2 wrapper.

class Regex {
 public:
  Regex(const std::string& pattern, const std::string& where) : pattern_(pattern) {
    int err = 0;
    PCRE2_SIZE off = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
    if (!code_) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(err, buf, sizeof(buf));
      throw Error(ErrorKind::kInput,
                  "cannot compile regex " + q_(pattern) + " at offset " + std::to_string(off) +
                      ": " + reinterpret_cast<const char*>(buf),
                  where, kHintIds);
    }
    jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends the [start, end) byte ranges of all non-overlapping, non-empty matches in
  // s[0, n), scanning left to right like Rust's find_iter. `s` must be valid UTF-8.
  void find_all(const char* s, size_t n, std::vector<std::pair<size_t, size_t>>& out) const {
    MatchData md(code_);
    size_t start = 0;
    while (start <= n) {
      const int rc = run(md, s, n, start, 0);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.data);
      const size_t b = ov[0], e = ov[1];
      if (e > b) {
        out.emplace_back(b, e);
        start = e;
      } else {
        if (b >= n) break;
        start = b + char_len_at_ptr(s, b);
      }
    }
  }

  // True when the regex matches at exactly s[0] (anchored), used for one-character classes.
  bool matches_at_start(const char* s, size_t n) const {
    MatchData md(code_);
    return run(md, s, n, 0, PCRE2_ANCHORED) != PCRE2_ERROR_NOMATCH;
  }

 private:
  struct MatchData {
    explicit MatchData(const pcre2_code* code) : data(pcre2_match_data_create_from_pattern(code, nullptr)) {}
    ~MatchData() {
      pcre2_match_data_free(data);
      if (ctx) pcre2_match_context_free(ctx);
      if (stack) pcre2_jit_stack_free(stack);
    }
    pcre2_match_data* data;
    pcre2_match_context* ctx = nullptr;
    pcre2_jit_stack* stack = nullptr;
  };

  static size_t char_len_at_ptr(const char* s, size_t i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
  }

  // Returns rc (>= 0 on match, PCRE2_ERROR_NOMATCH); throws on any other error.
  int run(MatchData& md, const char* s, size_t n, size_t start, uint32_t opts) const {
    int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(s), n, start,
                         opts | PCRE2_NO_UTF_CHECK, md.data, md.ctx);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT && jit_ && !md.stack) {
      md.ctx = pcre2_match_context_create(nullptr);
      md.stack = pcre2_jit_stack_create(32 * 1024, 64 * 1024 * 1024, nullptr);
      pcre2_jit_stack_assign(md.ctx, nullptr, md.stack);
      rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(s), n, start, opts | PCRE2_NO_UTF_CHECK,
                       md.data, md.ctx);
    }
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(rc, buf, sizeof(buf));
      throw Error(ErrorKind::kInput,
                  std::string("regex match failed: ") + reinterpret_cast<const char*>(buf),
                  "tokenizer regex " + q_(pattern_));
    }
    return rc;
  }

  std::string pattern_;
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

// Oniguruma (tokenizers' regex engine) matches \s against the Unicode White_Space property; PCRE2
// 10.42 with UCP also counts U+180E (MONGOLIAN VOWEL SEPARATOR, no longer White_Space since
// Unicode 6.3) and its \s set differs between PCRE2 versions. Rewrites \s and \S to the explicit
// White_Space set so the engines agree: outside a class \s -> [set] and \S -> [^set]; inside a
// class \s -> set (a \S inside a class is left alone: it cannot be expressed there).
const char kWhiteSpaceSet[] =
    "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
    "\\x{202F}\\x{205F}\\x{3000}";

std::string onig_compatible(const std::string& p) {
  std::string out;
  out.reserve(p.size() + 16);
  int depth = 0;  // > 0 inside [...]
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char d = p[i + 1];
      if (d == 's') {
        out += depth > 0 ? std::string(kWhiteSpaceSet) : "[" + std::string(kWhiteSpaceSet) + "]";
      } else if (d == 'S' && depth == 0) {
        out += "[^" + std::string(kWhiteSpaceSet) + "]";
      } else {
        out += c;
        out += d;
      }
      ++i;
      continue;
    }
    if (c == '[') {
      ++depth;
      out += c;
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < p.size() && p[i + 1] == '^') { out += '^'; ++i; }
      if (i + 1 < p.size() && p[i + 1] == ']') { out += "\\]"; ++i; }
      continue;
    }
    if (c == ']' && depth > 0) --depth;
    out += c;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// NFC (Unicode canonical composition) with the generated tables.

int ccc_of(uint32_t cp) {
  if (cp < 0x300) return 0;
  int lo = 0, hi = kNfcCccCount - 1;
  while (lo <= hi) {
    const int mid = (lo + hi) / 2;
    if (kNfcCcc[mid][0] == cp) return static_cast<int>(kNfcCcc[mid][1]);
    if (kNfcCcc[mid][0] < cp) lo = mid + 1; else hi = mid - 1;
  }
  return 0;
}

const uint32_t* decomp_of(uint32_t cp) {
  if (cp < 0xC0) return nullptr;
  int lo = 0, hi = kNfcDecompCount - 1;
  while (lo <= hi) {
    const int mid = (lo + hi) / 2;
    if (kNfcDecomp[mid][0] == cp) return kNfcDecomp[mid] + 1;
    if (kNfcDecomp[mid][0] < cp) lo = mid + 1; else hi = mid - 1;
  }
  return nullptr;
}

constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                   kSCount = kLCount * kNCount;

// Primary composite of (a, b), or 0.
uint32_t compose_pair(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount)
    return a + (b - kTBase);
  int lo = 0, hi = kNfcComposeCount - 1;
  while (lo <= hi) {
    const int mid = (lo + hi) / 2;
    const uint32_t* e = kNfcCompose[mid];
    if (e[0] == a && e[1] == b) return e[2];
    if (e[0] < a || (e[0] == a && e[1] < b)) lo = mid + 1; else hi = mid - 1;
  }
  return 0;
}

}  // namespace

std::string nfc(const std::string& s) {
  bool ascii = true;
  for (unsigned char c : s) {
    if (c >= 0x80) { ascii = false; break; }
  }
  if (ascii) return s;
  // 1. Full canonical decomposition.
  std::vector<uint32_t> d;
  d.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const uint32_t cp = next_cp(s, i);
    if (cp >= kSBase && cp < kSBase + kSCount) {
      const uint32_t si = cp - kSBase;
      d.push_back(kLBase + si / kNCount);
      d.push_back(kVBase + (si % kNCount) / kTCount);
      if (si % kTCount) d.push_back(kTBase + si % kTCount);
    } else if (const uint32_t* m = decomp_of(cp)) {
      for (int k = 0; k < 4 && m[k]; ++k) d.push_back(m[k]);
    } else {
      d.push_back(cp);
    }
  }
  // 2. Canonical ordering: stable sort of every run of non-starters by combining class.
  std::vector<int> cc(d.size());
  for (size_t i = 0; i < d.size(); ++i) cc[i] = ccc_of(d[i]);
  for (size_t i = 0; i < d.size();) {
    if (cc[i] == 0) { ++i; continue; }
    size_t j = i;
    while (j < d.size() && cc[j] != 0) ++j;
    if (j - i > 1) {
      std::vector<std::pair<int, uint32_t>> run;
      for (size_t k = i; k < j; ++k) run.emplace_back(cc[k], d[k]);
      std::stable_sort(run.begin(), run.end(),
                       [](const auto& x, const auto& y) { return x.first < y.first; });
      for (size_t k = i; k < j; ++k) { cc[k] = run[k - i].first; d[k] = run[k - i].second; }
    }
    i = j;
  }
  // 3. Canonical composition: a character composes with the last starter unless blocked.
  std::vector<uint32_t> out;
  out.reserve(d.size());
  long starter = -1;
  int prev_cc = 0;
  for (size_t i = 0; i < d.size(); ++i) {
    const uint32_t c = d[i];
    const int k = cc[i];
    if (starter >= 0 && c >= 0x300) {  // no composition pair has a second element below U+0300
      const bool adjacent = static_cast<long>(out.size()) - 1 == starter;
      const bool blocked = !adjacent && (prev_cc == 0 || prev_cc >= k);
      if (!blocked) {
        if (const uint32_t comp = compose_pair(out[starter], c)) {
          out[starter] = comp;
          continue;
        }
      }
    }
    if (k == 0) starter = static_cast<long>(out.size());
    out.push_back(c);
    prev_cc = k;
  }
  std::string r;
  r.reserve(s.size());
  for (uint32_t c : out) append_utf8(r, c);
  return r;
}

uint64_t fnv1a64_ids(const std::vector<int32_t>& ids) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (int32_t id : ids) {
    const uint32_t u = static_cast<uint32_t>(id);
    for (int k = 0; k < 4; ++k) {
      h ^= (u >> (8 * k)) & 0xFFu;
      h *= 0x100000001b3ULL;
    }
  }
  return h;
}

// ---------------------------------------------------------------------------------------------
// BPE merges.

class BpeMergeTable {
 public:
  std::unordered_map<uint64_t, BpeMergeRule> map;
  const BpeMergeRule* find(int32_t a, int32_t b) const {
    auto it = map.find(bpe_pair_key(a, b));
    return it == map.end() ? nullptr : &it->second;
  }
};

std::shared_ptr<BpeMergeTable> make_bpe_merge_table(
    const std::vector<std::pair<std::pair<int32_t, int32_t>, BpeMergeRule>>& rules) {
  auto t = std::make_shared<BpeMergeTable>();
  t->map.reserve(rules.size() * 2);
  // Later duplicates overwrite earlier ones, like tokenizers' collect::<HashMap>().
  for (const auto& r : rules) t->map[bpe_pair_key(r.first.first, r.first.second)] = r.second;
  return t;
}

namespace {
struct MergeCand {
  int32_t rank;
  int32_t pos;
  int32_t merged;
};
struct MergeCandGreater {
  bool operator()(const MergeCand& a, const MergeCand& b) const {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  }
};
}  // namespace

std::vector<int32_t> bpe_merge(const std::vector<int32_t>& symbols, const BpeMergeTable& table) {
  const int32_t n = static_cast<int32_t>(symbols.size());
  if (n < 2) return symbols;
  struct Sym {
    int32_t id, prev, next;
    bool alive;
  };
  std::vector<Sym> s(n);
  for (int32_t i = 0; i < n; ++i) s[i] = {symbols[i], i - 1, i + 1 < n ? i + 1 : -1, true};
  std::vector<MergeCand> heap_storage;
  heap_storage.reserve(n);
  std::priority_queue<MergeCand, std::vector<MergeCand>, MergeCandGreater> heap(
      MergeCandGreater{}, std::move(heap_storage));
  for (int32_t i = 0; i + 1 < n; ++i) {
    if (const BpeMergeRule* r = table.find(s[i].id, s[i + 1].id)) heap.push({r->rank, i, r->merged});
  }
  while (!heap.empty()) {
    const MergeCand top = heap.top();
    heap.pop();
    Sym& cur = s[top.pos];
    if (!cur.alive || cur.next < 0) continue;
    const int32_t nx = cur.next;
    // Stale entry: the pair at pos changed since it was queued.
    const BpeMergeRule* now = table.find(cur.id, s[nx].id);
    if (!now || now->merged != top.merged) continue;
    cur.id = top.merged;
    cur.next = s[nx].next;
    s[nx].alive = false;
    if (cur.next >= 0) s[cur.next].prev = top.pos;
    if (cur.prev >= 0) {
      if (const BpeMergeRule* r = table.find(s[cur.prev].id, cur.id))
        heap.push({r->rank, cur.prev, r->merged});
    }
    if (cur.next >= 0) {
      if (const BpeMergeRule* r = table.find(cur.id, s[cur.next].id))
        heap.push({r->rank, top.pos, r->merged});
    }
  }
  std::vector<int32_t> out;
  out.reserve(n);
  for (int32_t i = 0; i >= 0; i = s[i].next) out.push_back(s[i].id);
  return out;
}

std::vector<int32_t> bpe_merge_ref(const std::vector<int32_t>& symbols, const BpeMergeTable& table) {
  std::vector<int32_t> v = symbols;
  for (;;) {
    size_t best = v.size();
    const BpeMergeRule* best_rule = nullptr;
    for (size_t i = 0; i + 1 < v.size(); ++i) {
      const BpeMergeRule* r = table.find(v[i], v[i + 1]);
      if (r && (!best_rule || r->rank < best_rule->rank)) {
        best = i;
        best_rule = r;
      }
    }
    if (!best_rule) return v;
    v[best] = best_rule->merged;
    v.erase(v.begin() + static_cast<std::ptrdiff_t>(best) + 1);
  }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer components.

namespace {

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// A piece of the text on its way through the pipeline. id >= 0: an added token (final).
struct Piece {
  std::string text;
  int32_t id = -1;
  bool at_origin = false;  // the piece starts at byte 0 of the original text (Metaspace "first")
};

struct Normalizer {
  enum class Kind { kSequence, kPrepend, kReplace, kStrip, kNfc } kind;
  std::vector<Normalizer> children;
  std::string text;     // Prepend: the prefix; Replace: the replacement
  std::string literal;  // Replace with a String pattern
  std::shared_ptr<Regex> regex;  // Replace with a Regex pattern
  bool strip_left = false, strip_right = false;
};

struct PreTokenizer {
  enum class Kind {
    kSequence, kByteLevel, kSplit, kMetaspace, kDigits, kWhitespace, kWhitespaceSplit, kPunctuation
  } kind;
  std::vector<PreTokenizer> children;
  // ByteLevel
  bool add_prefix_space = false, use_regex = true;
  // Split / Metaspace / Digits / Whitespace / Punctuation: matcher + behaviour
  std::shared_ptr<Regex> regex;
  std::string literal;  // Split with a String pattern (literal)
  bool use_literal = false;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  // Metaspace
  std::string replacement;
  enum class Prepend { kAlways, kFirst, kNever } prepend = Prepend::kAlways;
  bool split = true;
};

struct Decoder {
  enum class Kind {
    kSequence, kByteLevel, kMetaspace, kReplace, kByteFallback, kFuse, kStrip, kBpe, kUnsupported
  } kind;
  std::vector<Decoder> children;
  std::string a, b;           // Metaspace: replacement; Replace: pattern/content; Strip: content; BPE: suffix
  std::shared_ptr<Regex> regex;  // Replace with Regex
  bool prepend = true;        // Metaspace: prepend_scheme != never
  int start = 0, stop = 0;    // Strip
};

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

// Leftmost-longest exact matcher over a set of strings (tokenizers uses Aho-Corasick with
// MatchKind::LeftmostLongest; for the few hundred added tokens of real tokenizers a first-byte
// bucket scan is as good).
struct AddedMatcher {
  std::vector<std::string> patterns;
  std::vector<int> token;                 // index into TokenizerImpl::added
  std::vector<std::vector<int>> buckets;  // by first byte: pattern indices, longest first
  void build() {
    buckets.assign(256, {});
    for (size_t i = 0; i < patterns.size(); ++i) {
      if (patterns[i].empty()) continue;
      buckets[static_cast<unsigned char>(patterns[i][0])].push_back(static_cast<int>(i));
    }
    for (auto& b : buckets) {
      std::stable_sort(b.begin(), b.end(), [&](int x, int y) {
        return patterns[x].size() > patterns[y].size();
      });
    }
  }
  bool empty() const { return patterns.empty(); }
  // All non-overlapping leftmost-longest matches: (pattern index, start, end).
  void find_all(const std::string& s, std::vector<std::tuple<int, size_t, size_t>>& out) const {
    size_t i = 0;
    while (i < s.size()) {
      const auto& b = buckets[static_cast<unsigned char>(s[i])];
      int hit = -1;
      for (int p : b) {
        const std::string& pat = patterns[p];
        if (pat.size() <= s.size() - i && std::memcmp(s.data() + i, pat.data(), pat.size()) == 0) {
          hit = p;
          break;
        }
      }
      if (hit >= 0) {
        out.emplace_back(hit, i, i + patterns[hit].size());
        i += patterns[hit].size();
      } else {
        ++i;
      }
    }
  }
};

struct BpeModel {
  std::unordered_map<std::string, int32_t> vocab;
  std::unordered_map<uint32_t, int32_t> char_ids;  // single-character vocab entries
  std::vector<int32_t> small_char_ids;             // code points < 1024 -> id or -1
  std::shared_ptr<BpeMergeTable> merges;
  int32_t unk_id = -1;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  std::string prefix, suffix;  // continuing_subword_prefix, end_of_word_suffix
  int32_t byte_ids[256];       // <0xXX> tokens, -1 when absent

  int32_t lookup(const std::string& s) const {
    auto it = vocab.find(s);
    return it == vocab.end() ? -1 : it->second;
  }
  int32_t lookup_cp(uint32_t cp) const {
    if (cp < small_char_ids.size()) return small_char_ids[cp];
    auto it = char_ids.find(cp);
    return it == char_ids.end() ? -1 : it->second;
  }

  // True when no merge has a right operand starting with `cp`: then no merge can ever join the
  // symbol before a `cp` character with it, and a word can be cut there into chunks that merge
  // independently (SentencePiece vocabularies never merge across "▁", so a whole normalised text,
  // which is one BPE word when there is no pre-tokenizer, splits into its words).
  bool cut_before(uint32_t cp) const {
    if (cp < small_right_first.size()) return !small_right_first[cp];
    return right_first.count(cp) == 0;
  }
  std::vector<uint8_t> small_right_first;    // code points < 1024 starting some right operand
  std::unordered_set<uint32_t> right_first;  // ... and the others

  using Cache = std::unordered_map<std::string, std::vector<int32_t>>;

  // tokenizers' BPE::merge_word + Word::merge_all (no dropout). `cache` (may be null) memoises
  // the ids of chunks of at most 256 bytes.
  void tokenize(const std::string& w, std::vector<int32_t>& out, Cache* cache) const {
    if (w.empty()) return;
    if (ignore_merges) {
      const int32_t id = lookup(w);
      if (id >= 0) { out.push_back(id); return; }
    }
    std::vector<int32_t> sym;
    std::vector<std::pair<size_t, size_t>> cuts;  // (symbol index, byte offset) of chunk starts
    sym.reserve(w.size());
    int32_t unk = -1;  // pending unk (fused)
    const bool plain = prefix.empty() && suffix.empty();
    for (size_t i = 0; i < w.size();) {
      const size_t start = i;
      const uint32_t cp = next_cp(w, i);
      int32_t id;
      std::string piece;
      if (plain) {
        id = lookup_cp(cp);
      } else {
        piece.assign(w, start, i - start);
        if (start > 0 && !prefix.empty()) piece = prefix + piece;
        if (i == w.size() && !suffix.empty()) piece += suffix;
        id = lookup(piece);
      }
      if (id >= 0) {
        if (unk >= 0) { sym.push_back(unk); unk = -1; }
        if (plain && !sym.empty() && cut_before(cp)) cuts.emplace_back(sym.size(), start);
        sym.push_back(id);
        continue;
      }
      if (byte_fallback) {
        if (plain) piece.assign(w, start, i - start);
        bool all = true;
        for (unsigned char c : piece) all = all && byte_ids[c] >= 0;
        if (all) {
          for (unsigned char c : piece) sym.push_back(byte_ids[c]);
          continue;
        }
      }
      if (unk_id >= 0) {
        if (unk >= 0 && !fuse_unk) sym.push_back(unk);
        unk = unk_id;
      }
    }
    if (unk >= 0) sym.push_back(unk);
    if (cuts.empty()) {
      const std::vector<int32_t> merged = bpe_merge(sym, *merges);
      out.insert(out.end(), merged.begin(), merged.end());
      return;
    }
    cuts.emplace_back(sym.size(), w.size());
    size_t s0 = 0, b0 = 0;
    std::vector<int32_t> chunk;
    for (const auto& [s1, b1] : cuts) {
      chunk.assign(sym.begin() + static_cast<std::ptrdiff_t>(s0), sym.begin() + static_cast<std::ptrdiff_t>(s1));
      if (cache && b1 - b0 <= 256) {
        std::string key = w.substr(b0, b1 - b0);
        auto it = cache->find(key);
        if (it == cache->end()) {
          if (cache->size() > 500000) cache->clear();
          it = cache->emplace(std::move(key), bpe_merge(chunk, *merges)).first;
        }
        out.insert(out.end(), it->second.begin(), it->second.end());
      } else {
        const std::vector<int32_t> merged = bpe_merge(chunk, *merges);
        out.insert(out.end(), merged.begin(), merged.end());
      }
      s0 = s1;
      b0 = b1;
    }
  }
};

// GPT-2's bytes_to_unicode table: byte -> UTF-8 of its printable stand-in character.
struct ByteLevelTable {
  std::string enc[256];
  std::unordered_map<uint32_t, unsigned char> dec;
  ByteLevelTable() {
    std::vector<int> bs;
    for (int b = '!'; b <= '~'; ++b) bs.push_back(b);
    for (int b = 0xA1; b <= 0xAC; ++b) bs.push_back(b);
    for (int b = 0xAE; b <= 0xFF; ++b) bs.push_back(b);
    std::vector<uint32_t> cs(bs.begin(), bs.end());
    uint32_t n = 0;
    for (int b = 0; b < 256; ++b) {
      if (std::find(bs.begin(), bs.end(), b) == bs.end()) {
        bs.push_back(b);
        cs.push_back(256 + n++);
      }
    }
    for (size_t i = 0; i < bs.size(); ++i) {
      append_utf8(enc[bs[i]], cs[i]);
      dec[cs[i]] = static_cast<unsigned char>(bs[i]);
    }
  }
};
const ByteLevelTable& byte_level_table() {
  static const ByteLevelTable t;
  return t;
}

const char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace

// ---------------------------------------------------------------------------------------------

struct TokenizerImpl {
  std::string path;  // tokenizer.json, for messages
  std::vector<Normalizer> normalizer;      // empty: none (else exactly one root)
  std::vector<PreTokenizer> pre_tokenizer;  // empty: none
  BpeModel model;
  std::vector<AddedToken> added;
  AddedMatcher raw_matcher, norm_matcher;
  std::unordered_map<int32_t, int> added_by_id;
  std::vector<int32_t> prefix, suffix;  // post-processor, single sequence
  std::vector<Decoder> decoder;         // empty: none
  std::vector<std::string> vocab_r;     // model vocab by id
  int32_t bos = -1, eos = -1;
  int vocab_size = 0;
  std::shared_ptr<Regex> word_char;     // one \w character (Rust regex semantics)

  // --- normalisation -------------------------------------------------------------------------
  void normalize(const Normalizer& n, std::string& s) const {
    switch (n.kind) {
      case Normalizer::Kind::kSequence:
        for (const auto& c : n.children) normalize(c, s);
        break;
      case Normalizer::Kind::kPrepend:
        if (!s.empty()) s = n.text + s;
        break;
      case Normalizer::Kind::kReplace: {
        std::vector<std::pair<size_t, size_t>> m;
        if (n.regex) {
          n.regex->find_all(s.data(), s.size(), m);
        } else if (!n.literal.empty()) {
          for (size_t p = s.find(n.literal); p != std::string::npos; p = s.find(n.literal, p + n.literal.size()))
            m.emplace_back(p, p + n.literal.size());
        }
        if (m.empty()) break;
        std::string r;
        r.reserve(s.size() + m.size() * n.text.size());
        size_t last = 0;
        for (const auto& [b, e] : m) {
          r.append(s, last, b - last);
          r += n.text;
          last = e;
        }
        r.append(s, last, std::string::npos);
        s.swap(r);
        break;
      }
      case Normalizer::Kind::kStrip: {
        size_t b = 0, e = s.size();
        if (n.strip_left) {
          while (b < e) {
            size_t i = b;
            if (!is_white_space(next_cp(s, i))) break;
            b = i;
          }
        }
        if (n.strip_right) {
          while (e > b) {
            size_t i = e - 1;
            while (i > b && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
            size_t j = i;
            if (!is_white_space(next_cp(s, j))) break;
            e = i;
          }
        }
        s = s.substr(b, e - b);
        break;
      }
      case Normalizer::Kind::kNfc:
        s = nfc(s);
        break;
    }
  }

  // --- added tokens (tokenizers' AddedVocabulary::find_matches) ------------------------------
  bool word_char_at(const std::string& s, size_t i) const {
    return word_char->matches_at_start(s.data() + i, s.size() - i);
  }
  void split_added(const Piece& in, const AddedMatcher& m, std::vector<Piece>& out) const {
    if (in.text.empty()) return;
    if (m.empty()) { out.push_back(in); return; }
    std::vector<std::tuple<int, size_t, size_t>> hits;
    m.find_all(in.text, hits);
    const std::string& s = in.text;
    size_t start_offset = 0;
    auto emit = [&](size_t b, size_t e, int32_t id) {
      if (e <= b) return;  // empty pieces are dropped by PreTokenizedString::split
      Piece p;
      p.text = s.substr(b, e - b);
      p.id = id;
      p.at_origin = in.at_origin && b == 0;
      out.push_back(std::move(p));
    };
    for (const auto& [pat, b0, e0] : hits) {
      size_t start = b0, stop = e0;
      const AddedToken& t = added[m.token[pat]];
      if (t.single_word) {
        bool start_space = true, stop_space = true;
        if (start > 0) {
          size_t i = start - 1;
          while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
          start_space = !word_char_at(s, i);
        }
        if (stop < s.size()) stop_space = !word_char_at(s, stop);
        if (!start_space || !stop_space) continue;
      }
      if (t.lstrip) {
        size_t ns = start;
        while (ns > 0) {
          size_t i = ns - 1;
          while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
          size_t j = i;
          if (!is_white_space(next_cp(s, j))) break;
          ns = i;
        }
        start = std::max(ns, start_offset);
      }
      if (t.rstrip) {
        while (stop < s.size()) {
          size_t j = stop;
          if (!is_white_space(next_cp(s, j))) break;
          stop = j;
        }
      }
      if (start_offset < start) emit(start_offset, start, -1);
      emit(start, stop, t.id);
      start_offset = stop;
    }
    if (start_offset < s.size()) emit(start_offset, s.size(), -1);
  }

  // --- pre-tokenisation -----------------------------------------------------------------------
  // Splits every non-added piece of `pieces` with `f(piece, out)`; drops empty results.
  template <typename F>
  static void split_each(std::vector<Piece>& pieces, F&& f) {
    std::vector<Piece> out;
    out.reserve(pieces.size());
    for (auto& p : pieces) {
      if (p.id >= 0) { out.push_back(std::move(p)); continue; }
      const size_t before = out.size();
      f(p, out);
      out.erase(std::remove_if(out.begin() + static_cast<std::ptrdiff_t>(before), out.end(),
                               [](const Piece& q) { return q.id < 0 && q.text.empty(); }),
                out.end());
    }
    pieces.swap(out);
  }

  // tokenizers' Pattern::find_matches + NormalizedString::split with a behaviour.
  static void split_piece(const Piece& p, const std::vector<std::pair<size_t, size_t>>& matches,
                          SplitBehavior behavior, bool invert, std::vector<Piece>& out) {
    const std::string& s = p.text;
    struct Seg { size_t b, e; bool m; };
    std::vector<Seg> segs;
    segs.reserve(2 * matches.size() + 1);
    if (s.empty()) {
      segs.push_back({0, 0, false});
    } else {
      size_t prev = 0;
      for (const auto& [b, e] : matches) {
        if (prev != b) segs.push_back({prev, b, false});
        segs.push_back({b, e, true});
        prev = e;
      }
      if (prev != s.size()) segs.push_back({prev, s.size(), false});
    }
    if (invert) for (auto& g : segs) g.m = !g.m;
    std::vector<Seg> res;
    res.reserve(segs.size());
    switch (behavior) {
      case SplitBehavior::kIsolated:
        for (auto& g : segs) res.push_back({g.b, g.e, false});
        break;
      case SplitBehavior::kRemoved:
        for (auto& g : segs) if (!g.m) res.push_back(g);
        break;
      case SplitBehavior::kMergedWithPrevious: {
        bool prev_match = false;
        for (auto& g : segs) {
          if (g.m && !prev_match && !res.empty()) res.back().e = g.e;
          else res.push_back({g.b, g.e, false});
          prev_match = g.m;
        }
        break;
      }
      case SplitBehavior::kMergedWithNext: {
        bool prev_match = false;
        for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
          if (it->m && !prev_match && !res.empty()) res.back().b = it->b;
          else res.push_back({it->b, it->e, false});
          prev_match = it->m;
        }
        std::reverse(res.begin(), res.end());
        break;
      }
      case SplitBehavior::kContiguous: {
        bool prev_match = false;
        for (auto& g : segs) {
          if (g.m == prev_match && !res.empty()) res.back().e = g.e;
          else res.push_back({g.b, g.e, false});
          prev_match = g.m;
        }
        break;
      }
    }
    if (out.capacity() < out.size() + res.size())
      out.reserve(std::max(out.size() + res.size(), 2 * out.capacity()));
    for (const auto& g : res) {
      if (g.e <= g.b) continue;
      Piece q;
      q.text = s.substr(g.b, g.e - g.b);
      q.at_origin = p.at_origin && g.b == 0;
      out.push_back(std::move(q));
    }
  }

  void pre_tokenize(const PreTokenizer& t, std::vector<Piece>& pieces) const {
    using K = PreTokenizer::Kind;
    std::vector<std::pair<size_t, size_t>> m;
    switch (t.kind) {
      case K::kSequence:
        for (const auto& c : t.children) pre_tokenize(c, pieces);
        return;
      case K::kByteLevel: {
        split_each(pieces, [&](Piece& p, std::vector<Piece>& out) {
          if (t.add_prefix_space && (p.text.empty() || p.text[0] != ' ')) p.text.insert(0, " ");
          if (t.use_regex) {
            m.clear();
            t.regex->find_all(p.text.data(), p.text.size(), m);
            split_piece(p, m, SplitBehavior::kIsolated, false, out);
          } else {
            out.push_back(std::move(p));
          }
        });
        const ByteLevelTable& bl = byte_level_table();
        for (auto& p : pieces) {
          if (p.id >= 0) continue;
          std::string r;
          r.reserve(p.text.size() * 2);
          for (unsigned char c : p.text) r += bl.enc[c];
          p.text.swap(r);
        }
        return;
      }
      case K::kMetaspace: {
        split_each(pieces, [&](Piece& p, std::vector<Piece>& out) {
          // normalized.replace(' ', replacement)
          std::string r;
          r.reserve(p.text.size() + 8);
          for (char c : p.text) {
            if (c == ' ') r += t.replacement; else r += c;
          }
          const bool starts = r.compare(0, t.replacement.size(), t.replacement) == 0;
          if ((t.prepend == PreTokenizer::Prepend::kAlways && !starts) ||
              (t.prepend == PreTokenizer::Prepend::kFirst && !starts && p.at_origin))
            r.insert(0, t.replacement);
          p.text.swap(r);
          if (!t.split) { out.push_back(std::move(p)); return; }
          m.clear();
          for (size_t pos = p.text.find(t.replacement); pos != std::string::npos;
               pos = p.text.find(t.replacement, pos + t.replacement.size()))
            m.emplace_back(pos, pos + t.replacement.size());
          split_piece(p, m, SplitBehavior::kMergedWithNext, false, out);
        });
        return;
      }
      case K::kSplit:
      case K::kDigits:
      case K::kWhitespace:
      case K::kWhitespaceSplit:
      case K::kPunctuation:
        split_each(pieces, [&](Piece& p, std::vector<Piece>& out) {
          m.clear();
          if (t.use_literal) {
            if (!t.literal.empty()) {
              for (size_t pos = p.text.find(t.literal); pos != std::string::npos;
                   pos = p.text.find(t.literal, pos + t.literal.size()))
                m.emplace_back(pos, pos + t.literal.size());
            }
          } else {
            t.regex->find_all(p.text.data(), p.text.size(), m);
          }
          split_piece(p, m, t.behavior, t.invert, out);
        });
        return;
    }
  }

  // --- encode -----------------------------------------------------------------------------------
  std::vector<int32_t> encode(const std::string& text, bool add_special) const {
    const size_t bad = find_invalid_utf8(text);
    if (bad != std::string::npos)
      throw Error(ErrorKind::kInput,
                  "text is not valid UTF-8 (invalid byte 0x" +
                      [&] { char b[8]; std::snprintf(b, sizeof(b), "%02X", static_cast<unsigned char>(text[bad])); return std::string(b); }() +
                      " at byte offset " + std::to_string(bad) + ")",
                  "text to tokenize", "convert the text to UTF-8");
    std::vector<Piece> pieces;
    {
      Piece whole;
      whole.text = text;
      whole.at_origin = true;
      split_added(whole, raw_matcher, pieces);
    }
    {
      std::vector<Piece> out;
      out.reserve(pieces.size());
      for (auto& p : pieces) {
        if (p.id >= 0) { out.push_back(std::move(p)); continue; }
        if (!normalizer.empty()) normalize(normalizer[0], p.text);
        split_added(p, norm_matcher, out);
      }
      pieces.swap(out);
    }
    if (!pre_tokenizer.empty()) pre_tokenize(pre_tokenizer[0], pieces);

    std::vector<int32_t> ids;
    if (add_special) ids = prefix;
    ids.reserve(text.size() / 3 + 16);
    // Word cache (byte-level BPE sees the same words again and again).
    // Long words are cut into independent chunks inside BpeModel::tokenize, which share a second
    // cache.
    BpeModel::Cache cache, chunk_cache;
    std::vector<int32_t> tmp;
    for (const auto& p : pieces) {
      if (p.id >= 0) { ids.push_back(p.id); continue; }
      if (p.text.size() > 256) {
        model.tokenize(p.text, ids, &chunk_cache);
        continue;
      }
      auto it = cache.find(p.text);
      if (it != cache.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        continue;
      }
      tmp.clear();
      model.tokenize(p.text, tmp, nullptr);
      ids.insert(ids.end(), tmp.begin(), tmp.end());
      if (cache.size() > 500000) cache.clear();
      cache.emplace(p.text, tmp);
    }
    if (add_special) ids.insert(ids.end(), suffix.begin(), suffix.end());
    return ids;
  }

  // --- decode -----------------------------------------------------------------------------------
  void decode_chain(const Decoder& d, std::vector<std::string>& t) const {
    using K = Decoder::Kind;
    switch (d.kind) {
      case K::kSequence:
        for (const auto& c : d.children) decode_chain(c, t);
        return;
      case K::kByteLevel: {
        const ByteLevelTable& bl = byte_level_table();
        std::string bytes;
        for (const auto& tok : t) {
          std::string mine;
          bool ok = true;
          for (size_t i = 0; i < tok.size() && ok;) {
            auto it = bl.dec.find(next_cp(tok, i));
            if (it == bl.dec.end()) ok = false; else mine += static_cast<char>(it->second);
          }
          bytes += ok ? mine : tok;
        }
        t.assign(1, utf8_lossy(bytes));
        return;
      }
      case K::kMetaspace:
        for (size_t i = 0; i < t.size(); ++i) {
          std::string r;
          for (size_t p = 0; p < t[i].size();) {
            if (t[i].compare(p, d.a.size(), d.a) == 0 && !d.a.empty()) {
              if (!(i == 0 && d.prepend)) r += ' ';
              p += d.a.size();
            } else {
              r += t[i][p++];
            }
          }
          t[i].swap(r);
        }
        return;
      case K::kReplace:
        for (auto& tok : t) {
          std::vector<std::pair<size_t, size_t>> m;
          if (d.regex) {
            d.regex->find_all(tok.data(), tok.size(), m);
          } else if (!d.a.empty()) {
            for (size_t p = tok.find(d.a); p != std::string::npos; p = tok.find(d.a, p + d.a.size()))
              m.emplace_back(p, p + d.a.size());
          }
          std::string r;
          size_t last = 0;
          for (const auto& [b, e] : m) { r.append(tok, last, b - last); r += d.b; last = e; }
          r.append(tok, last, std::string::npos);
          tok.swap(r);
        }
        return;
      case K::kByteFallback: {
        std::vector<std::string> out;
        std::string pending;
        size_t npending = 0;
        auto flush = [&] {
          if (!npending) return;
          if (find_invalid_utf8(pending) == std::string::npos) {
            out.push_back(pending);
          } else {
            for (size_t k = 0; k < npending; ++k) out.push_back("\xEF\xBF\xBD");
          }
          pending.clear();
          npending = 0;
        };
        for (auto& tok : t) {
          int v = -1;
          if (tok.size() == 6 && tok.compare(0, 3, "<0x") == 0 && tok[5] == '>') {
            unsigned x = 0;
            bool ok = true;
            for (int k = 3; k < 5; ++k) {
              const char c = tok[k];
              x *= 16;
              if (c >= '0' && c <= '9') x += c - '0';
              else if (c >= 'A' && c <= 'F') x += c - 'A' + 10;
              else if (c >= 'a' && c <= 'f') x += c - 'a' + 10;
              else ok = false;
            }
            if (ok) v = static_cast<int>(x);
          }
          if (v >= 0) {
            pending += static_cast<char>(v);
            ++npending;
          } else {
            flush();
            out.push_back(std::move(tok));
          }
        }
        flush();
        t.swap(out);
        return;
      }
      case K::kFuse: {
        std::string all;
        for (const auto& tok : t) all += tok;
        t.assign(1, all);
        return;
      }
      case K::kStrip:
        for (auto& tok : t) {
          // Strip up to `start` leading / `stop` trailing copies of the content character.
          std::vector<size_t> starts;
          for (size_t i = 0; i < tok.size(); i += char_len_at(tok, i)) starts.push_back(i);
          size_t cb = 0, ce = starts.size();
          for (int k = 0; k < d.start && cb < starts.size(); ++k) {
            const size_t e = cb + 1 < starts.size() ? starts[cb + 1] : tok.size();
            if (tok.compare(starts[cb], e - starts[cb], d.a) == 0) ++cb; else break;
          }
          for (int k = 0; k < d.stop && ce > cb; ++k) {
            const size_t e = ce < starts.size() ? starts[ce] : tok.size();
            if (tok.compare(starts[ce - 1], e - starts[ce - 1], d.a) == 0) --ce; else break;
          }
          const size_t bb = cb < starts.size() ? starts[cb] : tok.size();
          const size_t ee = ce < starts.size() ? starts[ce] : tok.size();
          tok = ee > bb ? tok.substr(bb, ee - bb) : std::string();
        }
        return;
      case K::kBpe:
        for (size_t i = 0; i < t.size(); ++i) {
          const std::string rep = i + 1 == t.size() ? "" : " ";
          std::string r;
          size_t last = 0;
          if (!d.a.empty()) {
            for (size_t p = t[i].find(d.a); p != std::string::npos; p = t[i].find(d.a, p + d.a.size())) {
              r.append(t[i], last, p - last);
              r += rep;
              last = p + d.a.size();
            }
          }
          r.append(t[i], last, std::string::npos);
          t[i].swap(r);
        }
        return;
      case K::kUnsupported:
        return;
    }
  }

  std::string token_of(int32_t id, bool* found) const {
    auto it = added_by_id.find(id);
    if (it != added_by_id.end()) { *found = true; return added[it->second].content; }
    if (id >= 0 && static_cast<size_t>(id) < vocab_r.size() && !vocab_r[id].empty()) {
      *found = true;
      return vocab_r[id];
    }
    // An empty-string vocab entry is legal but indistinguishable here; treat as unknown.
    *found = false;
    return {};
  }

  std::string decode(const std::vector<int32_t>& ids) const {
    std::vector<std::string> toks;
    toks.reserve(ids.size());
    for (int32_t id : ids) {
      bool found = false;
      std::string t = token_of(id, &found);
      if (found) toks.push_back(std::move(t));
    }
    if (decoder.empty()) {
      std::string r;
      for (size_t i = 0; i < toks.size(); ++i) {
        if (i) r += ' ';
        r += toks[i];
      }
      return r;
    }
    decode_chain(decoder[0], toks);
    std::string r;
    for (const auto& t : toks) r += t;
    return r;
  }
};

// ---------------------------------------------------------------------------------------------
// Loading.

namespace {

class Loader {
 public:
  Loader(TokenizerImpl& impl, const std::string& path) : impl_(impl), path_(path) {}

  [[noreturn]] void unsupported(const std::string& field, const std::string& type,
                                const std::string& supported) const {
    throw Error(ErrorKind::kInput,
                "unsupported " + field + " type '" + type + "' (fp4q supports: " + supported + ")",
                path_ + ": " + field, kHintIds);
  }
  [[noreturn]] void bad(const std::string& field, const std::string& what) const {
    throw Error(ErrorKind::kInput, what, path_ + ": " + field, kHintIds);
  }

  static std::string type_of(const json& j) {
    if (!j.is_object()) return "<not an object>";
    auto it = j.find("type");
    if (it == j.end() || !it->is_string()) return "<no type>";
    return it->get<std::string>();
  }
  std::string str(const json& j, const char* key, const std::string& field,
                  const std::string& dflt = {}, bool required = false) const {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) {
      if (required) bad(field, std::string("missing field '") + key + "'");
      return dflt;
    }
    if (!it->is_string()) bad(field, std::string("field '") + key + "' is not a string");
    return it->get<std::string>();
  }
  bool boolean(const json& j, const char* key, const std::string& field, bool dflt) const {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return dflt;
    if (!it->is_boolean()) bad(field, std::string("field '") + key + "' is not a boolean");
    return it->get<bool>();
  }
  // {"String": s} or {"Regex": r}: returns true for a regex.
  bool pattern(const json& j, const std::string& field, std::string& out) const {
    auto it = j.find("pattern");
    if (it == j.end() || !it->is_object()) bad(field, "missing 'pattern' object");
    if (it->contains("String") && (*it)["String"].is_string()) {
      out = (*it)["String"].get<std::string>();
      return false;
    }
    if (it->contains("Regex") && (*it)["Regex"].is_string()) {
      out = (*it)["Regex"].get<std::string>();
      return true;
    }
    bad(field, "pattern must be {\"String\": ...} or {\"Regex\": ...}");
  }
  std::shared_ptr<Regex> regex(const std::string& pattern, const std::string& field) const {
    return std::make_shared<Regex>(onig_compatible(pattern), path_ + ": " + field);
  }

  Normalizer normalizer(const json& j, const std::string& field) const {
    const std::string type = type_of(j);
    Normalizer n;
    if (type == "Sequence") {
      n.kind = Normalizer::Kind::kSequence;
      const json& arr = j.value("normalizers", json::array());
      if (!arr.is_array()) bad(field, "'normalizers' is not an array");
      for (size_t i = 0; i < arr.size(); ++i)
        n.children.push_back(normalizer(arr[i], field + ".normalizers[" + std::to_string(i) + "]"));
    } else if (type == "Prepend") {
      n.kind = Normalizer::Kind::kPrepend;
      n.text = str(j, "prepend", field, {}, true);
    } else if (type == "Replace") {
      n.kind = Normalizer::Kind::kReplace;
      std::string p;
      if (pattern(j, field, p)) n.regex = regex(p, field); else n.literal = p;
      n.text = str(j, "content", field, {}, true);
    } else if (type == "Strip") {
      n.kind = Normalizer::Kind::kStrip;
      n.strip_left = boolean(j, "strip_left", field, true);
      n.strip_right = boolean(j, "strip_right", field, true);
    } else if (type == "NFC") {
      n.kind = Normalizer::Kind::kNfc;
    } else {
      unsupported(field, type, "Sequence, Prepend, Replace, Strip, NFC");
    }
    return n;
  }

  static SplitBehavior behavior(const std::string& s, bool* ok) {
    *ok = true;
    if (s == "Removed") return SplitBehavior::kRemoved;
    if (s == "Isolated") return SplitBehavior::kIsolated;
    if (s == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
    if (s == "MergedWithNext") return SplitBehavior::kMergedWithNext;
    if (s == "Contiguous") return SplitBehavior::kContiguous;
    *ok = false;
    return SplitBehavior::kIsolated;
  }

  PreTokenizer pre_tokenizer(const json& j, const std::string& field) const {
    const std::string type = type_of(j);
    PreTokenizer t;
    using K = PreTokenizer::Kind;
    if (type == "Sequence") {
      t.kind = K::kSequence;
      const json& arr = j.value("pretokenizers", json::array());
      if (!arr.is_array()) bad(field, "'pretokenizers' is not an array");
      for (size_t i = 0; i < arr.size(); ++i)
        t.children.push_back(pre_tokenizer(arr[i], field + ".pretokenizers[" + std::to_string(i) + "]"));
    } else if (type == "ByteLevel") {
      t.kind = K::kByteLevel;
      t.add_prefix_space = boolean(j, "add_prefix_space", field, true);
      t.use_regex = boolean(j, "use_regex", field, true);
      if (t.use_regex) t.regex = regex(kGpt2Pattern, field);
    } else if (type == "Split") {
      t.kind = K::kSplit;
      std::string p;
      if (pattern(j, field, p)) {
        t.regex = regex(p, field);
      } else {
        t.use_literal = true;
        t.literal = p;
      }
      bool ok;
      const std::string b = str(j, "behavior", field, {}, true);
      t.behavior = behavior(b, &ok);
      if (!ok) unsupported(field + ".behavior", b, "Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous");
      t.invert = boolean(j, "invert", field, false);
    } else if (type == "Metaspace") {
      t.kind = K::kMetaspace;
      t.replacement = str(j, "replacement", field, "\u2581");
      if (t.replacement.empty() || find_invalid_utf8(t.replacement) != std::string::npos ||
          char_len_at(t.replacement, 0) != t.replacement.size())
        bad(field, "'replacement' must be one character");
      if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
        const std::string s = j["prepend_scheme"].get<std::string>();
        if (s == "always") t.prepend = PreTokenizer::Prepend::kAlways;
        else if (s == "first") t.prepend = PreTokenizer::Prepend::kFirst;
        else if (s == "never") t.prepend = PreTokenizer::Prepend::kNever;
        else unsupported(field + ".prepend_scheme", s, "always, first, never");
      } else {
        t.prepend = boolean(j, "add_prefix_space", field, true) ? PreTokenizer::Prepend::kAlways
                                                                 : PreTokenizer::Prepend::kNever;
      }
      t.split = boolean(j, "split", field, true);
    } else if (type == "Digits") {
      t.kind = K::kDigits;
      t.regex = regex("\\p{N}", field);
      t.behavior = boolean(j, "individual_digits", field, false) ? SplitBehavior::kIsolated
                                                                  : SplitBehavior::kContiguous;
    } else if (type == "Whitespace") {
      t.kind = K::kWhitespace;
      const std::string w = "\\p{L}\\p{Nl}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}";
      t.regex = regex("[" + w + "]+|[^" + w + "\\s]+", field);
      t.behavior = SplitBehavior::kRemoved;
      t.invert = true;
    } else if (type == "WhitespaceSplit") {
      t.kind = K::kWhitespaceSplit;
      t.regex = regex("\\s", field);
      t.behavior = SplitBehavior::kRemoved;
    } else if (type == "Punctuation") {
      t.kind = K::kPunctuation;
      t.regex = regex("[\\p{P}!-/:-@\\[-`{-~]", field);
      bool ok;
      const std::string b = str(j, "behavior", field, "Isolated");
      t.behavior = behavior(b, &ok);
      if (!ok) unsupported(field + ".behavior", b, "Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous");
    } else {
      unsupported(field, type,
                  "Sequence, ByteLevel, Split, Metaspace, Digits, Whitespace, WhitespaceSplit, "
                  "Punctuation");
    }
    return t;
  }

  Decoder decoder(const json& j, const std::string& field) const {
    const std::string type = type_of(j);
    Decoder d;
    using K = Decoder::Kind;
    if (type == "Sequence") {
      d.kind = K::kSequence;
      const json& arr = j.value("decoders", json::array());
      for (size_t i = 0; i < arr.size(); ++i)
        d.children.push_back(decoder(arr[i], field + ".decoders[" + std::to_string(i) + "]"));
    } else if (type == "ByteLevel") {
      d.kind = K::kByteLevel;
    } else if (type == "Metaspace") {
      d.kind = K::kMetaspace;
      d.a = str(j, "replacement", field, "\u2581");
      if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string())
        d.prepend = j["prepend_scheme"].get<std::string>() != "never";
      else
        d.prepend = boolean(j, "add_prefix_space", field, true);
    } else if (type == "Replace") {
      d.kind = K::kReplace;
      std::string p;
      if (pattern(j, field, p)) d.regex = regex(p, field); else d.a = p;
      d.b = str(j, "content", field, {}, true);
    } else if (type == "ByteFallback") {
      d.kind = K::kByteFallback;
    } else if (type == "Fuse") {
      d.kind = K::kFuse;
    } else if (type == "Strip") {
      d.kind = K::kStrip;
      d.a = str(j, "content", field, " ");
      d.start = j.value("start", 0);
      d.stop = j.value("stop", 0);
    } else if (type == "BPEDecoder") {
      d.kind = K::kBpe;
      d.a = str(j, "suffix", field, "</w>");
    } else {
      spdlog::warn("{}: decoder type '{}' is not supported; decode() will concatenate tokens",
                   path_, type);
      d.kind = K::kUnsupported;
    }
    return d;
  }

  void model(const json& j) {
    const std::string field = "model";
    const std::string type = type_of(j);
    if (type != "BPE") {
      // Old files omit model.type; a BPE model is recognised by its merges.
      if (!(type == "<no type>" && j.is_object() && j.contains("merges")))
        unsupported(field, type, "BPE");
    }
    BpeModel& m = impl_.model;
    if (j.contains("dropout") && j["dropout"].is_number() && j["dropout"].get<double>() > 0.0)
      bad(field, "BPE dropout " + std::to_string(j["dropout"].get<double>()) +
                     " makes tokenization random; expected null or 0");
    const json& vocab = j.value("vocab", json::object());
    if (!vocab.is_object() || vocab.empty()) bad(field + ".vocab", "missing or empty vocab object");
    m.vocab.reserve(vocab.size() * 2);
    int32_t max_id = -1;
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      if (!is_token_id(it.value()))
        bad(field + ".vocab", "id of token " + q_(it.key()) + " is not a non-negative int32");
      const int32_t id = static_cast<int32_t>(it.value().get<int64_t>());
      m.vocab[it.key()] = id;
      max_id = std::max(max_id, id);
    }
    // Real vocabularies number their tokens 0..N-1; a sparse id far beyond the entry count would
    // size the id->token table in gigabytes (fuzz finding
    // tests/data/fuzz_regressions/tokenizer/vocab_id_sparse_allocates_gigabytes).
    if (static_cast<int64_t>(max_id) >= 2 * static_cast<int64_t>(m.vocab.size()) + (1 << 16))
      bad(field + ".vocab", "token ids are not dense: largest id " + std::to_string(max_id) + " for " +
                                std::to_string(m.vocab.size()) + " tokens");
    impl_.vocab_r.assign(static_cast<size_t>(max_id) + 1, std::string());
    for (const auto& [tok, id] : m.vocab) impl_.vocab_r[id] = tok;
    m.small_char_ids.assign(1024, -1);
    for (const auto& [tok, id] : m.vocab) {
      if (tok.empty() || find_invalid_utf8(tok) != std::string::npos) continue;
      if (char_len_at(tok, 0) != tok.size()) continue;
      size_t i = 0;
      const uint32_t cp = next_cp(tok, i);
      if (cp < m.small_char_ids.size()) m.small_char_ids[cp] = id; else m.char_ids[cp] = id;
    }
    m.prefix = str(j, "continuing_subword_prefix", field);
    m.suffix = str(j, "end_of_word_suffix", field);
    m.fuse_unk = boolean(j, "fuse_unk", field, false);
    m.byte_fallback = boolean(j, "byte_fallback", field, false);
    m.ignore_merges = boolean(j, "ignore_merges", field, false);
    const std::string unk = str(j, "unk_token", field);
    if (!unk.empty()) {
      m.unk_id = m.lookup(unk);
      if (m.unk_id < 0) bad(field + ".unk_token", "unk_token " + q_(unk) + " is not in the vocab");
    }
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      m.byte_ids[b] = m.lookup(name);
    }
    // Merges: "a b" strings (split on ' ', exactly two parts; "#version" lines skipped) or
    // [a, b] pairs.
    const json& merges = j.value("merges", json::array());
    if (!merges.is_array()) bad(field + ".merges", "merges is not an array");
    std::vector<std::pair<std::pair<int32_t, int32_t>, BpeMergeRule>> rules;
    rules.reserve(merges.size());
    int32_t rank = 0;
    for (size_t i = 0; i < merges.size(); ++i) {
      const json& e = merges[i];
      std::string a, b;
      if (e.is_string()) {
        const std::string line = e.get<std::string>();
        if (line.rfind("#version", 0) == 0) continue;
        const size_t sp = line.find(' ');
        if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
          bad(field + ".merges[" + std::to_string(i) + "]",
              "merge " + q_(line) + " is not two tokens separated by one space");
        a = line.substr(0, sp);
        b = line.substr(sp + 1);
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
        a = e[0].get<std::string>();
        b = e[1].get<std::string>();
      } else {
        bad(field + ".merges[" + std::to_string(i) + "]", "merge is neither \"a b\" nor [a, b]");
      }
      const int32_t ia = m.lookup(a), ib = m.lookup(b);
      const std::string merged = a + (b.size() >= m.prefix.size() ? b.substr(m.prefix.size()) : b);
      const int32_t im = m.lookup(merged);
      if (ia < 0 || ib < 0 || im < 0)
        bad(field + ".merges[" + std::to_string(i) + "]",
            "merge " + q_(a) + " + " + q_(b) + " refers to a token not in the vocab (" +
                q_(ia < 0 ? a : ib < 0 ? b : merged) + ")");
      rules.push_back({{ia, ib}, {rank++, im}});
    }
    m.merges = make_bpe_merge_table(rules);
    m.small_right_first.assign(1024, 0);
    for (const auto& r : rules) {
      const std::string& b = impl_.vocab_r[r.first.second];
      if (b.empty()) continue;
      size_t i = 0;
      const uint32_t cp = next_cp(b, i);
      if (cp < m.small_right_first.size()) m.small_right_first[cp] = 1; else m.right_first.insert(cp);
    }
  }

  void added_tokens(const json& arr) {
    if (arr.is_null()) return;
    if (!arr.is_array()) bad("added_tokens", "added_tokens is not an array");
    for (size_t i = 0; i < arr.size(); ++i) {
      const json& e = arr[i];
      const std::string field = "added_tokens[" + std::to_string(i) + "]";
      AddedToken t;
      t.content = str(e, "content", field, {}, true);
      if (!e.contains("id") || !is_token_id(e["id"]))
        bad(field, "missing or invalid 'id'");
      t.id = static_cast<int32_t>(e["id"].get<int64_t>());
      t.special = boolean(e, "special", field, false);
      t.single_word = boolean(e, "single_word", field, false);
      t.lstrip = boolean(e, "lstrip", field, false);
      t.rstrip = boolean(e, "rstrip", field, false);
      t.normalized = boolean(e, "normalized", field, !t.special);
      if (t.content.empty()) continue;
      // tokenizers gives a token that is already in the model vocab the model's id.
      const int32_t vid = impl_.model.lookup(t.content);
      if (vid >= 0 && vid != t.id) {
        spdlog::warn("{}: added token {} has id {} but the model vocab says {}; using {}", path_,
                     q_(t.content), t.id, vid, vid);
        t.id = vid;
      }
      impl_.added_by_id[t.id] = static_cast<int>(impl_.added.size());
      impl_.added.push_back(t);
    }
    // Matchers: special tokens first, then the others (tokenizers' order), split by `normalized`.
    for (int pass = 0; pass < 2; ++pass) {
      for (size_t i = 0; i < impl_.added.size(); ++i) {
        const AddedToken& t = impl_.added[i];
        if (t.special != (pass == 0)) continue;
        if (t.normalized) {
          std::string n = t.content;
          if (!impl_.normalizer.empty()) impl_.normalize(impl_.normalizer[0], n);
          impl_.norm_matcher.patterns.push_back(n);
          impl_.norm_matcher.token.push_back(static_cast<int>(i));
        } else {
          impl_.raw_matcher.patterns.push_back(t.content);
          impl_.raw_matcher.token.push_back(static_cast<int>(i));
        }
      }
    }
    impl_.raw_matcher.build();
    impl_.norm_matcher.build();
  }

  // Resolves a token string to an id (added tokens first, then the model vocab); -1 if unknown.
  int32_t token_id(const std::string& tok) const {
    for (const auto& t : impl_.added)
      if (t.content == tok) return t.id;
    return impl_.model.lookup(tok);
  }

  void post_processor(const json& j, const std::string& field, std::vector<int32_t>& prefix,
                      std::vector<int32_t>& suffix) const {
    if (j.is_null()) return;
    const std::string type = type_of(j);
    if (type == "Sequence") {
      const json& arr = j.value("processors", json::array());
      for (size_t i = 0; i < arr.size(); ++i)
        post_processor(arr[i], field + ".processors[" + std::to_string(i) + "]", prefix, suffix);
    } else if (type == "ByteLevel") {
      // Only trims offsets.
    } else if (type == "TemplateProcessing") {
      const json& single = j.value("single", json::array());
      const json& specials = j.value("special_tokens", json::object());
      std::vector<int32_t> pre, post;
      bool seen_a = false;
      for (const auto& piece : single) {
        if (piece.contains("Sequence")) {
          if (seen_a) bad(field + ".single", "template has more than one sequence");
          seen_a = true;
          continue;
        }
        if (!piece.contains("SpecialToken")) bad(field + ".single", "unknown template piece " + piece.dump());
        const std::string name = piece["SpecialToken"].value("id", std::string());
        auto it = specials.find(name);
        std::vector<int32_t> ids;
        if (it != specials.end() && it->contains("ids")) {
          // A special token's ids must be token ids: a float or out-of-range number is an input
          // error, not an undefined float->int conversion (fuzz finding
          // tests/data/fuzz_regressions/tokenizer/post_processor_special_id_huge_float).
          const json& arr = (*it)["ids"];
          if (!arr.is_array()) bad(field + ".special_tokens", q_(name) + ".ids must be a list, got " + arr.dump());
          for (const auto& v : arr) {
            if (!is_token_id(v))
              bad(field + ".special_tokens", q_(name) + ".ids has " + v.dump() + ", not a token id");
            ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
          }
        } else {
          const int32_t id = token_id(name);
          if (id < 0) bad(field + ".special_tokens", "template token " + q_(name) + " is unknown");
          ids.push_back(id);
        }
        auto& dst = seen_a ? post : pre;
        dst.insert(dst.end(), ids.begin(), ids.end());
      }
      // A later processor wraps the output of an earlier one.
      prefix.insert(prefix.begin(), pre.begin(), pre.end());
      suffix.insert(suffix.end(), post.begin(), post.end());
    } else if (type == "RobertaProcessing" || type == "BertProcessing") {
      auto id_of = [&](const char* key) {
        const json& p = j.value(key, json());
        if (!p.is_array() || p.size() != 2 || !p[1].is_number_integer())
          bad(field + "." + key, "expected [token, id]");
        return p[1].get<int32_t>();
      };
      prefix.insert(prefix.begin(), id_of("cls"));
      suffix.push_back(id_of("sep"));
    } else {
      unsupported(field, type, "TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence");
    }
  }

  void load(const json& root) {
    if (!root.is_object()) bad("(root)", "tokenizer.json is not a JSON object");
    impl_.path = path_;
    const json& norm = root.value("normalizer", json());
    if (!norm.is_null()) impl_.normalizer.push_back(normalizer(norm, "normalizer"));
    const json& pre = root.value("pre_tokenizer", json());
    if (!pre.is_null()) impl_.pre_tokenizer.push_back(pre_tokenizer(pre, "pre_tokenizer"));
    if (!root.contains("model")) bad("model", "missing 'model'");
    model(root["model"]);
    added_tokens(root.value("added_tokens", json::array()));
    post_processor(root.value("post_processor", json()), "post_processor", impl_.prefix, impl_.suffix);
    const json& dec = root.value("decoder", json());
    if (!dec.is_null()) impl_.decoder.push_back(decoder(dec, "decoder"));
    if (!root.value("truncation", json()).is_null() || !root.value("padding", json()).is_null())
      spdlog::warn("{}: truncation/padding settings are ignored (fp4q tokenizes whole texts)", path_);
    impl_.word_char = std::make_shared<Regex>("[\\p{L}\\p{Nl}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]",
                                              "word-character class");
    int32_t vmax = static_cast<int32_t>(impl_.vocab_r.size()) - 1;
    for (const auto& t : impl_.added) vmax = std::max(vmax, t.id);
    impl_.vocab_size = vmax + 1;
    // The post_processor's template ids are emitted as model inputs: each must be a token of this
    // vocabulary (fuzz finding tests/data/fuzz_regressions/tokenizer/template_id_outside_vocab).
    for (const auto* ids : {&impl_.prefix, &impl_.suffix})
      for (int32_t id : *ids)
        if (id < 0 || id >= impl_.vocab_size)
          bad("post_processor", "special-token id " + std::to_string(id) + " is outside the vocabulary (" +
                                    std::to_string(impl_.vocab_size) + " tokens)");
  }

  // tokenizer_config.json: bos/eos tokens, add_bos_token / add_eos_token.
  void config(const json& cfg, const std::string& cfg_path) {
    auto token_name = [&](const char* key) -> std::string {
      auto it = cfg.find(key);
      if (it == cfg.end() || it->is_null()) return {};
      if (it->is_string()) return it->get<std::string>();
      if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
        return (*it)["content"].get<std::string>();
      throw Error(ErrorKind::kInput, std::string("'") + key + "' is neither a string nor {\"content\": ...}",
                  cfg_path + ": " + key);
    };
    const std::string bos = token_name("bos_token"), eos = token_name("eos_token");
    if (!bos.empty()) {
      impl_.bos = token_id(bos);
      if (impl_.bos < 0)
        throw Error(ErrorKind::kInput, "bos_token " + q_(bos) + " is not in the vocabulary of " + path_,
                    cfg_path + ": bos_token");
    }
    if (!eos.empty()) {
      impl_.eos = token_id(eos);
      if (impl_.eos < 0)
        throw Error(ErrorKind::kInput, "eos_token " + q_(eos) + " is not in the vocabulary of " + path_,
                    cfg_path + ": eos_token");
    }
    auto flag = [&](const char* key) -> int {
      auto it = cfg.find(key);
      if (it == cfg.end() || !it->is_boolean()) return -1;
      return it->get<bool>() ? 1 : 0;
    };
    const int add_bos = flag("add_bos_token"), add_eos = flag("add_eos_token");
    if (add_bos >= 0 || add_eos >= 0) {
      impl_.prefix.clear();
      impl_.suffix.clear();
      if (add_bos == 1) {
        if (impl_.bos < 0)
          throw Error(ErrorKind::kInput, "add_bos_token is true but there is no bos_token", cfg_path + ": add_bos_token");
        impl_.prefix.push_back(impl_.bos);
      }
      if (add_eos == 1) {
        if (impl_.eos < 0)
          throw Error(ErrorKind::kInput, "add_eos_token is true but there is no eos_token", cfg_path + ": add_eos_token");
        impl_.suffix.push_back(impl_.eos);
      }
    }
  }

  void finish() {
    if (impl_.bos < 0 && !impl_.prefix.empty()) impl_.bos = impl_.prefix.front();
    if (impl_.eos < 0) {
      for (const char* name : {"</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>"}) {
        for (const auto& t : impl_.added) {
          if (t.special && t.content == name) { impl_.eos = t.id; break; }
        }
        if (impl_.eos >= 0) break;
      }
    }
  }

 private:
  TokenizerImpl& impl_;
  std::string path_;
};

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(ErrorKind::kIo, std::string("cannot open file: ") + std::strerror(errno), path);
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw Error(ErrorKind::kIo, "read failed", path);
  return ss.str();
}

json parse_json(const std::string& text, const std::string& path) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    throw Error(ErrorKind::kInput, std::string("not valid JSON: ") + e.what(), path);
  }
}

}  // namespace
}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Public API.

Tokenizer Tokenizer::from_file(const std::string& tokenizer_json, const std::string& tokenizer_config_json) {
  const std::string text = detail::read_text(tokenizer_json);
  const std::string config = tokenizer_config_json.empty() ? std::string()
                                                           : detail::read_text(tokenizer_config_json);
  if (!tokenizer_config_json.empty() && config.empty())
    throw Error(ErrorKind::kInput, "not valid JSON: the file is empty", tokenizer_config_json);
  return from_json_text(text, config, tokenizer_json, tokenizer_config_json);
}

Tokenizer Tokenizer::from_json_text(const std::string& tokenizer_json_text,
                                    const std::string& config_text, const std::string& name) {
  return from_json_text(tokenizer_json_text, config_text, name, "tokenizer_config.json");
}

Tokenizer Tokenizer::from_json_text(const std::string& tokenizer_json_text,
                                    const std::string& config_text, const std::string& name,
                                    const std::string& config_name) {
  auto impl = std::make_shared<detail::TokenizerImpl>();
  detail::Loader loader(*impl, name);
  try {
    loader.load(detail::parse_json(tokenizer_json_text, name));
    if (!config_text.empty())
      loader.config(detail::parse_json(config_text, config_name), config_name);
  } catch (const detail::json::exception& e) {
    // A field of an unexpected JSON type that the explicit checks above did not catch.
    throw Error(ErrorKind::kInput, std::string("unexpected JSON structure: ") + e.what(), name,
                detail::kHintIds);
  }
  loader.finish();
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::from_dir(const std::string& model_dir) {
  const std::string tj = model_dir + "/tokenizer.json";
  const std::string tc = model_dir + "/tokenizer_config.json";
  if (!std::ifstream(tj).good())
    throw Error(ErrorKind::kInput, "the model directory has no readable tokenizer.json", tj,
                std::string("fp4q reads Hugging Face tokenizer.json files only; ") + detail::kHintIds);
  return from_file(tj, std::ifstream(tc).good() ? tc : std::string());
}

std::vector<int32_t> Tokenizer::encode(const std::string& text, bool add_special_tokens) const {
  return impl_->encode(text, add_special_tokens);
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const { return impl_->decode(ids); }

int32_t Tokenizer::bos_id() const { return impl_->bos; }
int32_t Tokenizer::eos_id() const { return impl_->eos; }
int Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::string Tokenizer::id_to_token(int32_t id) const {
  bool found = false;
  return impl_->token_of(id, &found);
}

}  // namespace fp4q::model
