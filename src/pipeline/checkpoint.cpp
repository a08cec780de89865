// Resumable quantization: the checkpoint inside OUT.tmp-XXXXXX (checkpoint.h has the layout).
#include "checkpoint.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <spdlog/spdlog.h>

#include "fp4q/core/error.h"
#include "fp4q/core/half.h"
#include "fp4q/exporter/exporter.h"
#include "fp4q/exporter/layout.h"
#include "fp4q/format/format.h"
#include "internal.h"

namespace fp4q::pipeline::detail {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr int kVersion = 1;
constexpr const char* kManifest = "manifest.json";
constexpr uint64_t kMaxHashedFileBytes = 128ull << 20;
constexpr char kLayerMagic[9] = "FP4QLYR1";
constexpr char kLayerEnd[9] = "FP4QEND1";

std::string errno_str(int e) { return std::strerror(e); }

// ---- hashing ----
struct Fnv {
  uint64_t h = 1469598103934665603ull;
  void add(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  }
  std::string hex() const {
    char buf[24];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    return buf;
  }
};

// "fnv1a64 <hex>, <n> bytes" of a file's content; Error(kIo) naming it when unreadable.
std::string file_content_id(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(ErrorKind::kIo, "cannot open file", path);
  Fnv h;
  uint64_t n = 0;
  std::vector<char> buf(1 << 20);
  while (f) {
    f.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto got = static_cast<size_t>(f.gcount());
    h.add(buf.data(), got);
    n += got;
  }
  return "fnv1a64 " + h.hex() + ", " + std::to_string(n) + " bytes";
}

// "<n> bytes, mtime <ns>, header fnv1a64 <hex>" of a safetensors file.
std::string safetensors_id(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw Error(ErrorKind::kIo, "cannot stat: " + errno_str(errno), path);
  const int64_t mtime = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  Fnv h;
  std::ifstream f(path, std::ios::binary);
  uint8_t len8[8] = {};
  if (f.read(reinterpret_cast<char*>(len8), 8)) {
    uint64_t len = 0;
    for (int i = 0; i < 8; ++i) len |= static_cast<uint64_t>(len8[i]) << (8 * i);
    len = std::min<uint64_t>(len, std::min<uint64_t>(static_cast<uint64_t>(st.st_size), 100u << 20));
    std::vector<char> hdr(len);
    f.read(hdr.data(), static_cast<std::streamsize>(len));
    h.add(len8, 8);
    h.add(hdr.data(), static_cast<size_t>(f.gcount()));
  }
  return std::to_string(st.st_size) + " bytes, mtime " + std::to_string(mtime) + ", header fnv1a64 " + h.hex();
}

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

std::string dbl(double v) {
  char b[40];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}

uint64_t dbits(double d) {
  uint64_t u;
  std::memcpy(&u, &d, 8);
  return u;
}
double bitsd(uint64_t u) {
  double d;
  std::memcpy(&d, &u, 8);
  return d;
}

// ---- TensorRecord <-> JSON (doubles as bit patterns: exact) ----
json record_json(const TensorRecord& r) {
  return {{"name", r.name}, {"out", r.out}, {"in", r.in}, {"dtype", r.dtype}, {"format", r.format},
          {"method", r.method}, {"skip_reason", r.skip_reason}, {"hadamard", r.hadamard},
          {"rel_weight_err", dbits(r.rel_weight_err)}, {"hessian_err", dbits(r.hessian_err)},
          {"rtn_rel_weight_err", dbits(r.rtn_rel_weight_err)}, {"rtn_hessian_err", dbits(r.rtn_hessian_err)},
          {"damp", dbits(r.damp)}, {"damp_tries", r.damp_tries}, {"samples", r.samples},
          {"tokens", r.tokens}, {"note", r.note}, {"bytes_before", r.bytes_before},
          {"bytes_after", r.bytes_after}, {"seconds", dbits(r.seconds)}};
}

TensorRecord record_from(const json& j) {
  TensorRecord r;
  r.name = j.at("name").get<std::string>();
  r.out = j.at("out").get<int64_t>();
  r.in = j.at("in").get<int64_t>();
  r.dtype = j.at("dtype").get<std::string>();
  r.format = j.at("format").get<std::string>();
  r.method = j.at("method").get<std::string>();
  r.skip_reason = j.at("skip_reason").get<std::string>();
  r.hadamard = j.at("hadamard").get<int>();
  r.rel_weight_err = bitsd(j.at("rel_weight_err").get<uint64_t>());
  r.hessian_err = bitsd(j.at("hessian_err").get<uint64_t>());
  r.rtn_rel_weight_err = bitsd(j.at("rtn_rel_weight_err").get<uint64_t>());
  r.rtn_hessian_err = bitsd(j.at("rtn_hessian_err").get<uint64_t>());
  r.damp = bitsd(j.at("damp").get<uint64_t>());
  r.damp_tries = j.at("damp_tries").get<int>();
  r.samples = j.at("samples").get<int64_t>();
  r.tokens = j.at("tokens").get<int64_t>();
  r.note = j.at("note").get<std::string>();
  r.bytes_before = j.at("bytes_before").get<int64_t>();
  r.bytes_after = j.at("bytes_after").get<int64_t>();
  r.seconds = bitsd(j.at("seconds").get<uint64_t>());
  return r;
}

// ---- durable files ----
void write_all(int fd, const void* buf, uint64_t n, const std::string& path) {
  const auto* p = static_cast<const uint8_t*>(buf);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, static_cast<size_t>(std::min<uint64_t>(n, 1u << 30)));
    if (w < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      throw Error(ErrorKind::kIo, "write failed: " + errno_str(e) + (e == ENOSPC ? " (disk full)" : ""), path,
                  e == ENOSPC ? "free disk space or choose another output location" : "");
    }
    if (w == 0) throw Error(ErrorKind::kIo, "write returned 0 bytes", path);
    p += w;
    n -= static_cast<uint64_t>(w);
  }
}

int open_new(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(ErrorKind::kIo, "cannot create file: " + errno_str(errno), path);
  return fd;
}

// fsync + close fd (of tmp), rename tmp -> path. Error(kIo) naming the file.
void finish_file(int fd, const std::string& tmp, const std::string& path) {
  if (::fsync(fd) != 0 && errno != EINVAL && errno != EROFS) {
    const int e = errno;
    ::close(fd);
    throw Error(ErrorKind::kIo, "fsync failed: " + errno_str(e), tmp);
  }
  if (::close(fd) != 0 && errno != EINTR) throw Error(ErrorKind::kIo, "close failed: " + errno_str(errno), tmp);
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    throw Error(ErrorKind::kIo, "cannot rename " + tmp + ": " + errno_str(errno), path);
}

void fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw Error(ErrorKind::kIo, "cannot open directory for fsync: " + errno_str(errno), dir);
  const int rc = ::fsync(fd);
  const int e = errno;
  ::close(fd);
  if (rc != 0 && e != EINVAL && e != EROFS) throw Error(ErrorKind::kIo, "fsync of directory failed: " + errno_str(e), dir);
}

void write_durable(const std::string& path, const void* data, uint64_t n) {
  const std::string tmp = path + ".part";
  const int fd = open_new(tmp);
  try {
    write_all(fd, data, n, tmp);
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  finish_file(fd, tmp, path);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(ErrorKind::kInput, "checkpoint file missing or unreadable", path,
                      "rerun without --resume to start over");
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  return s;
}

json read_manifest(const std::string& path) {
  const std::string s = read_file(path);
  json m;
  try {
    m = json::parse(s);
  } catch (const std::exception& e) {
    throw Error(ErrorKind::kInput, std::string("checkpoint manifest is not valid JSON: ") + e.what(), path);
  }
  if (!m.is_object() || m.value("format", std::string()) != "fp4q-checkpoint")
    throw Error(ErrorKind::kInput, "not an fp4q checkpoint manifest", path);
  if (m.value("version", 0) != kVersion)
    throw Error(ErrorKind::kInput,
                "checkpoint version " + std::to_string(m.value("version", 0)) + ", this fp4q writes " +
                    std::to_string(kVersion),
                path, "rerun without --resume to start over");
  return m;
}

std::string layer_file(int l) {
  char b[32];
  std::snprintf(b, sizeof b, "layer-%05d.bin", l);
  return b;
}
std::string acts_file(int l) {
  char b[32];
  std::snprintf(b, sizeof b, "acts-%05d.f32", l);
  return b;
}

uint64_t dir_bytes(const std::string& dir) {
  uint64_t n = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.is_regular_file(ec)) n += e.file_size(ec);
  return n;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// fingerprints

json settings_fingerprint(const QuantizeOptions& opt, bool calibrated) {
  const QuantSettings& s = opt.settings;
  json j = json::object();
  j["checkpoint version"] = std::to_string(kVersion);
  j["fp4q version"] = exporter::ExportOptions{}.fp4q_version;
  j["--format"] = format::spec(s.format).name;
  j["--method"] = method_name(s.method);
  j["--scales"] = format::scale_method_name(s.scales);
  j["--hadamard"] = std::to_string(s.hadamard);
  j["--act-order"] = s.act_order ? "static" : "none";
  j["--damp"] = dbl(s.damp);
  j["--activations"] = s.activations == exporter::Activations::kFp4 ? "fp4" : "none";
  std::string ig;
  for (const auto& r : s.ignore) ig += (ig.empty() ? "" : " ") + r;
  j["--ignore"] = ig;
  j["--export"] = exporter::export_kind_name(opt.export_kind);
  j["--dtype"] = opt.export_dtype;
  j["--max-shard-size"] = std::to_string(opt.max_shard_bytes);
  j["--moe-calib"] = opt.moe.all_tokens ? "all-tokens" : "routed";
  j["--moe-min-tokens"] = std::to_string(opt.moe.min_tokens);
  j["--compute"] = opt.calib_compute == ComputeDtype::kBF16 ? "bf16" : "f32";
  j["--hessians"] = opt.hessians_path.empty() ? "" : safetensors_id(opt.hessians_path);  // GBs: not hashed
  if (calibrated) {
    const CalibOptions& c = opt.calib;
    if (!c.windows_path.empty()) {
      j["--calib-windows"] = file_content_id(c.windows_path);
    } else {
      j["--samples"] = std::to_string(c.samples);
      j["--seqlen"] = std::to_string(c.seqlen);
      j["--seed"] = std::to_string(c.seed);
      if (!c.ids_path.empty()) j["--calib-ids"] = file_content_id(c.ids_path);
      else j["--calib"] = c.text_path.empty() ? "" : file_content_id(c.text_path);
    }
  }
  return j;
}

json input_fingerprint(const std::string& model_dir) {
  json j = json::object();
  std::error_code ec;
  std::vector<fs::path> entries;
  for (const auto& e : fs::directory_iterator(model_dir, ec)) entries.push_back(e.path());
  if (ec) throw Error(ErrorKind::kIo, "cannot list the model directory: " + ec.message(), model_dir);
  std::sort(entries.begin(), entries.end());
  for (const auto& p : entries) {
    const std::string fn = p.filename().string();
    if (fn.empty() || fn[0] == '.' || !fs::is_regular_file(p, ec)) continue;
    if (ends_with(fn, ".safetensors")) {
      j[fn] = safetensors_id(p.string());
    } else {
      const auto size = fs::file_size(p, ec);
      if (ec) continue;
      if (size > kMaxHashedFileBytes) {
        struct stat st {};
        ::stat(p.c_str(), &st);
        j[fn] = std::to_string(size) + " bytes, mtime " +
                std::to_string(static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec);
      } else {
        j[fn] = file_content_id(p.string());
      }
    }
  }
  return j;
}

std::string fingerprint_difference(const json& checkpoint, const json& now, const char* what) {
  auto str = [](const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); };
  for (auto it = now.begin(); it != now.end(); ++it) {
    if (!checkpoint.contains(it.key()))
      return std::string(what) + " " + it.key() + ": not in the checkpoint, this run has " +
             (str(it.value()).empty() ? "(empty)" : str(it.value()));
    const json& c = checkpoint.at(it.key());
    if (c != it.value())
      return std::string(what) + " " + it.key() + ": the checkpoint has " +
             (str(c).empty() ? "(none)" : str(c)) + ", this run " +
             (str(it.value()).empty() ? "(none)" : str(it.value()));
  }
  for (auto it = checkpoint.begin(); it != checkpoint.end(); ++it)
    if (!now.contains(it.key()))
      return std::string(what) + " " + it.key() + ": in the checkpoint (" + str(it.value()) +
             "), missing from this run";
  return {};
}

std::vector<FoundCheckpoint> find_checkpoints(const std::string& out_dir, const json& settings,
                                              const json& inputs) {
  std::string final_path = out_dir;
  while (final_path.size() > 1 && final_path.back() == '/') final_path.pop_back();
  const fs::path fp(final_path);
  const std::string parent = fp.parent_path().empty() ? "." : fp.parent_path().string();
  const std::string prefix = fp.filename().string() + ".tmp-";
  std::vector<FoundCheckpoint> out;
  std::error_code ec;
  std::vector<fs::path> dirs;
  for (const auto& e : fs::directory_iterator(parent, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind(prefix, 0) == 0 && e.is_directory(ec) && !e.is_symlink(ec)) dirs.push_back(e.path());
  }
  std::sort(dirs.begin(), dirs.end());
  for (const auto& d : dirs) {
    const std::string ck = (d / kCheckpointDir).string();
    const std::string mp = ck + "/" + kManifest;
    if (!fs::exists(mp, ec)) {
      // A run killed before its first checkpoint: nothing to resume. Removed unless its owner
      // still runs (holds the lock); directories without a checkpoint directory are not ours
      // to judge (a data-free run may be writing there).
      if (!fs::exists(ck + "/lock", ec)) continue;
      const int fd = ::open((ck + "/lock").c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) continue;
      const bool free = ::flock(fd, LOCK_EX | LOCK_NB) == 0;
      if (free) {
        fs::remove_all(d, ec);
        spdlog::info("removed {}: an interrupted run that left no checkpoint", d.string());
      }
      ::close(fd);
      continue;
    }
    FoundCheckpoint f;
    f.tmp_dir = fp.parent_path().empty() ? d.filename().string() : (fp.parent_path() / d.filename()).string();
    f.bytes = dir_bytes(ck);
    try {
      const json m = read_manifest(mp);
      f.next_layer = m.at("next_layer").get<int>();
      f.num_layers = m.at("num_layers").get<int>();
      f.mismatch = fingerprint_difference(m.at("settings"), settings, "setting");
      if (f.mismatch.empty()) f.mismatch = fingerprint_difference(m.at("inputs"), inputs, "input file");
    } catch (const Error& e) {
      f.mismatch = e.what();
    } catch (const std::exception& e) {
      f.mismatch = mp + ": unreadable manifest: " + e.what();
    }
    const int fd = ::open((ck + "/lock").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      if (::flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK) f.busy = true;
      ::close(fd);
    }
    out.push_back(std::move(f));
  }
  return out;
}

// ------------------------------------------------------------------------------------------------
// Checkpoint

Checkpoint::Checkpoint(std::string tmp_dir, json settings, json inputs, int num_layers)
    : tmp_dir_(std::move(tmp_dir)), settings_(std::move(settings)), inputs_(std::move(inputs)),
      num_layers_(num_layers) {
  dir_ = tmp_dir_ + "/" + kCheckpointDir;
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) throw Error(ErrorKind::kIo, "cannot create the checkpoint directory: " + ec.message(), dir_);
  const std::string lp = dir_ + "/lock";
  lock_fd_ = ::open(lp.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) throw Error(ErrorKind::kIo, "cannot create the lock file: " + errno_str(errno), lp);
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0)
    throw Error(ErrorKind::kUsage, "another fp4q process is using this temporary directory", tmp_dir_,
                "wait for it to finish or stop it");
}

Checkpoint::~Checkpoint() {
  if (cur_fd_ >= 0) {
    ::close(cur_fd_);
    ::unlink(cur_tmp_.c_str());
  }
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

uint64_t Checkpoint::bytes_on_disk() const { return dir_bytes(dir_); }

int Checkpoint::resume() {
  const std::string mp = dir_ + "/" + kManifest;
  const json m = read_manifest(mp);
  std::string diff = fingerprint_difference(m.at("settings"), settings_, "setting");
  if (diff.empty()) diff = fingerprint_difference(m.at("inputs"), inputs_, "input file");
  if (!diff.empty()) throw Error(ErrorKind::kUsage, "checkpoint does not match this run: " + diff, tmp_dir_);
  try {
    if (m.at("num_layers").get<int>() != num_layers_)
      throw Error(ErrorKind::kInput, "checkpoint is for " + std::to_string(m.at("num_layers").get<int>()) +
                                         " layers, the model has " + std::to_string(num_layers_), mp);
    next_layer_ = m.at("next_layer").get<int>();
    layers_ = m.at("layers");
    acts_ = m.at("activations");
    if (next_layer_ < 1 || next_layer_ > num_layers_ || static_cast<int>(layers_.size()) != next_layer_)
      throw Error(ErrorKind::kInput, "inconsistent next_layer / layers in the checkpoint manifest", mp);
  } catch (const json::exception& e) {
    throw Error(ErrorKind::kInput, std::string("checkpoint manifest: ") + e.what(), mp);
  }
  // Every named file must be there with its size.
  std::vector<std::string> keep = {kManifest, "lock"};
  auto check = [&](const std::string& file, uint64_t bytes) {
    const std::string p = dir_ + "/" + file;
    std::error_code ec;
    const auto n = fs::file_size(p, ec);
    if (ec || n != bytes)
      throw Error(ErrorKind::kInput,
                  "checkpoint file " + (ec ? std::string("missing") : "has " + std::to_string(n) + " bytes, the manifest says " +
                                                                        std::to_string(bytes)),
                  p, "rerun without --resume to start over");
    keep.push_back(file);
  };
  for (const auto& l : layers_) check(l.at("file").get<std::string>(), l.at("bytes").get<uint64_t>());
  if (!acts_.is_null()) check(acts_.at("file").get<std::string>(), acts_.at("bytes").get<uint64_t>());
  // Remove everything else: the unfinished export in tmp_dir and stale checkpoint files.
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(tmp_dir_, ec)) {
    if (e.path().filename() == kCheckpointDir) continue;
    fs::remove_all(e.path(), ec);
    if (ec) throw Error(ErrorKind::kIo, "cannot remove a partial output file: " + ec.message(), e.path().string());
  }
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    const std::string n = e.path().filename().string();
    if (std::find(keep.begin(), keep.end(), n) == keep.end()) fs::remove_all(e.path(), ec);
  }
  spdlog::info("resuming from {}: layers 1-{} of {} restored from the checkpoint ({} MiB)", tmp_dir_,
               next_layer_, num_layers_, bytes_on_disk() >> 20);
  return next_layer_;
}

void Checkpoint::begin_layer(int l) {
  if (cur_fd_ >= 0) {
    ::close(cur_fd_);
    ::unlink(cur_tmp_.c_str());
  }
  cur_layer_ = l;
  cur_tmp_ = dir_ + "/" + layer_file(l) + ".part";
  cur_fd_ = open_new(cur_tmp_);
  write_all(cur_fd_, kLayerMagic, 8, cur_tmp_);
  cur_off_ = 8;
  cur_items_ = json::array();
}

void Checkpoint::add(const exporter::QuantizedLinear& ql, const TensorRecord& rec) {
  if (cur_fd_ < 0) throw Error(ErrorKind::kInternal, "Checkpoint::add outside a layer", ql.name);
  const auto& q = ql.q;
  const bool packed = q.cols % 2 == 0;
  json it = {{"name", ql.name}, {"format", static_cast<int>(q.format)}, {"rows", q.rows}, {"cols", q.cols},
             {"groups", q.scales.groups}, {"hadamard", ql.hadamard},
             {"input_global_scale_bits", float_to_bits(ql.input_global_scale)},
             {"global_scale_bits", float_to_bits(q.scales.global_scale)}, {"fit_beta", q.scales.fit_beta},
             {"fit_steps", q.scales.fit_steps}, {"packed", packed}, {"offset", cur_off_},
             {"record", record_json(rec)}};
  const size_t ns = q.scales.codes.size();
  if (q.codes.size() != static_cast<size_t>(q.rows * q.cols) || q.scales.values.size() != ns ||
      ns != static_cast<size_t>(q.scales.rows * q.scales.groups))
    throw Error(ErrorKind::kInternal, "inconsistent quantized matrix sizes", ql.name);
  if (packed) {
    const auto p = format::pack_nibbles(q.codes.data(), q.rows, q.cols);
    write_all(cur_fd_, p.data(), p.size(), cur_tmp_);
    cur_off_ += p.size();
  } else {
    write_all(cur_fd_, q.codes.data(), q.codes.size(), cur_tmp_);
    cur_off_ += q.codes.size();
  }
  write_all(cur_fd_, q.scales.codes.data(), ns * 2, cur_tmp_);
  write_all(cur_fd_, q.scales.values.data(), ns * 4, cur_tmp_);
  cur_off_ += ns * 6;
  cur_items_.push_back(std::move(it));
}

void Checkpoint::commit_layer(int l, const float* x, uint64_t count, int64_t samples, int64_t seqlen,
                              int64_t hidden) {
  if (cur_fd_ < 0 || cur_layer_ != l) throw Error(ErrorKind::kInternal, "Checkpoint::commit_layer without begin_layer");
  const auto t0 = Clock::now();
  // 1) the layer file
  const std::string footer = json{{"layer", l}, {"linears", cur_items_}}.dump();
  uint8_t len8[8];
  for (int i = 0; i < 8; ++i) len8[i] = static_cast<uint8_t>(static_cast<uint64_t>(footer.size()) >> (8 * i));
  write_all(cur_fd_, footer.data(), footer.size(), cur_tmp_);
  write_all(cur_fd_, len8, 8, cur_tmp_);
  write_all(cur_fd_, kLayerEnd, 8, cur_tmp_);
  const uint64_t layer_bytes = cur_off_ + footer.size() + 16;
  const int fd = cur_fd_;
  cur_fd_ = -1;
  finish_file(fd, cur_tmp_, dir_ + "/" + layer_file(l));
  // 2) X at the input of layer l+1
  const std::string af = acts_file(l + 1);
  write_durable(dir_ + "/" + af, x, count * sizeof(float));
  test_kill_point("checkpoint", l);
  // 3) the manifest: the commit point
  const json old_acts = acts_;
  layers_.push_back({{"file", layer_file(l)}, {"bytes", layer_bytes}, {"linears", cur_items_.size()}});
  acts_ = {{"file", af}, {"bytes", count * sizeof(float)}, {"samples", samples}, {"seqlen", seqlen},
           {"hidden", hidden}};
  next_layer_ = l + 1;
  write_manifest();
  // 4) the previous activations are no longer referenced
  if (!old_acts.is_null()) ::unlink((dir_ + "/" + old_acts.at("file").get<std::string>()).c_str());
  cur_items_ = json::array();
  spdlog::info("layer {}/{}: checkpoint written ({} activations + {} quantized layer) in {:.2f} s",
               l + 1, num_layers_, human_bytes(static_cast<int64_t>(count * sizeof(float))),
               human_bytes(static_cast<int64_t>(layer_bytes)), since(t0));
}

void Checkpoint::write_manifest() {
  const json m = {{"format", "fp4q-checkpoint"}, {"version", kVersion}, {"settings", settings_},
                  {"inputs", inputs_}, {"num_layers", num_layers_}, {"next_layer", next_layer_},
                  {"layers", layers_}, {"activations", acts_}};
  const std::string s = m.dump(2) + "\n";
  write_durable(dir_ + "/" + kManifest, s.data(), s.size());
  fsync_dir(dir_);
}

void Checkpoint::replay_layer(int l, const std::function<void(exporter::QuantizedLinear&&, TensorRecord&&)>& f) const {
  const std::string p = dir_ + "/" + layer_file(l);
  const std::string b = read_file(p);
  auto bad = [&](const std::string& what) {
    return Error(ErrorKind::kInput, "damaged checkpoint layer file: " + what, p, "rerun without --resume to start over");
  };
  if (b.size() < 32 || b.compare(0, 8, kLayerMagic) != 0 || b.compare(b.size() - 8, 8, kLayerEnd) != 0)
    throw bad("bad magic");
  uint64_t flen = 0;
  for (int i = 0; i < 8; ++i) flen |= static_cast<uint64_t>(static_cast<uint8_t>(b[b.size() - 16 + i])) << (8 * i);
  if (flen > b.size() - 24) throw bad("bad footer length");
  const uint64_t data_end = b.size() - 16 - flen;
  json footer;
  try {
    footer = json::parse(b.substr(data_end, flen));
    if (footer.at("layer").get<int>() != l) throw bad("footer names layer " + footer.at("layer").dump());
    for (const auto& it : footer.at("linears")) {
      exporter::QuantizedLinear ql;
      ql.name = it.at("name").get<std::string>();
      ql.hadamard = it.at("hadamard").get<int>();
      ql.input_global_scale = bits_to_float(it.at("input_global_scale_bits").get<uint32_t>());
      auto& q = ql.q;
      q.format = static_cast<format::FormatId>(it.at("format").get<int>());
      q.rows = it.at("rows").get<int64_t>();
      q.cols = it.at("cols").get<int64_t>();
      q.scales.format = q.format;
      q.scales.rows = q.rows;
      q.scales.groups = it.at("groups").get<int64_t>();
      q.scales.global_scale = bits_to_float(it.at("global_scale_bits").get<uint32_t>());
      q.scales.fit_beta = it.at("fit_beta").get<int>();
      q.scales.fit_steps = it.at("fit_steps").get<int>();
      const bool packed = it.at("packed").get<bool>();
      uint64_t off = it.at("offset").get<uint64_t>();
      const uint64_t nc = static_cast<uint64_t>(q.rows * q.cols), ns = static_cast<uint64_t>(q.rows * q.scales.groups);
      const uint64_t cb = packed ? nc / 2 : nc;
      if (q.rows < 0 || q.cols < 0 || q.scales.groups < 0 || off < 8 || off + cb + ns * 6 > data_end)
        throw bad("blob of " + ql.name + " outside the file");
      const auto* base = reinterpret_cast<const uint8_t*>(b.data());
      if (packed) q.codes = format::unpack_nibbles(base + off, q.rows, q.cols);
      else q.codes.assign(base + off, base + off + nc);
      off += cb;
      q.scales.codes.resize(ns);
      std::memcpy(q.scales.codes.data(), base + off, ns * 2);
      off += ns * 2;
      q.scales.values.resize(ns);
      std::memcpy(q.scales.values.data(), base + off, ns * 4);
      f(std::move(ql), record_from(it.at("record")));
    }
  } catch (const json::exception& e) {
    throw bad(e.what());
  }
}

void Checkpoint::load_activations(float* x, uint64_t count, int64_t samples, int64_t seqlen, int64_t hidden) const {
  const std::string p = dir_ + "/" + acts_.at("file").get<std::string>();
  if (acts_.at("bytes").get<uint64_t>() != count * sizeof(float) || acts_.at("samples").get<int64_t>() != samples ||
      acts_.at("seqlen").get<int64_t>() != seqlen || acts_.at("hidden").get<int64_t>() != hidden)
    throw Error(ErrorKind::kInput,
                "checkpoint activations are " + acts_.dump() + ", this run needs " + std::to_string(samples) +
                    " x " + std::to_string(seqlen) + " x " + std::to_string(hidden),
                p, "rerun without --resume to start over");
  const auto t0 = Clock::now();
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(ErrorKind::kIo, "cannot open: " + errno_str(errno), p);
  auto* dst = reinterpret_cast<uint8_t*>(x);
  uint64_t left = count * sizeof(float);
  while (left > 0) {
    const ssize_t r = ::read(fd, dst, static_cast<size_t>(std::min<uint64_t>(left, 1u << 30)));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      const int e = errno;
      ::close(fd);
      throw Error(ErrorKind::kIo, r < 0 ? "read failed: " + errno_str(e) : std::string("file shorter than recorded"), p);
    }
    dst += r;
    left -= static_cast<uint64_t>(r);
  }
  ::close(fd);
  spdlog::info("loaded the calibration activations ({}) in {:.2f} s", human_bytes(static_cast<int64_t>(count * 4)),
               since(t0));
}

void Checkpoint::drop_partial() {
  if (cur_fd_ >= 0) {
    ::close(cur_fd_);
    cur_fd_ = -1;
    ::unlink(cur_tmp_.c_str());
  }
  std::error_code ec;
  std::vector<fs::path> stale;
  for (const auto& e : fs::directory_iterator(dir_, ec))
    if (ends_with(e.path().filename().string(), ".part")) stale.push_back(e.path());
  for (const auto& p : stale) fs::remove(p, ec);
}

void Checkpoint::remove() {
  if (cur_fd_ >= 0) {
    ::close(cur_fd_);
    cur_fd_ = -1;
  }
  std::error_code ec;
  fs::remove_all(dir_, ec);
  if (ec) throw Error(ErrorKind::kIo, "cannot remove the checkpoint: " + ec.message(), dir_);
  if (lock_fd_ >= 0) ::close(lock_fd_);
  lock_fd_ = -1;
  next_layer_ = 0;
}

std::string resume_command() {
  std::ifstream f("/proc/self/cmdline", std::ios::binary);
  const std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (all.empty()) return "the same command with --resume";
  std::string cmd;
  bool has_resume = false;
  for (size_t p = 0; p < all.size();) {
    size_t e = all.find('\0', p);
    if (e == std::string::npos) e = all.size();
    const std::string a = all.substr(p, e - p);
    p = e + 1;
    has_resume = has_resume || a == "--resume";
    const bool plain = !a.empty() && a.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                         "0123456789-_./=:,+@%") == std::string::npos;
    std::string q = "'";
    for (char c : a) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    cmd += (cmd.empty() ? "" : " ") + (plain ? a : q + "'");
  }
  return has_resume ? cmd : cmd + " --resume";
}

void test_kill_point(const char* point, int layer) {
  static const std::string spec = [] {
    const char* e = std::getenv("FP4Q_TEST_KILL_AT");
    return std::string(e ? e : "");
  }();
  if (spec.empty()) return;
  const std::string here = layer < 0 ? std::string(point) : std::string(point) + ":" + std::to_string(layer);
  if (spec != here) return;
  spdlog::default_logger()->flush();
  std::fflush(stderr);
  std::raise(SIGKILL);
}

}  // namespace fp4q::pipeline::detail
