// tests/io/writer_test.cpp — ShardedWriter (exact header bytes, alignment, every dtype and shape,
// sharding + index), AtomicDir (no output without commit, refuse / replace existing) and
// write_file_atomic.
#include <gtest/gtest.h>

#include <sys/resource.h>

#include <csignal>
#include <cstring>
#include <fstream>
#include <random>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "fp4q/core/error.h"
#include "fp4q/core/half.h"
#include "fp4q/io/safetensors.h"
#include "fp4q/io/writer.h"
#include "io_test_util.h"

namespace fp4q::io {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::list_dir;
using testing::read_bytes;
using testing::read_u64_le;
using testing::ScratchDir;

const std::string kModelDir = std::string(FP4Q_DATA_DIR) + "/models/stories260K";

std::string read_text(const std::string& p) {
  auto b = read_bytes(p);
  return std::string(b.begin(), b.end());
}

// The complete bytes of a tiny file, written by hand from the safetensors spec.
TEST(ShardedWriter, TinyFileBytesMatchHandWrittenLayout) {
  ScratchDir d;
  ShardedWriter w(d.path(), 0, json{{"format", "pt"}});
  const float a[2] = {1.0f, -2.0f};
  w.add(make_tensor_from_f32("a", {2}, a, DType::kF32));
  const uint8_t b[3] = {7, 8, 9};
  w.add_raw("b", DType::kU8, {3}, b, 3);
  EXPECT_EQ(w.finish(), std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(list_dir(d.path()), std::vector<std::string>{"model.safetensors"});  // no temp files

  const std::string header =
      R"({"__metadata__":{"format":"pt"},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"U8","shape":[3],"data_offsets":[8,11]}})"
      "      ";  // 138 bytes + 6 spaces = 144, so the data section starts at 152 = 19 * 8
  std::vector<uint8_t> expect = {144, 0, 0, 0, 0, 0, 0, 0};
  expect.insert(expect.end(), header.begin(), header.end());
  const uint8_t data[11] = {0x00, 0x00, 0x80, 0x3f,  // 1.0f little-endian
                            0x00, 0x00, 0x00, 0xc0,  // -2.0f
                            7, 8, 9};
  expect.insert(expect.end(), data, data + 11);
  EXPECT_EQ(read_bytes(d / "model.safetensors"), expect);
}

TEST(ShardedWriter, HeaderPaddedToEightBytes) {
  for (int len = 1; len <= 17; ++len) {
    ScratchDir d;
    ShardedWriter w(d.path(), 0, json::object());
    const uint8_t x = 1;
    w.add_raw(std::string(static_cast<size_t>(len), 'n'), DType::kU8, {1}, &x, 1);
    w.finish();
    const auto bytes = read_bytes(d / "model.safetensors");
    const uint64_t n = read_u64_le(bytes.data());
    EXPECT_EQ((8 + n) % 8, 0u) << len;
    EXPECT_EQ(bytes.size(), 8 + n + 1);
    // The padding is spaces after the closing brace.
    std::string h(bytes.begin() + 8, bytes.begin() + 8 + static_cast<long>(n));
    const size_t close = h.find_last_of('}');
    EXPECT_EQ(h.find_first_not_of(' ', close + 1), std::string::npos);
    EXPECT_LT(h.size() - close - 1, 8u);
  }
}

// Random bytes for every dtype and a set of shapes (scalar, empty, 1-D, N-D) round-trip.
TEST(ShardedWriter, RoundTripEveryDTypeAndShape) {
  ScratchDir d;
  std::mt19937 rng(12345);
  size_t ndt = 0;
  const DType* dts = all_dtypes(&ndt);
  const std::vector<std::vector<int64_t>> shapes = {{}, {0}, {3}, {2, 3}, {2, 0, 4}, {1, 1, 1, 5}};
  struct Expect {
    std::string name;
    DType dt;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<Expect> expect;
  {
    ShardedWriter w(d.path(), 0, json{{"format", "pt"}, {"producer", "fp4q-test"}});
    for (size_t i = 0; i < ndt; ++i) {
      for (size_t s = 0; s < shapes.size(); ++s) {
        int64_t n = 1;
        for (auto x : shapes[s]) n *= x;
        std::vector<uint8_t> b(static_cast<size_t>(n) * dtype_size(dts[i]));
        for (auto& x : b) x = static_cast<uint8_t>(rng());
        Expect e{std::string("t.") + dtype_tag(dts[i]) + "." + std::to_string(s), dts[i], shapes[s], b};
        w.add(OutTensor{e.name, e.dt, e.shape, e.bytes});
        expect.push_back(std::move(e));
      }
    }
    EXPECT_EQ(w.num_tensors(), expect.size());
    w.finish();
  }
  SafetensorsFile f = SafetensorsFile::open(d / "model.safetensors");
  EXPECT_EQ(f.metadata(), (json{{"format", "pt"}, {"producer", "fp4q-test"}}));
  ASSERT_EQ(f.tensors().size(), expect.size());
  uint64_t prev_end = 0;
  for (const auto& e : expect) {
    const TensorInfo* t = f.find(e.name);
    ASSERT_NE(t, nullptr) << e.name;
    EXPECT_EQ(t->dtype, e.dt) << e.name;
    EXPECT_EQ(t->shape, e.shape) << e.name;
    EXPECT_EQ(t->nbytes, e.bytes.size()) << e.name;
    EXPECT_EQ(t->offset, prev_end) << "laid out back to back in add() order: " << e.name;
    prev_end = t->offset + t->nbytes;
    EXPECT_EQ(std::vector<uint8_t>(f.data(*t), f.data(*t) + t->nbytes), e.bytes) << e.name;
  }
  EXPECT_EQ(f.file_size(), 8 + f.header_size() + prev_end);
}

TEST(ShardedWriter, ShardsBySizeWithIndex) {
  ScratchDir d;
  // Data sizes 40, 40, 40, 200, 10 with a 100-byte limit -> shards {a,b} {c} {big} {e}.
  const std::vector<std::pair<std::string, int64_t>> ts = {
      {"a", 10}, {"b", 10}, {"c", 10}, {"big", 50}, {"e", 1}};
  std::vector<std::vector<float>> vals;
  std::vector<std::string> files;
  {
    ShardedWriter w(d.path(), 100, json{{"format", "pt"}});
    float base = 0;
    for (const auto& [name, n] : ts) {
      std::vector<float> v(static_cast<size_t>(n));
      for (auto& x : v) x = base++;
      w.add(make_tensor_from_f32(name, {n}, v.data(), DType::kF32));
      vals.push_back(v);
    }
    EXPECT_EQ(w.total_bytes(), 4u * (10 + 10 + 10 + 50 + 1));
    files = w.finish();
  }
  const std::vector<std::string> expect_files = {
      "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
      "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors",
      "model.safetensors.index.json"};
  EXPECT_EQ(files, expect_files);
  auto listed = list_dir(d.path());
  EXPECT_EQ(listed, (std::vector<std::string>{expect_files[0], expect_files[1], expect_files[2],
                                              expect_files[3], expect_files[4]}));
  const json idx = json::parse(read_text(d / "model.safetensors.index.json"));
  const json want = {{"metadata", {{"total_size", 324}}},
                     {"weight_map",
                      {{"a", expect_files[0]},
                       {"b", expect_files[0]},
                       {"c", expect_files[1]},
                       {"big", expect_files[2]},
                       {"e", expect_files[3]}}}};
  EXPECT_EQ(idx, want);
  EXPECT_EQ(SafetensorsFile::open(d / expect_files[0]).tensors().size(), 2u);
  EXPECT_EQ(SafetensorsFile::open(d / expect_files[2]).metadata(), json({{"format", "pt"}}));

  ModelFiles m = ModelFiles::open(d.path());
  EXPECT_EQ(m.files().size(), 4u);
  for (size_t i = 0; i < ts.size(); ++i) EXPECT_EQ(m.read_f32(ts[i].first), vals[i]) << ts[i].first;
}

TEST(ShardedWriter, RejectsInvalidTensors) {
  ScratchDir d;
  ShardedWriter w(d.path(), 0, json::object());
  const uint8_t buf[16] = {};
  w.add_raw("x", DType::kF32, {2}, buf, 8);
  auto expect_err = [&](auto&& fn, const std::string& needle) {
    try {
      fn();
      ADD_FAILURE() << "expected Error containing " << needle;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInput);
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_err([&] { w.add_raw("x", DType::kF32, {2}, buf, 8); }, "duplicate");
  expect_err([&] { w.add_raw("y", DType::kF32, {3}, buf, 8); }, "needs 12 bytes, got 8");
  expect_err([&] { w.add_raw("z", DType::kU8, {-1}, buf, 0); }, "negative");
  expect_err([&] { w.add_raw("", DType::kU8, {1}, buf, 1); }, "empty");
  expect_err([&] { w.add_raw("__metadata__", DType::kU8, {1}, buf, 1); }, "reserved");
  expect_err([&] { w.add_raw("bad\xff", DType::kU8, {1}, buf, 1); }, "UTF-8");
  expect_err([&] { w.add_raw("huge", DType::kU8, {1LL << 40, 1LL << 40}, buf, 1); }, "overflow");
  expect_err([&] { make_tensor_from_f32("q", {1}, reinterpret_cast<const float*>(buf), DType::kU8); }, "F32/F16/BF16");
  w.finish();
  SafetensorsFile f = SafetensorsFile::open(d / "model.safetensors");
  EXPECT_EQ(f.tensors().size(), 1u);  // rejected tensors left no trace
  EXPECT_THROW(ShardedWriter(d.path(), 0, json{{"format", 1}}), Error);
  EXPECT_THROW(ShardedWriter(d / "missing_dir", 0, json::object()), Error);
}

TEST(ShardedWriter, F16AndBF16ConversionsRoundToNearestEven) {
  ScratchDir d;
  const std::vector<float> v = {1.0f, 1.0f + 1.0f / 2048, 65504.0f, 70000.0f, -0.0f, 3.14159265f,
                                1.0f + 1.0f / 256 + 1.0f / 65536};
  {
    ShardedWriter w(d.path(), 0, json::object());
    w.add(make_tensor_from_f32("h", {7}, v.data(), DType::kF16));
    w.add(make_tensor_from_f32("b", {7}, v.data(), DType::kBF16));
    w.finish();
  }
  SafetensorsFile f = SafetensorsFile::open(d / "model.safetensors");
  const auto h = f.read_f32("h"), b = f.read_f32("b");
  EXPECT_EQ(h[0], 1.0f);
  EXPECT_EQ(h[1], 1.0f);  // tie -> even
  EXPECT_EQ(h[2], 65504.0f);
  EXPECT_TRUE(std::isinf(h[3]));
  EXPECT_TRUE(std::signbit(h[4]));
  EXPECT_EQ(h[5], 3.140625f);
  EXPECT_EQ(b[5], 3.140625f);
  EXPECT_EQ(b[6], 1.0f + 1.0f / 128);  // above the tie -> rounds up
}

TEST(ShardedWriter, EmptyWriterAndStaleIndex) {
  ScratchDir d;
  {
    std::ofstream(d / "model.safetensors.index.json") << "{}";
    ShardedWriter w(d.path(), 0, json{{"format", "pt"}});
    EXPECT_EQ(w.finish(), std::vector<std::string>{"model.safetensors"});
  }
  EXPECT_FALSE(fs::exists(d / "model.safetensors.index.json"));
  SafetensorsFile f = SafetensorsFile::open(d / "model.safetensors");
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_EQ(f.metadata(), json({{"format", "pt"}}));
}

// Both layouts in one directory: ModelFiles opens model.safetensors (as transformers does); a
// multi-shard write removes a stale model.safetensors.
TEST(ShardedWriter, StaleSingleFileRemovedWhenSharding) {
  ScratchDir d;
  const uint8_t b[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  {
    ShardedWriter w(d.path(), 0, json::object());
    w.add_raw("single", DType::kU8, {8}, b, 8);
    w.finish();
  }
  const std::string keep = d / "keep.safetensors";
  fs::copy_file(d / "model.safetensors", keep);
  {
    ShardedWriter w(d.path(), 4, json::object());
    w.add_raw("x", DType::kU8, {4}, b, 4);
    w.add_raw("y", DType::kU8, {4}, b + 4, 4);
    EXPECT_EQ(w.finish().size(), 3u);
  }
  EXPECT_FALSE(fs::exists(d / "model.safetensors"));
  EXPECT_EQ(ModelFiles::open(d.path()).names(), (std::vector<std::string>{"x", "y"}));
  fs::copy_file(keep, d / "model.safetensors");
  EXPECT_EQ(ModelFiles::open(d.path()).names(), std::vector<std::string>{"single"});
  EXPECT_EQ(ModelFiles::open(d / "model.safetensors.index.json").names(),
            (std::vector<std::string>{"x", "y"}));
}

TEST(ShardedWriter, DestructorWithoutFinishLeavesNoFiles) {
  ScratchDir d;
  {
    ShardedWriter w(d.path(), 16, json::object());
    const uint8_t b[12] = {};
    w.add_raw("a", DType::kU8, {12}, b, 12);
    w.add_raw("b", DType::kU8, {12}, b, 12);  // closes shard 1
    EXPECT_FALSE(list_dir(d.path()).empty());
  }
  EXPECT_TRUE(list_dir(d.path()).empty());
}

// The bundled model through the writer (as F32 and as BF16), sharded, read back.
TEST(ShardedWriter, BundledModelRoundTrip) {
  ScratchDir d;
  ModelFiles in = ModelFiles::open(kModelDir);
  const std::string out32 = d / "f32", out16 = d / "bf16";
  fs::create_directory(out32);
  fs::create_directory(out16);
  {
    ShardedWriter w32(out32, 300'000, json{{"format", "pt"}});
    ShardedWriter w16(out16, 0, json{{"format", "pt"}});
    for (const auto& name : in.names()) {
      const TensorInfo& t = in.info(name);
      w32.add_raw(name, t.dtype, t.shape, in.data(name), t.nbytes);
      auto v = in.read_f32(name);
      w16.add(make_tensor_from_f32(name, t.shape, v.data(), DType::kBF16));
    }
    EXPECT_GT(w32.finish().size(), 2u);
    w16.finish();
  }
  ModelFiles a = ModelFiles::open(out32), b = ModelFiles::open(out16);
  EXPECT_EQ(a.names(), in.names());
  EXPECT_EQ(b.names(), in.names());
  for (const auto& name : in.names()) {
    const TensorInfo& t = in.info(name);
    EXPECT_EQ(std::memcmp(a.data(name), in.data(name), t.nbytes), 0) << name;
    EXPECT_EQ(b.info(name).dtype, DType::kBF16);
    auto v = in.read_f32(name), r = b.read_f32(name);
    ASSERT_EQ(v.size(), r.size());
    for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(r[i], bf16_to_float(float_to_bf16(v[i]))) << name;
  }
}

// ---------------------------------------------------------------------------------------------
// AtomicDir

TEST(AtomicDir, NothingAtFinalPathWithoutCommit) {
  ScratchDir d;
  const std::string final_path = d / "out";
  try {
    AtomicDir ad(final_path, false);
    EXPECT_NE(ad.path(), final_path);
    EXPECT_TRUE(fs::is_directory(ad.path()));
    EXPECT_EQ(fs::path(ad.path()).parent_path(), fs::path(d.path()));
    ShardedWriter w(ad.path(), 0, json::object());
    const uint8_t b[4] = {1, 2, 3, 4};
    w.add_raw("a", DType::kU8, {4}, b, 4);
    write_file_atomic(ad.path() + "/config.json", "{}\n");
    throw std::runtime_error("simulated failure mid-write");
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "simulated failure mid-write");
  }
  EXPECT_FALSE(fs::exists(final_path));
  EXPECT_TRUE(list_dir(d.path()).empty());  // temp dir removed too
}

TEST(AtomicDir, CommitPublishesEverything) {
  ScratchDir d;
  const std::string final_path = d / "sub/out";  // parent created on demand
  std::string tmp;
  {
    AtomicDir ad(final_path + "/", false);
    tmp = ad.path();
    ShardedWriter w(ad.path(), 0, json{{"format", "pt"}});
    const float v[3] = {1, 2, 3};
    w.add(make_tensor_from_f32("w", {3}, v, DType::kF32));
    w.finish();
    write_file_atomic(ad.path() + "/config.json", "{\"a\": 1}\n");
    EXPECT_FALSE(fs::exists(final_path));
    ad.commit();
    EXPECT_TRUE(ad.committed());
  }
  EXPECT_FALSE(fs::exists(tmp));
  EXPECT_EQ(list_dir(final_path), (std::vector<std::string>{"config.json", "model.safetensors"}));
  EXPECT_EQ(ModelFiles::open(final_path).read_f32("w"), (std::vector<float>{1, 2, 3}));
  EXPECT_EQ(list_dir(d / "sub"), std::vector<std::string>{"out"});
}

TEST(AtomicDir, RefusesExistingOutputWithoutOverwrite) {
  ScratchDir d;
  const std::string final_path = d / "out";
  fs::create_directory(final_path);
  std::ofstream(final_path + "/old.txt") << "old";
  try {
    AtomicDir ad(final_path, false);
    FAIL() << "expected refusal";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUsage);
    EXPECT_NE(std::string(e.what()).find(final_path), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("overwrite"), std::string::npos);
  }
  EXPECT_EQ(list_dir(d.path()), std::vector<std::string>{"out"});  // no temp dir was made
  EXPECT_EQ(read_text(final_path + "/old.txt"), "old");
  // A regular file at the final path is refused too.
  std::ofstream(d / "file") << "x";
  EXPECT_THROW(AtomicDir(d / "file", false), Error);
  // An existing empty directory is fine.
  fs::create_directory(d / "empty");
  {
    AtomicDir ad(d / "empty", false);
    std::ofstream(ad.path() + "/new.txt") << "new";
    ad.commit();
  }
  EXPECT_EQ(read_text(d / "empty/new.txt"), "new");
}

TEST(AtomicDir, OverwriteReplacesOnlyAtCommit) {
  ScratchDir d;
  const std::string final_path = d / "out";
  fs::create_directory(final_path);
  std::ofstream(final_path + "/old.txt") << "old";
  {
    AtomicDir ad(final_path, true);
    std::ofstream(ad.path() + "/new.txt") << "new";
    // Before commit the old output is untouched.
    EXPECT_EQ(list_dir(final_path), std::vector<std::string>{"old.txt"});
    ad.commit();
  }
  EXPECT_EQ(list_dir(final_path), std::vector<std::string>{"new.txt"});
  EXPECT_EQ(list_dir(d.path()), std::vector<std::string>{"out"});  // no .old-/.tmp- leftovers
  // Overwrite without commit keeps the old output.
  {
    AtomicDir ad(final_path, true);
    std::ofstream(ad.path() + "/newer.txt") << "newer";
  }
  EXPECT_EQ(list_dir(final_path), std::vector<std::string>{"new.txt"});
  EXPECT_EQ(list_dir(d.path()), std::vector<std::string>{"out"});
  // Overwrite a regular file with a directory.
  std::ofstream(d / "file") << "x";
  {
    AtomicDir ad(d / "file", true);
    std::ofstream(ad.path() + "/a") << "a";
    ad.commit();
  }
  EXPECT_TRUE(fs::is_directory(d / "file"));
}

TEST(AtomicDir, RejectsUnusablePaths) {
  EXPECT_THROW(AtomicDir("/", true), Error);
  EXPECT_THROW(AtomicDir(".", true), Error);
  EXPECT_THROW(AtomicDir("", true), Error);
}

TEST(WriteFileAtomic, WritesAndReplaces) {
  ScratchDir d;
  write_file_atomic(d / "c.json", "first");
  EXPECT_EQ(read_text(d / "c.json"), "first");
  write_file_atomic(d / "c.json", std::string(100000, 'x'));
  EXPECT_EQ(read_text(d / "c.json"), std::string(100000, 'x'));
  EXPECT_EQ(list_dir(d.path()), std::vector<std::string>{"c.json"});
  try {
    write_file_atomic(d / "missing/c.json", "x");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(std::string(e.what()).find("missing/c.json"), std::string::npos) << e.what();
  }
  copy_file(d / "c.json", d / "copy.json");
  EXPECT_EQ(read_text(d / "copy.json"), std::string(100000, 'x'));
  EXPECT_THROW(copy_file(d / "nope", d / "x"), Error);
}

// A failing write(2) (here: EFBIG from RLIMIT_FSIZE, which behaves like a full disk) is an
// Error(kIo) naming the file, and the writer leaves no temporary files behind.
TEST(ShardedWriter, FailedWriteIsIoErrorNamingThePath) {
  ScratchDir d;
  struct rlimit old {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit lim = old;
  lim.rlim_cur = 4096;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &lim), 0);
  std::string msg;
  ErrorKind kind = ErrorKind::kInternal;
  {
    ShardedWriter w(d.path(), 0, json::object());
    std::vector<uint8_t> big(10000, 1);
    try {
      w.add_raw("big", DType::kU8, {10000}, big.data(), big.size());
    } catch (const Error& e) {
      msg = e.what();
      kind = e.kind();
    }
  }
  ::setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_EQ(kind, ErrorKind::kIo) << msg;
  EXPECT_NE(msg.find(d.path()), std::string::npos) << msg;
  EXPECT_NE(msg.find("write failed"), std::string::npos) << msg;
  EXPECT_TRUE(list_dir(d.path()).empty());
}

}  // namespace
}  // namespace fp4q::io
