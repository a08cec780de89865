// src/calib/windows.cpp — calibration windows JSON (see fp4q/calib/windows.h).
#include "fp4q/calib/windows.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "fp4q/core/error.h"
#include "fp4q/io/writer.h"

namespace fp4q::calib {

namespace {

using json = nlohmann::json;

template <class V>
void append_int_list(std::string& s, const V& v) {
  s += '[';
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(v[i]);
  }
  s += ']';
}

std::string where_sample(const std::string& path, size_t i) {
  return path + ": samples[" + std::to_string(i) + "]";
}

}  // namespace

std::string windows_json(const CalibSet& set, const WindowsMeta& meta) {
  std::string s;
  s.reserve(set.samples.size() * static_cast<size_t>(set.seqlen) * 7 + 512);
  s += "{\"format\": \"fp4q-calib-windows\", \"version\": 1,\n";
  s += " \"source\": " + json(meta.source).dump() + ", \"tokenizer\": " + json(meta.tokenizer).dump() + ",\n";
  s += " \"seed\": " + std::to_string(meta.seed) + ", \"seqlen\": " + std::to_string(set.seqlen) +
       ", \"n\": " + std::to_string(set.samples.size()) + ", \"bos\": " + std::to_string(meta.bos) + ",\n";
  s += " \"offsets\": ";
  append_int_list(s, set.offsets);
  s += ",\n \"samples\": [\n";
  for (size_t i = 0; i < set.samples.size(); ++i) {
    s += "  ";
    append_int_list(s, set.samples[i]);
    s += i + 1 < set.samples.size() ? ",\n" : "\n";
  }
  s += " ]}\n";
  return s;
}

void write_windows(const std::string& path, const CalibSet& set, const WindowsMeta& meta) {
  io::write_file_atomic(path, windows_json(set, meta));
}

CalibSet read_windows(const std::string& path, int64_t vocab, WindowsMeta* meta) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(ErrorKind::kIo, std::string("cannot open calibration windows file: ") + std::strerror(errno), path);
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw Error(ErrorKind::kIo, "read failed", path);
  json j;
  try {
    j = json::parse(ss.str());
  } catch (const json::parse_error& e) {
    throw Error(ErrorKind::kInput, std::string("not valid JSON: ") + e.what(), path,
                "write it with `fp4q quantize ... --dump-calib FILE` or as [[ids...], ...]");
  }
  const json* samples = &j;
  if (j.is_object()) {
    if (j.contains("format") && j["format"] != "fp4q-calib-windows")
      throw Error(ErrorKind::kInput, "\"format\" is " + j["format"].dump() + ", expected \"fp4q-calib-windows\"", path);
    if (!j.contains("samples"))
      throw Error(ErrorKind::kInput, "JSON object without \"samples\"", path,
                  "expected {\"samples\": [[ids...], ...], ...} or a bare array of arrays");
    samples = &j["samples"];
  }
  if (!samples->is_array() || samples->empty())
    throw Error(ErrorKind::kInput, "\"samples\" must be a non-empty array of arrays of token ids", path);
  CalibSet set;
  for (size_t i = 0; i < samples->size(); ++i) {
    const json& w = (*samples)[i];
    if (!w.is_array())
      throw Error(ErrorKind::kInput, "a window must be an array of token ids, got " + std::string(w.type_name()),
                  where_sample(path, i));
    const int64_t len = static_cast<int64_t>(w.size());
    if (i == 0) {
      if (len < 2)
        throw Error(ErrorKind::kInput, "a window needs at least 2 tokens, got " + std::to_string(len),
                    where_sample(path, i));
      set.seqlen = len;
    } else if (len != set.seqlen) {
      throw Error(ErrorKind::kInput,
                  "window has " + std::to_string(len) + " tokens, samples[0] has " + std::to_string(set.seqlen),
                  where_sample(path, i), "all calibration windows must have the same length");
    }
    std::vector<int32_t> ids;
    ids.reserve(static_cast<size_t>(len));
    for (size_t k = 0; k < w.size(); ++k) {
      const json& v = w[k];
      const bool ok = v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() <= INT32_MAX;
      if (!ok)
        throw Error(ErrorKind::kInput, "token id " + v.dump() + " is not an integer in [0, 2^31)",
                    where_sample(path, i) + "[" + std::to_string(k) + "]");
      const int64_t id = v.get<int64_t>();
      if (vocab > 0 && id >= vocab)
        throw Error(ErrorKind::kInput,
                    "token id " + std::to_string(id) + " is not below the model's vocab_size " + std::to_string(vocab),
                    where_sample(path, i) + "[" + std::to_string(k) + "]",
                    "the windows were made with a different tokenizer");
      ids.push_back(static_cast<int32_t>(id));
    }
    set.samples.push_back(std::move(ids));
  }
  if (j.is_object() && j.contains("seqlen") && j["seqlen"].is_number_integer() &&
      j["seqlen"].get<int64_t>() != set.seqlen)
    throw Error(ErrorKind::kInput,
                "\"seqlen\" is " + j["seqlen"].dump() + " but the windows have " + std::to_string(set.seqlen) + " tokens",
                path);
  set.offsets.assign(set.samples.size(), -1);
  if (j.is_object() && j.contains("offsets") && j["offsets"].is_array() &&
      j["offsets"].size() == set.samples.size()) {
    for (size_t i = 0; i < set.samples.size(); ++i)
      if (j["offsets"][i].is_number_integer()) set.offsets[i] = j["offsets"][i].get<int64_t>();
  }
  if (meta) {
    *meta = WindowsMeta{};
    if (j.is_object()) {
      if (j.contains("source") && j["source"].is_string()) meta->source = j["source"].get<std::string>();
      if (j.contains("tokenizer") && j["tokenizer"].is_string()) meta->tokenizer = j["tokenizer"].get<std::string>();
      if (j.contains("seed") && j["seed"].is_number_unsigned()) meta->seed = j["seed"].get<uint64_t>();
      if (j.contains("bos") && j["bos"].is_number_integer()) meta->bos = j["bos"].get<int32_t>();
    }
  }
  return set;
}

}  // namespace fp4q::calib
