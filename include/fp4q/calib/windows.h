// fp4q/calib/windows.h — calibration windows as a JSON file: `--dump-calib FILE` writes the exact
// token ids fp4q calibrates on, `--calib-windows FILE` reads such a file back (exact windows, no
// sampling), so fp4q and other tools (e.g. FP-Quant through tools/fpquant_calib_shim.py) can
// calibrate on identical data.
//
// File format (UTF-8 JSON object; one window per line for readability, any JSON whitespace is
// accepted on reading):
//   {"format": "fp4q-calib-windows", "version": 1,
//    "source": "<text or ids file the windows were cut from>", "tokenizer": "<model dir>",
//    "seed": 42, "seqlen": 512, "n": 128, "bos": 1,
//    "offsets": [o_0, ..., o_{n-1}],          start of each window's body in the token stream
//    "samples": [[id, ...], ...]}             n windows of exactly seqlen ids each (BOS included)
// seed/bos/offsets/source/tokenizer are provenance; a reader needs only "samples". Reading also
// accepts a bare JSON array of arrays ([[ids...], ...]). Every window must have the same length
// (>= 2) and every id must be an integer in [0, 2^31) (and < vocab when the reader is given one).
#pragma once

#include <cstdint>
#include <string>

#include "fp4q/calib/dataset.h"

namespace fp4q::calib {

struct WindowsMeta {
  std::string source;     // text / ids file the stream came from ("" = unknown)
  std::string tokenizer;  // model directory whose tokenizer produced the ids ("" = unknown)
  uint64_t seed = 0;
  int32_t bos = -1;       // BOS id prepended to each window, -1 = none
};

// The JSON text of `set` (see the format above), ending with a newline.
std::string windows_json(const CalibSet& set, const WindowsMeta& meta);

// Writes windows_json to `path` atomically (temporary file + rename). Error(kIo) on failure.
void write_windows(const std::string& path, const CalibSet& set, const WindowsMeta& meta);

// Reads a windows file. vocab > 0: ids must be < vocab. Error(kIo) when unreadable, Error(kInput)
// naming the file and the offending window/position otherwise. offsets are taken from the file
// when present (and of the right length), else filled with -1. *meta (optional) receives the
// provenance fields found.
CalibSet read_windows(const std::string& path, int64_t vocab = 0, WindowsMeta* meta = nullptr);

}  // namespace fp4q::calib
