// fp4q/io/writer.h — writing safetensors shards, atomic output directories and files.
//
// ShardedWriter writes a Hugging Face checkpoint into an (existing) directory:
//   * one shard  -> "model.safetensors" and no index;
//   * N > 1      -> "model-00001-of-0000N.safetensors" ... (5-digit, 1-based, HF naming) plus
//                   "model.safetensors.index.json" =
//                   {"metadata": {"total_size": <sum of tensor bytes>}, "weight_map": {name: file}}
//                   (weight_map keys sorted, 2-space indented, trailing newline).
//   A stale file of the other layout already in dir (model.safetensors.index.json when one shard
//   is written, model.safetensors when several are) is removed so loaders see only the new one.
// Each shard is a standard safetensors file (see safetensors.h for the layout): header JSON
// written compactly as {"__metadata__":{...},"<name>":{"dtype":..,"shape":[..],
// "data_offsets":[b,e]},...} with tensors in add() order, right-padded with spaces so that
// 8 + N is a multiple of 8 (the data section starts 8-byte aligned, as the safetensors library
// does); tensor bytes packed back to back in add() order, offsets relative to the data section.
// A shard is closed when adding the next tensor would push its data past max_shard_bytes (a
// tensor larger than the limit gets a shard of its own). Memory: tensor bytes are streamed to a
// temporary data file as they are added (never more than one tensor held); on shard close the
// header is written and the data appended with copy_file_range. Temporary files are named
// ".fp4q-shard-*.part" in the directory and removed by finish() / the destructor. Every write is
// checked (disk full -> Error(kIo) naming the path); shards are fsync'ed.
//
// AtomicDir: all output goes to "<final>.tmp-XXXXXX" (same parent directory); commit() fsyncs
// the files and renames it to <final>. If <final> exists: without overwrite, a non-empty
// directory or any non-directory is refused in the constructor (Error(kUsage), before any work);
// with overwrite it is replaced only inside commit() (rename aside to "<final>.old-XXXXXX",
// rename temp into place, then remove the old one). Without commit() the destructor removes the
// temp directory, so a half-written output never appears at <final> — unless keep() was called
// (a resumable quantization keeps a temp directory that holds a checkpoint, see
// pipeline/quantize.h). `adopt_tmp` (non-empty): use that existing "<final>.tmp-*" directory
// instead of creating a new one (resuming); it must be a directory in the same parent.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "fp4q/io/dtype.h"

namespace fp4q::io {

// A tensor to write: row-major little-endian bytes, bytes.size() == numel(shape) * dtype_size.
struct OutTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

// Builds an OutTensor from float32 values (numel(shape) of them), converting to dtype
// F32, F16 or BF16 (round to nearest even, core/half.h). Throws Error(kInput) otherwise.
OutTensor make_tensor_from_f32(std::string name, std::vector<int64_t> shape, const float* values,
                               DType dtype);
// Builds an OutTensor copying raw bytes (nbytes must equal numel(shape) * dtype_size(dtype)).
OutTensor make_tensor_raw(std::string name, DType dtype, std::vector<int64_t> shape,
                          const void* bytes, uint64_t nbytes);

// numel of a shape with overflow checking (Error(kInput) naming `where` on negative dims or
// overflow of int64 / of the byte count).
int64_t checked_numel(const std::vector<int64_t>& shape, const std::string& where);

class ShardedWriter {
 public:
  // dir: existing directory to write into. max_shard_bytes: shard data-size limit (0 = one
  // shard). metadata: the "__metadata__" object written into every shard, string -> string
  // (e.g. {"format": "pt"}); null or {} writes none.
  ShardedWriter(std::string dir, uint64_t max_shard_bytes, nlohmann::json metadata);
  ShardedWriter(const ShardedWriter&) = delete;
  ShardedWriter& operator=(const ShardedWriter&) = delete;
  ~ShardedWriter();  // without finish(): removes its temporary files

  // Validates (name non-empty and valid UTF-8, unique; dims >= 0; bytes == numel * size) and
  // streams the bytes to disk. Throws Error(kInput) / Error(kIo).
  void add(OutTensor t);
  // Same without an owning buffer (e.g. an unchanged tensor straight from a mapped input file).
  void add_raw(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
               const void* bytes, uint64_t nbytes);

  // Closes the last shard, names the shards, writes the index when > 1 shard. Returns the
  // written file names (relative to dir): the shards in order, then
  // "model.safetensors.index.json" if one was written. An empty writer writes one
  // model.safetensors with no tensors. Must be called exactly once.
  std::vector<std::string> finish();

  uint64_t total_bytes() const { return total_bytes_; }  // tensor bytes added so far
  size_t num_tensors() const { return num_tensors_; }

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    uint64_t begin, end;
  };
  void close_shard();
  void cleanup() noexcept;
  std::string dir_;
  uint64_t max_shard_bytes_;
  std::string metadata_json_;  // compact JSON of __metadata__, empty when none
  // current shard
  std::vector<Entry> cur_;
  uint64_t cur_bytes_ = 0;
  int data_fd_ = -1;
  std::string data_path_;
  // finished shards (temporary names) and their tensor names
  std::vector<std::string> shard_tmp_paths_;
  std::vector<std::vector<std::string>> shard_names_;
  std::unordered_set<std::string> all_names_;  // for duplicate detection
  uint64_t total_bytes_ = 0;
  size_t num_tensors_ = 0;
  bool finished_ = false;
  std::string tmp_tag_;  // unique per writer
};

class AtomicDir {
 public:
  AtomicDir(std::string final_path, bool overwrite, std::string adopt_tmp = {});
  AtomicDir(const AtomicDir&) = delete;
  AtomicDir& operator=(const AtomicDir&) = delete;
  ~AtomicDir();  // removes the temp dir unless committed; never throws

  const std::string& path() const { return tmp_; }  // the temp directory to write into
  const std::string& final_path() const { return final_; }
  void commit();  // Error(kIo) on failure (the temp dir is then still removed by the destructor)
  bool committed() const { return committed_; }
  void keep() { kept_ = true; }  // the destructor leaves the temp directory in place

 private:
  std::string final_, tmp_;
  bool overwrite_;
  bool committed_ = false;
  bool kept_ = false;
};

// Writes `content` to `path` atomically: temp file in the same directory, write, fsync,
// rename over path, fsync the directory. Error(kIo) naming the path.
void write_file_atomic(const std::string& path, const std::string& content);

// Copies a regular file (e.g. tokenizer files into an output dir); Error(kIo) naming both.
void copy_file(const std::string& src, const std::string& dst);

}  // namespace fp4q::io
