// fp4q/io/safetensors.h — read-only, memory-mapped safetensors files and HF model directories.
//
// On-disk layout of a .safetensors file (all integers little-endian):
//   bytes [0, 8)          u64 N = header length in bytes
//   bytes [8, 8+N)        UTF-8 JSON object (may be right-padded with spaces):
//                           {"__metadata__": {str: str, ...}   (optional)
//                            "<tensor name>": {"dtype": "F32", "shape": [d0, d1, ...],
//                                              "data_offsets": [begin, end]}, ...}
//   bytes [8+N, EOF)      data section; a tensor's bytes are [8+N+begin, 8+N+end), row-major
//                         (C order), little-endian elements. end - begin == numel * dtype_size.
//
// SafetensorsFile::open validates everything before returning (overflow-safe): file length,
// header length (<= 100 MB and inside the file), JSON syntax/UTF-8, object type, duplicate
// names, dtype tags, shapes (non-negative integers), data_offsets (2 unsigned ints, begin <=
// end, inside the data section), nbytes == numel * dtype size, no overlapping byte ranges
// (zero-size tensors never overlap), and "__metadata__" being string -> string. Gaps between
// tensors and trailing bytes are allowed (logged at debug). Failures throw fp4q::Error:
// kIo when the OS refuses (open/stat/mmap), kInput for malformed content; the message names the
// file and the tensor or field and says expected vs actual.
//
// ModelFiles opens a Hugging Face model: a directory with model.safetensors, or a sharded
// directory with model.safetensors.index.json ({"weight_map": {tensor: shard file}}), or a
// single *.safetensors path (or the index path itself). A directory holding both
// model.safetensors and the index opens model.safetensors (what transformers loads). The index
// and the shards must agree
// exactly: every listed tensor is in its shard, every tensor of a referenced shard is listed
// with that shard, and no tensor name appears twice.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "fp4q/io/dtype.h"

namespace fp4q::io {

// One tensor entry of a safetensors header.
struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // [] = scalar (numel 1); any 0 dimension = empty tensor
  uint64_t offset = 0;         // byte offset of the first element, relative to the data section
  uint64_t nbytes = 0;         // == numel() * dtype_size(dtype)
  int64_t numel() const;       // product of shape (1 for a scalar)
};

class SafetensorsFile {
 public:
  // Opens, maps and validates `path`. Throws Error(kIo) if it cannot be opened/mapped,
  // Error(kInput) if the content is malformed.
  static SafetensorsFile open(const std::string& path);
  // The same parser and validation over an in-memory copy of a file; `name` stands for the path
  // in errors. For tests and fuzzing (tests/fuzz).
  static SafetensorsFile from_bytes(std::string name, std::vector<uint8_t> bytes);

  SafetensorsFile(SafetensorsFile&& o) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& o) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  // All tensors sorted by data offset (ties: by end offset, then name).
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // nullptr when absent.
  const TensorInfo* find(const std::string& name) const;
  // The "__metadata__" object (string -> string), or an empty object.
  const nlohmann::json& metadata() const { return metadata_; }
  uint64_t file_size() const { return size_; }
  uint64_t header_size() const { return header_len_; }  // N (includes padding)

  // Raw little-endian bytes of a tensor of this file (info.nbytes bytes; not aligned in
  // general — use memcpy). `info` must come from tensors()/find() of this file. Throws
  // Error(kIo) when the file has shrunk below the tensor's end since open() (truncated or
  // replaced during the run), instead of letting the access raise SIGBUS.
  const uint8_t* data(const TensorInfo& info) const;
  // Copies a F32/F16/BF16 tensor to float32 (exact conversion), row-major, numel() values.
  // Throws Error(kInput) naming file and tensor for other dtypes or an unknown name. Reads a
  // file with pread(2): a file truncated or unreadable (EIO) since open() gives Error(kIo)
  // naming it.
  //
  // Test hook (fault-injection tests only): with the environment variable
  // FP4Q_TEST_STOP_AT_READ=N the process stops itself with SIGSTOP right before its N-th tensor
  // access (read_f32 or data(), counted over all files), so a test can change an input file
  // "mid-run" deterministically and then send SIGCONT. Unset, it costs one getenv per process.
  std::vector<float> read_f32(const std::string& name) const;
  std::vector<float> read_f32(const TensorInfo& info) const;
  // The same into `out` (resized to numel; a vector reused across calls keeps its capacity, so
  // no fresh pages are touched).
  void read_f32_into(const TensorInfo& info, std::vector<float>& out) const;

 private:
  SafetensorsFile() = default;
  void parse();  // validates map_[0, size_) and fills tensors_ / by_name_ / metadata_
  void check_unchanged(const TensorInfo& info) const;  // Error(kIo) if the file shrank
  void release() noexcept;
  std::string path_;
  const uint8_t* map_ = nullptr;  // whole file, PROT_READ (or owned_.data())
  uint64_t size_ = 0;
  int fd_ = -1;                   // open() keeps the file open for pread / fstat; -1 in memory
  std::vector<uint8_t> owned_;    // from_bytes: the bytes map_ points into
  uint64_t header_len_ = 0;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> by_name_;
  nlohmann::json metadata_ = nlohmann::json::object();
};

// Converts `numel` elements of F32/F16/BF16 raw little-endian bytes to float32 (OpenMP for
// large counts). `where` names the tensor in errors. Throws Error(kInput) for other dtypes.
void convert_to_f32(DType dtype, const uint8_t* bytes, int64_t numel, float* out,
                    const std::string& where);

class ModelFiles {
 public:
  // path: a model directory, a *.safetensors file, or a model.safetensors.index.json file.
  static ModelFiles open(const std::string& path);

  bool has(const std::string& name) const;
  // Throws Error(kInput) naming the tensor and the model when absent.
  const TensorInfo& info(const std::string& name) const;
  std::vector<std::string> names() const;  // all tensor names, sorted
  std::vector<float> read_f32(const std::string& name) const;
  void read_f32_into(const std::string& name, std::vector<float>& out) const;
  const uint8_t* data(const std::string& name) const;
  const SafetensorsFile& file_of(const std::string& name) const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  // The model directory (parent directory when opened from a file path).
  const std::string& dir() const { return dir_; }
  // Path of model.safetensors.index.json, or empty when the model is a single file.
  const std::string& index_path() const { return index_path_; }
  uint64_t total_bytes() const;  // sum of tensor nbytes over all files

 private:
  struct Loc {
    size_t file;
    size_t tensor;
  };
  const Loc& locate(const std::string& name) const;
  std::string dir_, index_path_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::unordered_map<std::string, Loc> loc_;
};

}  // namespace fp4q::io
