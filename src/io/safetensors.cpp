// fp4q/io/safetensors.cpp — memory-mapped, fully validated safetensors reader and HF model
// directories (single file or sharded with model.safetensors.index.json).
#include "fp4q/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <unordered_set>

#include <spdlog/spdlog.h>

#include "fp4q/core/error.h"
#include "fp4q/core/half.h"
#include "fp4q/core/parallel.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "fp4q io assumes a little-endian host (safetensors data is little-endian)"
#endif

namespace fp4q::io {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // same limit as the safetensors library

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

std::string tensor_where(const std::string& path, const std::string& name) {
  return path + ": tensor '" + name + "'";
}

std::string errno_str(int e) { return std::string(std::strerror(e)); }

// Reads a whole (small) text file; Error(kIo) naming it.
std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorKind::kIo, "cannot open file: " + errno_str(errno), path);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(ErrorKind::kIo, "read failed", path);
  return ss.str();
}

// Parses one TensorInfo from a header entry; every error names file, tensor and field.
TensorInfo parse_entry(const std::string& path, const std::string& name, const json& v,
                       uint64_t data_len) {
  const std::string where = tensor_where(path, name);
  if (!v.is_object())
    throw Error(ErrorKind::kInput,
                std::string("header entry must be an object {dtype, shape, data_offsets}, got ") +
                    v.type_name(),
                where);
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!v.contains(key))
      throw Error(ErrorKind::kInput, std::string("missing field '") + key + "'", where);
  for (auto it = v.begin(); it != v.end(); ++it)
    if (it.key() != "dtype" && it.key() != "shape" && it.key() != "data_offsets")
      spdlog::debug("{}: ignoring unknown field '{}'", where, it.key());

  TensorInfo t;
  t.name = name;
  // dtype
  const json& jd = v["dtype"];
  if (!jd.is_string())
    throw Error(ErrorKind::kInput, std::string("field 'dtype' must be a string, got ") + jd.dump(),
                where);
  const std::string tag = jd.get<std::string>();
  auto dt = parse_dtype(tag);
  if (!dt) {
    std::string hint = "supported: ";
    size_t n = 0;
    const DType* all = all_dtypes(&n);
    for (size_t i = 0; i < n; ++i) hint += std::string(i ? ", " : "") + dtype_tag(all[i]);
    throw Error(ErrorKind::kInput, "field 'dtype': unknown or unsupported dtype \"" + tag + "\"",
                where, hint);
  }
  t.dtype = *dt;
  // shape
  const json& js = v["shape"];
  if (!js.is_array())
    throw Error(ErrorKind::kInput,
                "field 'shape' must be an array of non-negative integers, got " + js.dump(), where);
  bool has_zero = false;
  for (const json& d : js) {
    if (!d.is_number_integer() ||
        (d.is_number_unsigned() &&
         d.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) ||
        (!d.is_number_unsigned() && d.get<int64_t>() < 0))
      throw Error(ErrorKind::kInput,
                  "field 'shape': every dimension must be a non-negative integer, got " + js.dump(),
                  where);
    int64_t x = d.get<int64_t>();
    if (x == 0) has_zero = true;
    t.shape.push_back(x);
  }
  const uint64_t esize = dtype_size(t.dtype);
  uint64_t numel = 1;
  if (has_zero) {
    numel = 0;
  } else {
    for (int64_t x : t.shape) {
      uint64_t ux = static_cast<uint64_t>(x);
      if (numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / ux)
        throw Error(ErrorKind::kInput, "field 'shape' " + shape_str(t.shape) + ": element count overflows int64",
                    where);
      numel *= ux;
    }
  }
  if (numel > std::numeric_limits<uint64_t>::max() / esize)
    throw Error(ErrorKind::kInput,
                "field 'shape' " + shape_str(t.shape) + ": byte count overflows uint64", where);
  const uint64_t need = numel * esize;
  // data_offsets
  const json& jo = v["data_offsets"];
  if (!jo.is_array() || jo.size() != 2 || !jo[0].is_number_unsigned() ||
      !jo[1].is_number_unsigned())
    throw Error(ErrorKind::kInput,
                "field 'data_offsets' must be [begin, end] with non-negative integers, got " +
                    jo.dump(),
                where);
  const uint64_t b = jo[0].get<uint64_t>(), e = jo[1].get<uint64_t>();
  if (b > e)
    throw Error(ErrorKind::kInput,
                "field 'data_offsets' [" + std::to_string(b) + ", " + std::to_string(e) +
                    "]: begin must be <= end",
                where);
  if (e - b != need)
    throw Error(ErrorKind::kInput,
                "field 'data_offsets' [" + std::to_string(b) + ", " + std::to_string(e) + "] spans " +
                    std::to_string(e - b) + " bytes but dtype " + tag + " x shape " +
                    shape_str(t.shape) + " needs " + std::to_string(need) + " bytes",
                where);
  if (e > data_len)
    throw Error(ErrorKind::kInput,
                "field 'data_offsets' [" + std::to_string(b) + ", " + std::to_string(e) +
                    "] lies outside the data section of " + std::to_string(data_len) +
                    " bytes (file truncated?)",
                where);
  t.offset = b;
  t.nbytes = need;
  return t;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// TensorInfo

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // validated on open: no overflow
  return n;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::SafetensorsFile(SafetensorsFile&& o) noexcept { *this = std::move(o); }

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    map_ = o.map_;
    size_ = o.size_;
    fd_ = o.fd_;
    owned_ = std::move(o.owned_);  // a moved vector keeps its buffer: map_ stays valid
    header_len_ = o.header_len_;
    tensors_ = std::move(o.tensors_);
    by_name_ = std::move(o.by_name_);
    metadata_ = std::move(o.metadata_);
    o.map_ = nullptr;
    o.size_ = 0;
    o.fd_ = -1;
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() { release(); }

void SafetensorsFile::release() noexcept {
  if (map_ && owned_.empty()) ::munmap(const_cast<uint8_t*>(map_), size_);
  if (fd_ >= 0) ::close(fd_);
  owned_.clear();
  owned_.shrink_to_fit();
  map_ = nullptr;
  size_ = 0;
  fd_ = -1;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  // O_NONBLOCK: opening a FIFO (or a device) must not block; it is refused below as not a
  // regular file. The flag has no effect on reads of regular files.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0)
    throw Error(ErrorKind::kIo, "cannot open file: " + errno_str(errno), path,
                "check that the path exists and is readable");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    throw Error(ErrorKind::kIo, "cannot stat file: " + errno_str(e), path);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(ErrorKind::kInput, "not a regular file", path);
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    throw Error(ErrorKind::kInput,
                "file is " + std::to_string(size) +
                    " bytes, shorter than the 8-byte header length prefix (truncated?)",
                path + ": header length");
  }
  void* m = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  if (m == MAP_FAILED) {
    ::close(fd);
    throw Error(ErrorKind::kIo, "mmap failed: " + errno_str(map_errno), path);
  }
  f.map_ = static_cast<const uint8_t*>(m);
  f.size_ = size;
  f.fd_ = fd;  // kept: tensor reads use pread and re-check the file size (see read_f32 / data)
  f.parse();
  return f;
}

SafetensorsFile SafetensorsFile::from_bytes(std::string name, std::vector<uint8_t> bytes) {
  SafetensorsFile f;
  f.path_ = std::move(name);
  if (bytes.size() < 8)
    throw Error(ErrorKind::kInput,
                "file is " + std::to_string(bytes.size()) +
                    " bytes, shorter than the 8-byte header length prefix (truncated?)",
                f.path_ + ": header length");
  f.owned_ = std::move(bytes);
  f.map_ = f.owned_.data();
  f.size_ = f.owned_.size();
  f.parse();
  return f;
}

void SafetensorsFile::parse() {
  SafetensorsFile& f = *this;
  const std::string& path = path_;
  const uint64_t size = size_;

  // u64 little-endian header length
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | f.map_[i];
  if (n > kMaxHeaderBytes)
    throw Error(ErrorKind::kInput,
                std::to_string(n) + " exceeds the limit of " +
                    std::to_string(kMaxHeaderBytes) + " bytes",
                path + ": header length", "the file is corrupt or not a safetensors file");
  if (n > size - 8)
    throw Error(ErrorKind::kInput,
                std::to_string(n) + " exceeds the file: only " +
                    std::to_string(size - 8) + " bytes follow the 8-byte prefix",
                path + ": header length", "the file is truncated or not a safetensors file");
  if (n == 0) throw Error(ErrorKind::kInput, "empty (length 0)", path + ": header");
  f.header_len_ = n;
  const uint64_t data_len = size - 8 - n;
  const char* hb = reinterpret_cast<const char*>(f.map_ + 8);

  // Parse, detecting duplicate top-level keys (nlohmann would silently keep one).
  std::string dup;
  std::unordered_set<std::string> seen;
  json h;
  try {
    h = json::parse(hb, hb + n, [&](int depth, json::parse_event_t ev, json& parsed) {
      if (ev == json::parse_event_t::key && depth == 1 && parsed.is_string()) {
        const auto& k = parsed.get_ref<const std::string&>();
        if (!seen.insert(k).second && dup.empty()) dup = k;
      }
      return true;
    });
  } catch (const json::exception& e) {
    throw Error(ErrorKind::kInput, std::string("not valid UTF-8 JSON: ") + e.what(),
                path + ": header", "the file is corrupt or not a safetensors file");
  }
  if (!h.is_object())
    throw Error(ErrorKind::kInput, std::string("must be a JSON object, got ") + h.type_name(),
                path + ": header");
  if (!dup.empty())
    throw Error(ErrorKind::kInput, "duplicate tensor name in header (appears more than once)",
                tensor_where(path, dup));

  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") {
      const json& md = it.value();
      if (md.is_null()) continue;
      if (!md.is_object())
        throw Error(ErrorKind::kInput,
                    std::string("field '__metadata__' must be an object of strings, got ") +
                        md.type_name(),
                    path + ": field '__metadata__'");
      for (auto m2 = md.begin(); m2 != md.end(); ++m2)
        if (!m2.value().is_string())
          throw Error(ErrorKind::kInput,
                      "field '__metadata__' must map strings to strings, but key '" + m2.key() +
                          "' has a " + m2.value().type_name() + " value " + m2.value().dump(),
                      path + ": field '__metadata__." + m2.key() + "'");
      f.metadata_ = md;
      continue;
    }
    f.tensors_.push_back(parse_entry(path, it.key(), it.value(), data_len));
  }

  std::sort(f.tensors_.begin(), f.tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    if (a.offset != b.offset) return a.offset < b.offset;
    if (a.nbytes != b.nbytes) return a.nbytes < b.nbytes;
    return a.name < b.name;
  });
  // Overlaps and gaps (empty tensors occupy no bytes and never overlap).
  uint64_t covered_end = 0;
  const TensorInfo* last = nullptr;
  for (const TensorInfo& t : f.tensors_) {
    if (t.nbytes == 0) continue;
    if (last && t.offset < covered_end)
      throw Error(ErrorKind::kInput,
                  "byte range [" + std::to_string(t.offset) + ", " +
                      std::to_string(t.offset + t.nbytes) + ") overlaps tensor '" + last->name +
                      "' [" + std::to_string(last->offset) + ", " +
                      std::to_string(last->offset + last->nbytes) + ")",
                  tensor_where(path, t.name) + " field 'data_offsets'");
    if (t.offset > covered_end)
      spdlog::debug("{}: {} unused bytes before tensor '{}'", path, t.offset - covered_end, t.name);
    covered_end = t.offset + t.nbytes;
    last = &t;
  }
  if (covered_end < data_len)
    spdlog::debug("{}: {} unused bytes at the end of the data section", path,
                  data_len - covered_end);

  for (size_t i = 0; i < f.tensors_.size(); ++i) f.by_name_.emplace(f.tensors_[i].name, i);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

namespace {
// Test hook (see safetensors.h): FP4Q_TEST_STOP_AT_READ=N stops the process with SIGSTOP right
// before its N-th tensor access (read_f32 or data(), counted over all files, 1-based).
void test_stop_hook() {
  static const long stop_at = [] {
    const char* e = std::getenv("FP4Q_TEST_STOP_AT_READ");
    return e ? std::atol(e) : 0L;
  }();
  if (stop_at <= 0) return;
  static std::atomic<long> reads{0};
  if (++reads == stop_at) ::raise(SIGSTOP);
}
}  // namespace

void SafetensorsFile::check_unchanged(const TensorInfo& info) const {
  if (fd_ < 0) return;  // in memory: nothing can change
  struct stat st {};
  if (::fstat(fd_, &st) != 0)
    throw Error(ErrorKind::kIo, "cannot stat file: " + errno_str(errno), path_);
  const uint64_t need = 8 + header_len_ + info.offset + info.nbytes;
  if (static_cast<uint64_t>(st.st_size) < need)
    throw Error(ErrorKind::kIo,
                "the file shrank from " + std::to_string(size_) + " to " +
                    std::to_string(st.st_size) + " bytes while fp4q was running; tensor '" +
                    info.name + "' needs bytes up to " + std::to_string(need),
                path_, "the file was truncated or replaced during the run; restore it and rerun");
}

const uint8_t* SafetensorsFile::data(const TensorInfo& info) const {
  FP4Q_ASSERT(map_ != nullptr && info.offset + info.nbytes <= size_ - 8 - header_len_);
  test_stop_hook();
  check_unchanged(info);
  return map_ + 8 + header_len_ + info.offset;
}

std::vector<float> SafetensorsFile::read_f32(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (!t) throw Error(ErrorKind::kInput, "no such tensor in file", tensor_where(path_, name));
  return read_f32(*t);
}

namespace {
// pread(2) of exactly n bytes at `off`; Error(kIo) naming the file on an OS error (EIO: an
// unreadable disk block) or when the file ends early (truncated while fp4q was running).
void pread_all(int fd, void* buf, uint64_t n, uint64_t off, const std::string& path,
               const std::string& where) {
  uint8_t* p = static_cast<uint8_t*>(buf);
  while (n > 0) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, 1u << 30));
    const ssize_t r = ::pread(fd, p, chunk, static_cast<off_t>(off));
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      throw Error(ErrorKind::kIo, "read failed: " + errno_str(errno), where,
                  "the file " + path + " cannot be read (disk error?)");
    }
    if (r == 0)
      throw Error(ErrorKind::kIo,
                  "the file ends at byte " + std::to_string(off) +
                      ", before the end of the tensor: it was truncated or replaced while fp4q "
                      "was running",
                  where, "restore " + path + " and rerun");
    p += r;
    off += static_cast<uint64_t>(r);
    n -= static_cast<uint64_t>(r);
  }
}
}  // namespace

std::vector<float> SafetensorsFile::read_f32(const TensorInfo& info) const {
  std::vector<float> out;
  read_f32_into(info, out);
  return out;
}

void SafetensorsFile::read_f32_into(const TensorInfo& info, std::vector<float>& out) const {
  const std::string where = tensor_where(path_, info.name);
  if (!is_float_dtype(info.dtype)) {
    convert_to_f32(info.dtype, nullptr, 0, nullptr, where);  // throws the dtype error
  }
  FP4Q_ASSERT(map_ != nullptr && info.offset + info.nbytes <= size_ - 8 - header_len_);
  test_stop_hook();
  out.resize(static_cast<size_t>(info.numel()));  // keeps the capacity of a reused vector
  if (fd_ < 0) {
    convert_to_f32(info.dtype, map_ + 8 + header_len_ + info.offset, info.numel(), out.data(),
                   where);
    return;
  }
  // From the file with pread, not through the mapping: a file truncated (or a disk block that
  // became unreadable) after open() then gives an Error(kIo) instead of SIGBUS.
  const uint64_t base = 8 + header_len_ + info.offset;
  if (info.dtype == DType::kF32) {
    pread_all(fd_, out.data(), info.nbytes, base, path_, where);
    return;
  }
  constexpr int64_t kChunk = 1 << 20;  // elements per pread for 2-byte dtypes
  std::vector<uint8_t> buf(static_cast<size_t>(std::min<int64_t>(info.numel(), kChunk) * 2));
  for (int64_t lo = 0; lo < info.numel(); lo += kChunk) {
    const int64_t cnt = std::min<int64_t>(kChunk, info.numel() - lo);
    pread_all(fd_, buf.data(), static_cast<uint64_t>(cnt) * 2, base + static_cast<uint64_t>(lo) * 2,
              path_, where);
    convert_to_f32(info.dtype, buf.data(), cnt, out.data() + lo, where);
  }
}

void convert_to_f32(DType dtype, const uint8_t* bytes, int64_t numel, float* out,
                    const std::string& where) {
  if (!is_float_dtype(dtype))
    throw Error(ErrorKind::kInput,
                std::string("expected a floating-point tensor (F32, F16 or BF16), got ") +
                    dtype_tag(dtype),
                where);
  if (numel <= 0) return;
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (numel + kChunk - 1) / kChunk;
  auto run = [&](int64_t c) {
    const int64_t lo = c * kChunk, hi = std::min(numel, lo + kChunk);
    if (dtype == DType::kF32) {
      std::memcpy(out + lo, bytes + lo * 4, static_cast<size_t>(hi - lo) * 4);
    } else {
      for (int64_t i = lo; i < hi; ++i) {
        uint16_t h;
        std::memcpy(&h, bytes + i * 2, 2);
        out[i] = dtype == DType::kF16 ? f16_to_float(h) : bf16_to_float(h);
      }
    }
  };
  if (chunks == 1) {
    run(0);
  } else {
    parallel_for(static_cast<long>(chunks), [&](long c) { run(c); });
  }
}

// ---------------------------------------------------------------------------------------------
// ModelFiles

namespace {
constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}
}  // namespace

ModelFiles ModelFiles::open(const std::string& path) {
  ModelFiles mf;
  std::error_code ec;
  fs::path p(path);
  auto st = fs::status(p, ec);
  if (ec || !fs::exists(st))
    throw Error(ErrorKind::kIo, "no such file or directory", path,
                "pass a model directory or a .safetensors file");
  std::string single, index;
  if (fs::is_directory(st)) {
    mf.dir_ = path;
    // Same preference as transformers: model.safetensors wins over the index.
    if (fs::exists(p / kSingleName)) {
      single = (p / kSingleName).string();
    } else if (fs::exists(p / kIndexName)) {
      index = (p / kIndexName).string();
    } else {
      std::string found;
      for (const auto& de : fs::directory_iterator(p, ec))
        if (ends_with(de.path().filename().string(), ".safetensors"))
          found += (found.empty() ? "" : ", ") + de.path().filename().string();
      throw Error(ErrorKind::kInput,
                  std::string("directory has neither ") + kSingleName + " nor " + kIndexName, path,
                  found.empty() ? "not a Hugging Face safetensors model directory"
                                : "found " + found + "; pass the file path directly");
    }
  } else {
    fs::path parent = p.parent_path();
    mf.dir_ = parent.empty() ? "." : parent.string();
    if (ends_with(p.filename().string(), ".index.json"))
      index = path;
    else
      single = path;
  }

  if (!single.empty()) {
    mf.files_.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::open(single)));
    const auto& ts = mf.files_[0]->tensors();
    for (size_t i = 0; i < ts.size(); ++i) mf.loc_.emplace(ts[i].name, Loc{0, i});
    return mf;
  }

  // Sharded: parse the index.
  mf.index_path_ = index;
  json j;
  try {
    j = json::parse(read_text_file(index));
  } catch (const json::exception& e) {
    throw Error(ErrorKind::kInput, std::string("index is not valid JSON: ") + e.what(), index);
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    throw Error(ErrorKind::kInput, "index must be a JSON object with an object field 'weight_map'",
                index + ": field 'weight_map'");
  const fs::path idx_dir = fs::path(index).parent_path();
  std::map<std::string, std::vector<std::string>> by_shard;  // shard file -> tensor names
  const json& wm = j["weight_map"];
  for (auto it = wm.begin(); it != wm.end(); ++it) {
    if (!it.value().is_string())
      throw Error(ErrorKind::kInput,
                  std::string("weight_map value must be a shard file name, got ") + it.value().dump(),
                  index + ": weight_map tensor '" + it.key() + "'");
    const std::string shard = it.value().get<std::string>();
    fs::path sp(shard);
    bool bad = shard.empty() || sp.is_absolute();
    for (const auto& comp : sp)
      if (comp == "..") bad = true;
    if (bad)
      throw Error(ErrorKind::kInput,
                  "weight_map shard path '" + shard +
                      "' must be a relative file name inside the model directory",
                  index + ": weight_map tensor '" + it.key() + "'");
    by_shard[shard].push_back(it.key());
  }
  if (by_shard.empty())
    throw Error(ErrorKind::kInput, "weight_map is empty", index + ": field 'weight_map'");

  for (auto& [shard, names] : by_shard) {
    const std::string spath = (idx_dir / shard).string();
    // error_code overload: a shard name the file system rejects (too long, ...) is a missing shard,
    // not a filesystem_error escaping as an internal error (fuzz finding
    // tests/data/fuzz_regressions/index/shard_name_too_long).
    std::error_code sec;
    if (!fs::exists(spath, sec)) {
      throw Error(ErrorKind::kInput,
                  "index maps tensor '" + names.front() + "'" +
                      (names.size() > 1 ? " (and " + std::to_string(names.size() - 1) + " more)"
                                        : std::string()) +
                      " to shard '" + shard + "', but " + spath + " does not exist",
                  index + ": shard '" + shard + "'", "the model download is incomplete?");
    }
    const size_t fi = mf.files_.size();
    mf.files_.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::open(spath)));
    const SafetensorsFile& sf = *mf.files_.back();
    for (const std::string& name : names) {
      const TensorInfo* t = sf.find(name);
      if (!t)
        throw Error(ErrorKind::kInput,
                    "tensor '" + name + "' is listed in index " + index + " under shard '" + shard +
                        "', but " + spath + " does not contain it",
                    index + ": tensor '" + name + "'");
      mf.loc_.emplace(name, Loc{fi, static_cast<size_t>(t - sf.tensors().data())});
    }
    for (const TensorInfo& t : sf.tensors()) {
      auto w = wm.find(t.name);
      if (w == wm.end())
        throw Error(ErrorKind::kInput,
                    "tensor '" + t.name + "' is in shard " + spath + " but not listed in index " +
                        index,
                    index + ": tensor '" + t.name + "'");
      if (w->get<std::string>() != shard)
        throw Error(ErrorKind::kInput,
                    "tensor '" + t.name + "' is in shard " + spath + " but index " + index +
                        " maps it to shard '" + w->get<std::string>() + "'",
                    index + ": tensor '" + t.name + "'");
    }
  }
  return mf;
}

const ModelFiles::Loc& ModelFiles::locate(const std::string& name) const {
  auto it = loc_.find(name);
  if (it == loc_.end())
    throw Error(ErrorKind::kInput, "no tensor named '" + name + "' in the model",
                (index_path_.empty() ? (files_.empty() ? dir_ : files_[0]->path()) : index_path_) +
                    ": tensor '" + name + "'");
  return it->second;
}

bool ModelFiles::has(const std::string& name) const { return loc_.count(name) != 0; }

const TensorInfo& ModelFiles::info(const std::string& name) const {
  const Loc& l = locate(name);
  return files_[l.file]->tensors()[l.tensor];
}

std::vector<std::string> ModelFiles::names() const {
  std::vector<std::string> r;
  r.reserve(loc_.size());
  for (const auto& kv : loc_) r.push_back(kv.first);
  std::sort(r.begin(), r.end());
  return r;
}

void ModelFiles::read_f32_into(const std::string& name, std::vector<float>& out) const {
  const auto& l = locate(name);
  files_[l.file]->read_f32_into(files_[l.file]->tensors()[l.tensor], out);
}

std::vector<float> ModelFiles::read_f32(const std::string& name) const {
  const Loc& l = locate(name);
  return files_[l.file]->read_f32(files_[l.file]->tensors()[l.tensor]);
}

const uint8_t* ModelFiles::data(const std::string& name) const {
  const Loc& l = locate(name);
  return files_[l.file]->data(files_[l.file]->tensors()[l.tensor]);
}

const SafetensorsFile& ModelFiles::file_of(const std::string& name) const {
  return *files_[locate(name).file];
}

uint64_t ModelFiles::total_bytes() const {
  uint64_t s = 0;
  for (const auto& f : files_)
    for (const auto& t : f->tensors()) s += t.nbytes;
  return s;
}

}  // namespace fp4q::io
