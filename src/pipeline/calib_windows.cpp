// src/pipeline/calib_windows.cpp — calibration windows from / to a JSON file (--calib-windows,
// --dump-calib); see fp4q/calib/windows.h for the file format.
#include "fp4q/pipeline/calib_windows.h"

#include <spdlog/spdlog.h>

#include "fp4q/core/error.h"
#include "internal.h"

namespace fp4q::pipeline {

namespace detail {

calib::CalibSet calibration_windows(const std::string& model_dir, const model::ModelConfig& cfg,
                                    const CalibOptions& c) {
  calib::WindowsMeta meta;
  auto set = calib::read_windows(c.windows_path, cfg.vocab, &meta);
  if (cfg.max_pos > 0 && set.seqlen > cfg.max_pos)
    throw Error(ErrorKind::kInput,
                "windows have " + std::to_string(set.seqlen) + " tokens, more than max_position_embeddings " +
                    std::to_string(cfg.max_pos),
                c.windows_path, "cut the windows to at most " + std::to_string(cfg.max_pos) + " tokens");
  spdlog::info("calibration: {} windows x {} tokens from {} (--samples/--seqlen/--seed/--calib not used)",
               set.samples.size(), set.seqlen, c.windows_path);
  if (!c.dump_path.empty()) {
    if (meta.source.empty()) meta.source = c.windows_path;
    if (meta.tokenizer.empty()) meta.tokenizer = model_dir;
    dump_calibration_windows(c.dump_path, set, meta);
  }
  return set;
}

void dump_calibration_windows(const std::string& path, const calib::CalibSet& set,
                              const calib::WindowsMeta& meta) {
  calib::write_windows(path, set, meta);
  spdlog::info("wrote {} calibration windows x {} tokens to {}", set.samples.size(), set.seqlen, path);
}

}  // namespace detail

void dump_calibration(const std::string& model_dir, const CalibOptions& c) {
  if (c.dump_path.empty()) throw Error(ErrorKind::kUsage, "no output file", "--dump-calib");
  const auto cfg = model::ModelConfig::load(model_dir);
  detail::calibration_set(model_dir, cfg, c);
}

std::vector<int32_t> eval_token_ids(const std::string& model_dir, const std::string& text_path, bool with_bos) {
  int32_t bos = -1;
  auto ids = detail::token_stream(model_dir, text_path, "", &bos);
  if (with_bos && bos >= 0) ids.insert(ids.begin(), bos);  // as run_eval does
  return ids;
}

std::string ids_json(const std::vector<int32_t>& ids) {
  std::string s = "[";
  s.reserve(ids.size() * 6 + 2);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(ids[i]);
  }
  return s + "]\n";
}

}  // namespace fp4q::pipeline
