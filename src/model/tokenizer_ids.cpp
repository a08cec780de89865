// tokenizer_ids.cpp — read_token_ids: pre-tokenised calibration input (see fp4q/model/tokenizer.h).
//
// Two formats, told apart by the first non-blank character:
//   '['  a JSON array of integers, possibly nested (flattened in order);
//   else plain text: integers separated by whitespace and/or commas, '#' comments to end of line.
// Both are parsed by hand so every error names the 1-based line.
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "fp4q/core/error.h"
#include "fp4q/model/tokenizer.h"

namespace fp4q::model {
namespace {

class IdParser {
 public:
  IdParser(const std::string& path, const std::string& text) : path_(path), s_(text) {}

  std::vector<int32_t> parse() {
    skip_blank(false);
    if (i_ < s_.size() && s_[i_] == '[') {
      parse_json_array(0);
      skip_blank(false);
      if (i_ < s_.size()) fail("unexpected " + describe() + " after the JSON array");
    } else {
      parse_text();
    }
    if (ids_.empty())
      throw Error(ErrorKind::kInput, "the file contains no token ids", path_,
                  "write token ids separated by spaces, newlines or commas, or a JSON array");
    return std::move(ids_);
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(ErrorKind::kInput, what, path_ + ":" + std::to_string(line_),
                "token-id files hold integers in [0, 2^31) separated by whitespace/commas, or a "
                "JSON array of such integers");
  }
  std::string describe() const {
    if (i_ >= s_.size()) return "end of file";
    const char c = s_[i_];
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7F) {
      char b[16];
      std::snprintf(b, sizeof(b), "byte 0x%02X", static_cast<unsigned char>(c));
      return b;
    }
    // Show the offending word.
    size_t e = i_;
    while (e < s_.size() && e - i_ < 20 && !std::strchr(" \t\r\n,[]", s_[e])) ++e;
    return "'" + s_.substr(i_, std::max<size_t>(e - i_, 1)) + "'";
  }
  // Skips whitespace (and commas + '#' comments when text_mode).
  void skip_blank(bool text_mode) {
    while (i_ < s_.size()) {
      const char c = s_[i_];
      if (c == '\n') {
        ++line_;
        ++i_;
      } else if (c == ' ' || c == '\t' || c == '\r' || (text_mode && c == ',')) {
        ++i_;
      } else if (text_mode && c == '#') {
        while (i_ < s_.size() && s_[i_] != '\n') ++i_;
      } else {
        break;
      }
    }
  }
  bool at_digit() const { return i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9'; }
  void parse_int() {
    if (i_ < s_.size() && s_[i_] == '-' && i_ + 1 < s_.size() && s_[i_ + 1] >= '0' && s_[i_ + 1] <= '9')
      fail("token id " + describe() + " is negative");
    if (i_ < s_.size() && s_[i_] == '+') ++i_;
    if (!at_digit()) fail("expected a token id, found " + describe());
    const size_t start = i_;
    int64_t v = 0;
    while (at_digit()) {
      v = v * 10 + (s_[i_] - '0');
      if (v > INT32_MAX) fail("token id '" + s_.substr(start, i_ - start + 1) + "...' is larger than 2^31-1");
      ++i_;
    }
    if (i_ < s_.size() && !std::strchr(" \t\r\n,[]#", s_[i_])) {
      i_ = start;
      fail("expected an integer token id, found " + describe());
    }
    ids_.push_back(static_cast<int32_t>(v));
  }
  void parse_text() {
    for (;;) {
      skip_blank(true);
      if (i_ >= s_.size()) return;
      if (s_[i_] == '[' || s_[i_] == ']') fail("unexpected " + describe() + " in a plain-text id list");
      parse_int();
    }
  }
  void parse_json_array(int depth) {
    if (depth > 64) fail("JSON arrays nested too deeply");
    ++i_;  // '['
    skip_blank(false);
    if (i_ < s_.size() && s_[i_] == ']') { ++i_; return; }
    for (;;) {
      skip_blank(false);
      if (i_ < s_.size() && s_[i_] == '[') parse_json_array(depth + 1); else parse_int();
      skip_blank(false);
      if (i_ >= s_.size()) fail("unterminated JSON array (missing ']')");
      if (s_[i_] == ',') { ++i_; continue; }
      if (s_[i_] == ']') { ++i_; return; }
      fail("expected ',' or ']' in the JSON array, found " + describe());
    }
  }

  const std::string& path_;
  const std::string& s_;
  size_t i_ = 0;
  int line_ = 1;
  std::vector<int32_t> ids_;
};

}  // namespace

std::vector<int32_t> read_token_ids(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(ErrorKind::kIo, std::string("cannot open token-id file: ") + std::strerror(errno), path);
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw Error(ErrorKind::kIo, "read failed", path);
  return parse_token_ids(ss.str(), path);
}

std::vector<int32_t> parse_token_ids(const std::string& text, const std::string& where) {
  return IdParser(where, text).parse();
}

}  // namespace fp4q::model
