// fp4q/io/writer.cpp — streaming sharded safetensors writer, atomic directories and files.
#include "fp4q/io/writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>

#include <spdlog/spdlog.h>

#include "fp4q/core/error.h"
#include "fp4q/core/half.h"

namespace fp4q::io {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

std::string errno_str(int e) { return std::string(std::strerror(e)); }

// write(2) until done; Error(kIo) naming path (ENOSPC -> "disk full").
void write_all(int fd, const void* buf, uint64_t n, const std::string& path) {
  const uint8_t* p = static_cast<const uint8_t*>(buf);
  while (n > 0) {
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, 1u << 30));
    ssize_t w = ::write(fd, p, chunk);
    if (w < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      throw Error(ErrorKind::kIo,
                  "write failed: " + errno_str(e) + (e == ENOSPC ? " (disk full)" : ""), path,
                  e == ENOSPC ? "free disk space or choose another output location" : "");
    }
    if (w == 0) throw Error(ErrorKind::kIo, "write returned 0 bytes", path);
    p += w;
    n -= static_cast<uint64_t>(w);
  }
}

void fsync_fd(int fd, const std::string& path) {
  if (::fsync(fd) != 0) {
    int e = errno;
    if (e == EINVAL || e == EROFS) return;  // not supported on this fd/fs: nothing to do
    throw Error(ErrorKind::kIo, "fsync failed: " + errno_str(e), path);
  }
}

void close_fd(int fd, const std::string& path) {
  if (::close(fd) != 0 && errno != EINTR)
    throw Error(ErrorKind::kIo, "close failed: " + errno_str(errno), path);
}

// fsync a directory (makes renames inside it durable). Best effort on filesystems without it.
void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw Error(ErrorKind::kIo, "cannot open directory for fsync: " + errno_str(errno), dir);
  int rc = ::fsync(fd);
  int e = errno;
  ::close(fd);
  if (rc != 0 && e != EINVAL && e != EROFS)
    throw Error(ErrorKind::kIo, "fsync of directory failed: " + errno_str(e), dir);
}

// mkstemps-based unique file "<prefix>XXXXXX<suffix>"; returns fd, sets *out_path. Mode 0644.
int make_temp_file(const std::string& prefix, const std::string& suffix, std::string* out_path) {
  std::string tmpl = prefix + "XXXXXX" + suffix;
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  int fd = ::mkstemps(buf.data(), static_cast<int>(suffix.size()));
  if (fd < 0)
    throw Error(ErrorKind::kIo, "cannot create temporary file: " + errno_str(errno), tmpl);
  *out_path = buf.data();
  ::fchmod(fd, 0644);
  return fd;
}

std::string parent_dir(const std::string& path) {
  fs::path p = fs::path(path).parent_path();
  return p.empty() ? std::string(".") : p.string();
}

std::string shape_json(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? "," : "") + std::to_string(s[i]);
  return r + "]";
}

// JSON string literal (UTF-8 kept as is); Error(kInput) on invalid UTF-8.
std::string json_string(const std::string& s, const std::string& where) {
  try {
    return json(s).dump();
  } catch (const json::exception& e) {
    throw Error(ErrorKind::kInput, std::string("name is not valid UTF-8: ") + e.what(), where);
  }
}

// Appends all bytes of src_fd (from offset 0, `n` bytes) to dst_fd.
void copy_fd(int src_fd, int dst_fd, uint64_t n, const std::string& src, const std::string& dst) {
  loff_t off = 0;
  bool use_cfr = true;
  while (n > 0) {
    if (use_cfr) {
      size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, 1u << 30));
      ssize_t c = ::copy_file_range(src_fd, &off, dst_fd, nullptr, chunk, 0);
      if (c > 0) {
        n -= static_cast<uint64_t>(c);
        continue;
      }
      if (c < 0 && errno == EINTR) continue;
      if (c < 0 && errno == ENOSPC)
        throw Error(ErrorKind::kIo, "write failed: " + errno_str(errno) + " (disk full)", dst,
                    "free disk space or choose another output location");
      if (c == 0) throw Error(ErrorKind::kIo, "unexpected end of temporary data file", src);
      use_cfr = false;  // EXDEV / ENOSYS / EINVAL / EOPNOTSUPP ...: fall back to read/write
    }
    std::vector<uint8_t> buf(static_cast<size_t>(std::min<uint64_t>(n, 8u << 20)));
    ssize_t r = ::pread(src_fd, buf.data(), buf.size(), off);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw Error(ErrorKind::kIo, "read failed: " + errno_str(errno), src);
    }
    if (r == 0) throw Error(ErrorKind::kIo, "unexpected end of temporary data file", src);
    write_all(dst_fd, buf.data(), static_cast<uint64_t>(r), dst);
    off += r;
    n -= static_cast<uint64_t>(r);
  }
}

std::atomic<uint64_t> g_writer_counter{0};

}  // namespace

// ---------------------------------------------------------------------------------------------
// OutTensor helpers

int64_t checked_numel(const std::vector<int64_t>& shape, const std::string& where) {
  bool zero = false;
  for (int64_t d : shape) {
    if (d < 0)
      throw Error(ErrorKind::kInput, "shape " + shape_json(shape) + " has a negative dimension",
                  where);
    if (d == 0) zero = true;
  }
  if (zero) return 0;
  int64_t n = 1;
  for (int64_t d : shape) {
    if (n > std::numeric_limits<int64_t>::max() / d)
      throw Error(ErrorKind::kInput, "shape " + shape_json(shape) + ": element count overflows",
                  where);
    n *= d;
  }
  if (static_cast<uint64_t>(n) > std::numeric_limits<uint64_t>::max() / 8)
    throw Error(ErrorKind::kInput, "shape " + shape_json(shape) + ": byte count overflows", where);
  return n;
}

OutTensor make_tensor_from_f32(std::string name, std::vector<int64_t> shape, const float* values,
                               DType dtype) {
  const int64_t n = checked_numel(shape, "tensor '" + name + "'");
  OutTensor t;
  t.dtype = dtype;
  t.bytes.resize(static_cast<size_t>(n) * dtype_size(dtype));
  if (dtype == DType::kF32) {
    if (n) std::memcpy(t.bytes.data(), values, static_cast<size_t>(n) * 4);
  } else if (dtype == DType::kF16 || dtype == DType::kBF16) {
    for (int64_t i = 0; i < n; ++i) {
      uint16_t h = dtype == DType::kF16 ? float_to_f16(values[i]) : float_to_bf16(values[i]);
      std::memcpy(t.bytes.data() + i * 2, &h, 2);
    }
  } else {
    throw Error(ErrorKind::kInput,
                std::string("make_tensor_from_f32 converts to F32/F16/BF16 only, got ") +
                    dtype_tag(dtype),
                "tensor '" + name + "'");
  }
  t.name = std::move(name);
  t.shape = std::move(shape);
  return t;
}

OutTensor make_tensor_raw(std::string name, DType dtype, std::vector<int64_t> shape,
                          const void* bytes, uint64_t nbytes) {
  const int64_t n = checked_numel(shape, "tensor '" + name + "'");
  const uint64_t need = static_cast<uint64_t>(n) * dtype_size(dtype);
  if (need != nbytes)
    throw Error(ErrorKind::kInput,
                std::string("dtype ") + dtype_tag(dtype) + " x shape " + shape_json(shape) +
                    " needs " + std::to_string(need) + " bytes, got " + std::to_string(nbytes),
                "tensor '" + name + "'");
  OutTensor t;
  t.name = std::move(name);
  t.dtype = dtype;
  t.shape = std::move(shape);
  const uint8_t* p = static_cast<const uint8_t*>(bytes);
  t.bytes.assign(p, p + nbytes);
  return t;
}

// ---------------------------------------------------------------------------------------------
// ShardedWriter

ShardedWriter::ShardedWriter(std::string dir, uint64_t max_shard_bytes, json metadata)
    : dir_(std::move(dir)), max_shard_bytes_(max_shard_bytes) {
  std::error_code ec;
  if (!fs::is_directory(dir_, ec))
    throw Error(ErrorKind::kIo, "output directory does not exist", dir_);
  if (!metadata.is_null()) {
    if (!metadata.is_object())
      throw Error(ErrorKind::kInput, "__metadata__ must be an object of strings",
                  "ShardedWriter metadata");
    for (auto it = metadata.begin(); it != metadata.end(); ++it)
      if (!it.value().is_string())
        throw Error(ErrorKind::kInput,
                    "__metadata__ values must be strings; key '" + it.key() + "' is " +
                        it.value().type_name(),
                    "ShardedWriter metadata");
    if (!metadata.empty()) {
      try {
        metadata_json_ = metadata.dump();
      } catch (const json::exception& e) {
        throw Error(ErrorKind::kInput, std::string("__metadata__ is not valid UTF-8: ") + e.what(),
                    "ShardedWriter metadata");
      }
    }
  }
  tmp_tag_ = std::to_string(::getpid()) + "-" + std::to_string(g_writer_counter++);
}

ShardedWriter::~ShardedWriter() {
  if (!finished_) cleanup();
}

void ShardedWriter::cleanup() noexcept {
  if (data_fd_ >= 0) ::close(data_fd_);
  data_fd_ = -1;
  if (!data_path_.empty()) ::unlink(data_path_.c_str());
  data_path_.clear();
  for (const auto& p : shard_tmp_paths_) ::unlink(p.c_str());
  shard_tmp_paths_.clear();
}

void ShardedWriter::add(OutTensor t) {
  add_raw(t.name, t.dtype, t.shape, t.bytes.data(), t.bytes.size());
}

void ShardedWriter::add_raw(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                            const void* bytes, uint64_t nbytes) {
  const std::string where = dir_ + ": tensor '" + name + "'";
  if (finished_) throw Error(ErrorKind::kInternal, "add() after finish()", where);
  if (name.empty()) throw Error(ErrorKind::kInput, "tensor name is empty", dir_);
  if (name == "__metadata__")
    throw Error(ErrorKind::kInput, "'__metadata__' is reserved and cannot name a tensor", where);
  json_string(name, where);  // validates UTF-8
  (void)dtype_size(dtype);   // validates the enum value
  const int64_t n = checked_numel(shape, where);
  const uint64_t need = static_cast<uint64_t>(n) * dtype_size(dtype);
  if (need != nbytes)
    throw Error(ErrorKind::kInput,
                std::string("dtype ") + dtype_tag(dtype) + " x shape " + shape_json(shape) +
                    " needs " + std::to_string(need) + " bytes, got " + std::to_string(nbytes),
                where);
  if (nbytes > 0 && bytes == nullptr)
    throw Error(ErrorKind::kInternal, "null data pointer", where);
  if (all_names_.count(name))
    throw Error(ErrorKind::kInput, "duplicate tensor name (already added)", where);

  if (max_shard_bytes_ > 0 && !cur_.empty() && cur_bytes_ + nbytes > max_shard_bytes_)
    close_shard();
  if (data_fd_ < 0)
    data_fd_ = make_temp_file(dir_ + "/.fp4q-shard-" + tmp_tag_ + "-", ".data.part", &data_path_);
  write_all(data_fd_, bytes, nbytes, data_path_);
  all_names_.insert(name);
  cur_.push_back(Entry{name, dtype, shape, cur_bytes_, cur_bytes_ + nbytes});
  cur_bytes_ += nbytes;
  total_bytes_ += nbytes;
  ++num_tensors_;
}

void ShardedWriter::close_shard() {
  // Header: {"__metadata__":{...},"name":{"dtype":"F32","shape":[..],"data_offsets":[b,e]},...}
  std::string h = "{";
  bool first = true;
  if (!metadata_json_.empty()) {
    h += "\"__metadata__\":" + metadata_json_;
    first = false;
  }
  for (const Entry& e : cur_) {
    if (!first) h += ",";
    first = false;
    h += json_string(e.name, dir_) + ":{\"dtype\":\"" + dtype_tag(e.dtype) +
         "\",\"shape\":" + shape_json(e.shape) + ",\"data_offsets\":[" + std::to_string(e.begin) +
         "," + std::to_string(e.end) + "]}";
  }
  h += "}";
  h.append((8 - h.size() % 8) % 8, ' ');  // data section starts at 8 + h.size(), 8-aligned
  uint8_t len[8];
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));

  std::string shard_path;
  int fd = make_temp_file(dir_ + "/.fp4q-shard-" + tmp_tag_ + "-", ".part", &shard_path);
  shard_tmp_paths_.push_back(shard_path);  // removed by cleanup() on failure
  try {
    write_all(fd, len, 8, shard_path);
    write_all(fd, h.data(), h.size(), shard_path);
    if (data_fd_ >= 0 && cur_bytes_ > 0) copy_fd(data_fd_, fd, cur_bytes_, data_path_, shard_path);
    fsync_fd(fd, shard_path);
  } catch (...) {
    ::close(fd);
    throw;
  }
  close_fd(fd, shard_path);
  if (data_fd_ >= 0) {
    ::close(data_fd_);
    ::unlink(data_path_.c_str());
    data_fd_ = -1;
    data_path_.clear();
  }
  std::vector<std::string> names;
  names.reserve(cur_.size());
  for (const Entry& e : cur_) names.push_back(e.name);
  shard_names_.push_back(std::move(names));
  spdlog::debug("{}: shard {} closed: {} tensors, {} bytes", dir_, shard_names_.size(), cur_.size(),
                cur_bytes_);
  cur_.clear();
  cur_bytes_ = 0;
}

std::vector<std::string> ShardedWriter::finish() {
  if (finished_) throw Error(ErrorKind::kInternal, "finish() called twice", dir_);
  if (!cur_.empty() || shard_tmp_paths_.empty()) close_shard();
  const size_t n = shard_tmp_paths_.size();
  std::vector<std::string> files;
  const std::string index_path = dir_ + "/" + kIndexName;
  if (n == 1) {
    files.push_back(kSingleName);
  } else {
    for (size_t i = 0; i < n; ++i) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, n);
      files.push_back(buf);
    }
  }
  for (size_t i = 0; i < n; ++i) {
    const std::string dst = dir_ + "/" + files[i];
    if (::rename(shard_tmp_paths_[i].c_str(), dst.c_str()) != 0)
      throw Error(ErrorKind::kIo, "cannot rename " + shard_tmp_paths_[i] + ": " + errno_str(errno),
                  dst);
    shard_tmp_paths_[i] = dst;  // now final: cleanup() must not remove it
  }
  shard_tmp_paths_.clear();
  finished_ = true;
  if (n == 1) {
    // A stale index (e.g. copied from a sharded input) would make loaders ignore model.safetensors.
    std::error_code ec;
    if (fs::exists(index_path, ec)) {
      spdlog::debug("{}: removing stale {}", dir_, kIndexName);
      fs::remove(index_path, ec);
    }
  } else {
    // A stale model.safetensors would be loaded instead of the index (transformers prefers it).
    std::error_code ec;
    if (fs::exists(dir_ + "/" + kSingleName, ec)) {
      spdlog::debug("{}: removing stale {}", dir_, kSingleName);
      fs::remove(dir_ + "/" + kSingleName, ec);
    }
    json wm = json::object();
    for (size_t i = 0; i < n; ++i)
      for (const auto& name : shard_names_[i]) wm[name] = files[i];
    json idx = {{"metadata", {{"total_size", total_bytes_}}}, {"weight_map", wm}};
    write_file_atomic(index_path, idx.dump(2) + "\n");
    files.push_back(kIndexName);
  }
  fsync_dir(dir_);
  return files;
}

// ---------------------------------------------------------------------------------------------
// AtomicDir

namespace {
std::string strip_trailing_slashes(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

bool is_empty_dir(const std::string& p) {
  std::error_code ec;
  return fs::is_directory(p, ec) && fs::is_empty(p, ec) && !ec;
}

void fsync_tree(const std::string& root) {
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (it->is_symlink(ec)) continue;
    const std::string p = it->path().string();
    if (it->is_directory(ec)) {
      fsync_dir(p);
    } else if (it->is_regular_file(ec)) {
      int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) throw Error(ErrorKind::kIo, "cannot open for fsync: " + errno_str(errno), p);
      int rc = ::fsync(fd);
      int e = errno;
      ::close(fd);
      if (rc != 0 && e != EINVAL && e != EROFS)
        throw Error(ErrorKind::kIo, "fsync failed: " + errno_str(e), p);
    }
  }
  if (ec) throw Error(ErrorKind::kIo, "cannot list directory: " + ec.message(), root);
  fsync_dir(root);
}
}  // namespace

AtomicDir::AtomicDir(std::string final_path, bool overwrite, std::string adopt_tmp)
    : final_(strip_trailing_slashes(std::move(final_path))), overwrite_(overwrite) {
  const std::string base = fs::path(final_).filename().string();
  if (final_.empty() || base.empty() || base == "." || base == ".." || final_ == "/")
    throw Error(ErrorKind::kUsage, "not a usable output directory path", final_,
                "name a new directory, e.g. out/model-nvfp4");
  std::error_code ec;
  auto st = fs::symlink_status(final_, ec);
  if (fs::exists(st) && !is_empty_dir(final_) && !overwrite_)
    throw Error(ErrorKind::kUsage,
                fs::is_directory(st) ? "output directory exists and is not empty"
                                     : "output path exists and is not a directory",
                final_, "pass --overwrite to replace it, or choose another output path");
  const std::string parent = parent_dir(final_);
  fs::create_directories(parent, ec);
  if (ec)
    throw Error(ErrorKind::kIo, "cannot create parent directory: " + ec.message(), parent);
  if (!adopt_tmp.empty()) {
    adopt_tmp = strip_trailing_slashes(std::move(adopt_tmp));
    if (parent_dir(adopt_tmp) != parent || !fs::is_directory(adopt_tmp, ec) ||
        fs::is_symlink(fs::symlink_status(adopt_tmp, ec)))
      throw Error(ErrorKind::kInternal, "not a temporary directory next to the output", adopt_tmp);
    tmp_ = adopt_tmp;
    return;
  }
  std::string tmpl = final_ + ".tmp-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!::mkdtemp(buf.data()))
    throw Error(ErrorKind::kIo, "cannot create temporary output directory: " + errno_str(errno),
                tmpl);
  tmp_ = buf.data();
  ::chmod(tmp_.c_str(), 0755);
}

AtomicDir::~AtomicDir() {
  if (!committed_ && !kept_ && !tmp_.empty()) {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
    if (ec) spdlog::warn("could not remove temporary directory {}: {}", tmp_, ec.message());
  }
}

void AtomicDir::commit() {
  if (committed_) throw Error(ErrorKind::kInternal, "commit() called twice", final_);
  fsync_tree(tmp_);
  const std::string parent = parent_dir(final_);
  std::error_code ec;
  auto st = fs::symlink_status(final_, ec);
  std::string aside;
  if (fs::exists(st) && !is_empty_dir(final_)) {
    if (!overwrite_)
      throw Error(ErrorKind::kIo, "output path appeared while writing; not replacing it", final_,
                  "pass --overwrite to replace it");
    // Unique aside name: mkdtemp reserves it, rmdir frees it for rename().
    std::string tmpl = final_ + ".old-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!::mkdtemp(buf.data()))
      throw Error(ErrorKind::kIo, "cannot reserve a name to move the old output aside: " +
                                      errno_str(errno), tmpl);
    aside = buf.data();
    ::rmdir(aside.c_str());
    if (::rename(final_.c_str(), aside.c_str()) != 0)
      throw Error(ErrorKind::kIo, "cannot move the existing output aside to " + aside + ": " +
                                      errno_str(errno), final_);
  }
  if (::rename(tmp_.c_str(), final_.c_str()) != 0) {
    int e = errno;
    if (!aside.empty()) ::rename(aside.c_str(), final_.c_str());  // put the old one back
    throw Error(ErrorKind::kIo, "cannot rename " + tmp_ + " into place: " + errno_str(e), final_);
  }
  committed_ = true;
  fsync_dir(parent);
  if (!aside.empty()) {
    fs::remove_all(aside, ec);
    if (ec) spdlog::warn("could not remove the replaced output {}: {}", aside, ec.message());
  }
}

// ---------------------------------------------------------------------------------------------
// Files

void write_file_atomic(const std::string& path, const std::string& content) {
  std::string tmp;
  int fd = make_temp_file(path + ".tmp-", "", &tmp);
  try {
    write_all(fd, content.data(), content.size(), tmp);
    fsync_fd(fd, tmp);
    int rc = ::close(fd);
    fd = -1;
    if (rc != 0) throw Error(ErrorKind::kIo, "close failed: " + errno_str(errno), tmp);
    if (::rename(tmp.c_str(), path.c_str()) != 0)
      throw Error(ErrorKind::kIo, "cannot rename " + tmp + ": " + errno_str(errno), path);
  } catch (...) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  fsync_dir(parent_dir(path));
}

void copy_file(const std::string& src, const std::string& dst) {
  std::error_code ec;
  fs::copy_file(src, dst, fs::copy_options::overwrite_existing, ec);
  if (ec) throw Error(ErrorKind::kIo, "cannot copy " + src + " to " + dst + ": " + ec.message(), dst);
}

}  // namespace fp4q::io
