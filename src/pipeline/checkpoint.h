// Resumable quantization (internal to the pipeline): the checkpoint a calibrated `fp4q quantize`
// keeps inside its temporary output directory OUT.tmp-XXXXXX, so that `--resume` continues an
// interrupted run and produces output byte-identical to an uninterrupted one.
//
// What makes byte identity possible without recomputation: after decoder layer l (l+1 < L) the
// run persists exactly the state the remaining work depends on —
//   * the calibration activations X (input of layer l+1 for every sample), the float32 bytes
//     held in memory, [n·T x hidden] row-major;
//   * every quantized Linear of layers 0..l as the exporter received it (codes, scale codes and
//     values, global scales, W4A4 input scale, rotation) with its report record, in the order the
//     exporter received them.
// A resumed run re-feeds the exporter with layers 0..l in the same order (add_quantized, the kept
// records, the passthrough tensors of the layer: deterministic functions of the plan and the
// source model), so every shard, the index and config.json come out with the same bytes; it
// loads X and continues at layer l+1. Nothing else crosses a layer boundary (Hessians, scratch
// and hooks are per layer). The last layer is not checkpointed (X is not needed after it; a run
// killed while exporting redoes that one layer).
//
// On-disk layout (docs/FORMAT.md §15), directory OUT.tmp-XXXXXX/.fp4q-resume/:
//   manifest.json        {"format": "fp4q-checkpoint", "version": 1, "settings": {...},
//                        "inputs": {...}, "num_layers": L, "next_layer": k, "layers": [{"file",
//                        "bytes", "linears"} x k], "activations": {"file", "bytes", "samples",
//                        "seqlen", "hidden"}}; the commit point of a checkpoint.
//   layer-NNNNN.bin      the quantized Linears of layer NNNNN (format below)
//   acts-NNNNN.f32       X at the input of layer NNNNN (raw little-endian float32)
//   lock                 flock(2)-ed by the run that owns the directory
// Crash consistency: every file is written to a temporary name, fsync'ed and renamed; the
// manifest is written last (write, fsync, rename, fsync of the directory) and only names files
// that were durable before it; the previous acts file is removed only after the new manifest.
//
// layer-NNNNN.bin: "FP4QLYR1", then per Linear its blobs back to back — codes packed two per
// byte (format::pack_nibbles order; unpacked one per byte when cols is odd), scale codes u16 LE
// [rows·groups], scale values f32 LE [rows·groups] — then a JSON footer {"layer": l, "linears":
// [{"name", "format", "rows", "cols", "groups", "hadamard", "input_global_scale_bits",
// "global_scale_bits", "fit_beta", "fit_steps", "packed", "offset", "record": {...}}]}, then the
// footer's byte length u64 LE and "FP4QEND1". Floats are stored as their bit patterns (exact).
//
// Fingerprints (compared key by key; the first difference is named in the refusal):
//   settings  every option that changes output bytes under its flag name (--format, --method,
//             --scales, --hadamard (resolved), --act-order, --damp, --activations, --ignore,
//             --export, --dtype, --max-shard-size, --moe-calib, --moe-min-tokens, --samples,
//             --seqlen, --seed, --calib / --calib-ids / --calib-windows by content hash,
//             --hessians like a safetensors input below, --compute), the fp4q version and the
//             checkpoint version. Not the thread count (results
//             do not depend on it), --report, --force or log options.
//   inputs    every regular file of the model directory: *.safetensors by size, modification
//             time (ns) and a hash of the safetensors header (hashing the weights would read the
//             whole model again; any rewrite in place changes size or mtime, a replaced file with
//             a preserved mtime almost always changes its header's offsets/metadata); every
//             other file up to 128 MiB (config.json, tokenizer, ...) by content hash.
// Hash: FNV-1a 64 (change detection, not security).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fp4q/exporter/quantized.h"
#include "fp4q/pipeline/quantize.h"
#include "fp4q/pipeline/report.h"

namespace fp4q::pipeline::detail {

constexpr const char* kCheckpointDir = ".fp4q-resume";

// Fingerprints (see above). calibrated: whether the run calibrates (calibration options count).
nlohmann::json settings_fingerprint(const QuantizeOptions& opt, bool calibrated);
nlohmann::json input_fingerprint(const std::string& model_dir);
// "" when equal; else what differs, e.g. "--format: the checkpoint has mxfp4, this run nvfp4".
std::string fingerprint_difference(const nlohmann::json& checkpoint, const nlohmann::json& now,
                                   const char* what);

// A checkpoint found next to OUT.
struct FoundCheckpoint {
  std::string tmp_dir;      // OUT.tmp-XXXXXX
  int next_layer = 0, num_layers = 0;
  uint64_t bytes = 0;       // files of the checkpoint on disk
  std::string mismatch;     // "" = compatible with this run; else the first difference
  bool busy = false;        // another process holds its lock
};
// Every "<OUT>.tmp-*" directory next to out_dir with a manifest (unreadable or foreign manifests
// are listed with a mismatch saying so). Directories of runs killed before their first
// checkpoint (a .fp4q-resume/lock nobody holds, no manifest) are removed on the way.
std::vector<FoundCheckpoint> find_checkpoints(const std::string& out_dir, const nlohmann::json& settings,
                                              const nlohmann::json& inputs);

// The checkpoint of one run, inside its temporary output directory.
class Checkpoint {
 public:
  // tmp_dir: the AtomicDir's temporary directory. Creates <tmp_dir>/.fp4q-resume and takes its
  // lock (Error(kUsage) naming the directory when another process holds it).
  Checkpoint(std::string tmp_dir, nlohmann::json settings, nlohmann::json inputs, int num_layers);
  ~Checkpoint();
  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;

  // Resuming: reads and re-checks the manifest, verifies that every file it names exists with
  // its recorded size, removes everything else in tmp_dir (partial shards, config.json, stale
  // checkpoint files). Returns the next layer (>= 1). Error(kInput) naming the file when the
  // checkpoint is damaged.
  int resume();

  // Streaming the layer being quantized: begin_layer, add per quantized Linear (in exporter
  // order), commit_layer after the layer's forward (x = X at the input of layer l+1, count
  // floats; samples/seqlen/hidden recorded for the check on resume).
  void begin_layer(int l);
  void add(const exporter::QuantizedLinear& ql, const TensorRecord& rec);
  void commit_layer(int l, const float* x, uint64_t count, int64_t samples, int64_t seqlen,
                    int64_t hidden);

  // Replays layer l (< next layer): f(ql, record) in the order they were added.
  void replay_layer(int l, const std::function<void(exporter::QuantizedLinear&&, TensorRecord&&)>& f) const;
  // X at the input of the next layer into x (count floats; Error(kInput) on a size mismatch).
  void load_activations(float* x, uint64_t count, int64_t samples, int64_t seqlen, int64_t hidden) const;

  bool valid() const { return next_layer_ > 0; }  // a committed manifest exists
  int next_layer() const { return next_layer_; }
  uint64_t bytes_on_disk() const;
  const std::string& dir() const { return dir_; }
  // Removes the checkpoint directory (before the output is committed).
  void remove();
  // Removes the unfinished files of the layer in progress (a failed run keeping its checkpoint
  // leaves only what the manifest names).
  void drop_partial();

 private:
  void write_manifest();
  std::string tmp_dir_, dir_;
  nlohmann::json settings_, inputs_;
  int num_layers_ = 0, next_layer_ = 0;
  nlohmann::json layers_ = nlohmann::json::array(), acts_;
  int lock_fd_ = -1;
  // layer being streamed
  int cur_layer_ = -1, cur_fd_ = -1;
  std::string cur_tmp_;
  uint64_t cur_off_ = 0;
  nlohmann::json cur_items_;
};

// This process's command line (/proc/self/cmdline, shell-quoted) with --resume appended when
// absent: what to run to continue; a generic sentence where the command line is unavailable.
std::string resume_command();

// Test hook: FP4Q_TEST_KILL_AT="<point>[:<layer>]" makes the process raise SIGKILL when it
// reaches that point (points: hessian (after layer l's Hessian pass), solve (after the first
// solved group of layer l), checkpoint (layer l's files written, manifest not yet), export
// (every layer done, before the exporter finishes), commit (output finished, before the rename)).
void test_kill_point(const char* point, int layer = -1);

}  // namespace fp4q::pipeline::detail
