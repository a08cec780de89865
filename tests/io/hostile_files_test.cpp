// io robustness against files that change or misbehave under fp4q (issue 11):
//   * SafetensorsFile::from_bytes (the fuzzers' entry point) parses exactly like open();
//   * a file truncated after open() gives Error(kIo) naming it from read_f32 and data(),
//     never SIGBUS; a file replaced by rename keeps its old contents (the fd is kept);
//   * a FIFO or a directory with a .safetensors name is refused without blocking.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>

#include "fp4q/core/error.h"
#include "fp4q/io/safetensors.h"
#include "io_test_util.h"

namespace fs = std::filesystem;
using fp4q::Error;
using fp4q::ErrorKind;
using fp4q::io::SafetensorsFile;
using fp4q::io::testing::read_bytes;
using fp4q::io::testing::ScratchDir;

namespace {

const std::string kModel = std::string(FP4Q_DATA_DIR) + "/models/stories260K/model.safetensors";
const std::string kBad = std::string(FP4Q_TEST_DATA_DIR) + "/bad_safetensors";

ErrorKind kind_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.kind();
  }
  return static_cast<ErrorKind>(0);
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(HostileFiles, FromBytesParsesLikeOpen) {
  const SafetensorsFile a = SafetensorsFile::open(kModel);
  const SafetensorsFile b = SafetensorsFile::from_bytes("mem", read_bytes(kModel));
  ASSERT_EQ(a.tensors().size(), b.tensors().size());
  EXPECT_EQ(a.header_size(), b.header_size());
  EXPECT_EQ(a.metadata(), b.metadata());
  for (size_t i = 0; i < a.tensors().size(); ++i) {
    const auto& ta = a.tensors()[i];
    const auto& tb = b.tensors()[i];
    EXPECT_EQ(ta.name, tb.name);
    EXPECT_EQ(ta.offset, tb.offset);
    EXPECT_EQ(ta.shape, tb.shape);
    EXPECT_EQ(0, std::memcmp(a.data(ta), b.data(tb), ta.nbytes)) << ta.name;
    EXPECT_EQ(a.read_f32(ta), b.read_f32(tb)) << ta.name;
  }
  // Moving an in-memory file keeps its buffer valid.
  SafetensorsFile c = SafetensorsFile::from_bytes("mem", read_bytes(kModel));
  const auto first = c.read_f32(c.tensors().front());
  SafetensorsFile d = std::move(c);
  EXPECT_EQ(d.read_f32(d.tensors().front()), first);
  // Every bad fixture fails the same way in memory as on disk.
  for (const auto& e : fs::directory_iterator(kBad)) {
    if (!e.is_regular_file()) continue;
    const std::string p = e.path().string();
    if (p.find("good") != std::string::npos) continue;
    const std::string on_disk = message_of([&] { SafetensorsFile::open(p); });
    const std::string in_mem = message_of([&] { SafetensorsFile::from_bytes(p, read_bytes(p)); });
    EXPECT_EQ(on_disk, in_mem) << p;
    EXPECT_NE(on_disk, "(no error)") << p;
  }
}

TEST(HostileFiles, TruncatedAfterOpenIsAnIoErrorNotSigbus) {
  ScratchDir dir;
  const std::string p = dir / "model.safetensors";
  fs::copy_file(kModel, p);
  const SafetensorsFile f = SafetensorsFile::open(p);
  // Cut the file right after the first tensor (tensors() is sorted by offset); the last
  // tensor then lies entirely beyond the end.
  const fp4q::io::TensorInfo* early = &f.tensors().front();
  const fp4q::io::TensorInfo* big = &f.tensors().back();
  const uint64_t cut = 8 + f.header_size() + early->offset + early->nbytes;
  ASSERT_GT(early->nbytes, 0u);
  ASSERT_GE(8 + f.header_size() + big->offset, cut);
  const auto before = f.read_f32(*big);
  ASSERT_EQ(::truncate(p.c_str(), static_cast<off_t>(cut)), 0);
  for (int access = 0; access < 2; ++access) {
    try {
      if (access == 0) (void)f.read_f32(*big);
      else (void)f.data(*big);
      FAIL() << "expected an I/O error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kIo);
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
    }
  }
  // Tensors still inside the file remain readable.
  EXPECT_EQ(f.read_f32(*early).size(), static_cast<size_t>(early->numel()));
  // Replaced by rename: the open file keeps its contents.
  ScratchDir dir2;
  const std::string q = dir2 / "model.safetensors";
  fs::copy_file(kModel, q);
  const SafetensorsFile g = SafetensorsFile::open(q);
  std::ofstream(q + ".new") << "something else";
  fs::rename(q + ".new", q);
  const fp4q::io::TensorInfo* gb = g.find(big->name);
  ASSERT_NE(gb, nullptr);
  EXPECT_EQ(g.read_f32(*gb), before);
}

TEST(HostileFiles, FifoAndDirectoryAreRefusedWithoutBlocking) {
  ScratchDir dir;
  const std::string fifo = dir / "fifo.safetensors";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  // Opening a FIFO for reading blocks until a writer appears unless O_NONBLOCK is used; run it
  // in a thread so a regression fails the test instead of hanging it.
  auto fut = std::async(std::launch::async, [&] { return kind_of([&] { SafetensorsFile::open(fifo); }); });
  if (fut.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
    // Unblock the stuck open by opening the write end, then fail.
    std::ofstream unblock(fifo);
    FAIL() << "SafetensorsFile::open blocked on a FIFO";
  }
  EXPECT_EQ(fut.get(), ErrorKind::kInput);
  const std::string d = dir / "dir.safetensors";
  fs::create_directory(d);
  EXPECT_EQ(kind_of([&] { SafetensorsFile::open(d); }), ErrorKind::kInput);
}
