// fp4q/io/inspect.h — `fp4q inspect`: what a safetensors file or model directory contains.
//
// inspect(path) returns (keys stable; consumers may rely on them):
// {
//   "path": <as given>, "dir": <model dir>, "index": <index path or null>,
//   "files": [{"file": <basename>, "bytes": <file size>, "tensors": <count>,
//              "metadata": {...__metadata__...}}, ...],
//   "num_tensors": <int>, "total_tensor_bytes": <int>,
//   "dtypes": {"F32": {"tensors": n, "bytes": b}, ...},
//   "tensors": [{"name", "dtype", "shape": [...], "numel", "bytes", "file"}, ...] (sorted by name),
//   "config": {"model_type", "architectures", "torch_dtype"} subset or null (config.json absent),
//   "quantization_config": <config.json's quantization_config> or null
// }
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace fp4q::io {

nlohmann::json inspect(const std::string& path);
// Human-readable summary: file list, dtype totals, quantization_config, and an aligned table
// name | dtype | shape | bytes. Ends with a newline.
std::string inspect_text(const nlohmann::json& j);

}  // namespace fp4q::io
