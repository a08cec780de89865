// fp4q/pipeline/calib_windows.h — token ids for other tools: `--dump-calib FILE` without
// quantizing (the calibration windows exactly as quantize/report/hessians build them) and
// `fp4q tokenize` (the id stream `fp4q eval --text` scores), so that a second tool can calibrate
// and evaluate on identical ids.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fp4q/pipeline/quantize.h"

namespace fp4q::pipeline {

// Writes the calibration windows of `c` for the model in model_dir to c.dump_path (JSON, see
// fp4q/calib/windows.h); c.windows_path, when set, is read and written back (validated).
// Error(kUsage) when c.dump_path is empty.
void dump_calibration(const std::string& model_dir, const CalibOptions& c);

// The ids `fp4q eval MODEL --text text_path` evaluates: the model tokenizer's BOS (when it adds
// one and with_bos) followed by encode(text) without special tokens. `fp4q eval --ids` of these
// ids cuts the same non-overlapping windows.
std::vector<int32_t> eval_token_ids(const std::string& model_dir, const std::string& text_path, bool with_bos);

// JSON array text "[id,id,...]\n" of ids.
std::string ids_json(const std::vector<int32_t>& ids);

}  // namespace fp4q::pipeline
