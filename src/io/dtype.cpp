// fp4q/io/dtype.cpp — the one table of safetensors dtypes.
#include "fp4q/io/dtype.h"

#include <array>
#include <cstring>

#include "fp4q/core/error.h"

namespace fp4q::io {
namespace {

struct DTypeRow {
  DType dtype;
  const char* tag;  // safetensors header tag
  size_t size;      // bytes per element
};

// Order = enum order (checked by dtype_row()).
constexpr DTypeRow kTable[] = {
    {DType::kF32, "F32", 4},         {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2},       {DType::kF64, "F64", 8},
    {DType::kI8, "I8", 1},           {DType::kU8, "U8", 1},
    {DType::kI16, "I16", 2},         {DType::kU16, "U16", 2},
    {DType::kI32, "I32", 4},         {DType::kU32, "U32", 4},
    {DType::kI64, "I64", 8},         {DType::kU64, "U64", 8},
    {DType::kBool, "BOOL", 1},       {DType::kF8_E4M3, "F8_E4M3", 1},
    {DType::kF8_E5M2, "F8_E5M2", 1}, {DType::kF8_E8M0, "F8_E8M0", 1},
};
constexpr size_t kCount = sizeof(kTable) / sizeof(kTable[0]);

const DTypeRow& dtype_row(DType d) {
  auto i = static_cast<size_t>(d);
  if (i >= kCount || kTable[i].dtype != d)
    throw Error(ErrorKind::kInternal, "unknown DType value " + std::to_string(static_cast<int>(d)),
                "io::dtype");
  return kTable[i];
}

}  // namespace

const DType* all_dtypes(size_t* count) {
  static const std::array<DType, kCount> all = [] {
    std::array<DType, kCount> a{};
    for (size_t i = 0; i < kCount; ++i) a[i] = kTable[i].dtype;
    return a;
  }();
  if (count) *count = kCount;
  return all.data();
}

size_t dtype_size(DType d) { return dtype_row(d).size; }
const char* dtype_tag(DType d) { return dtype_row(d).tag; }

std::optional<DType> parse_dtype(const std::string& tag) {
  for (const auto& r : kTable)
    if (tag == r.tag) return r.dtype;
  return std::nullopt;
}

}  // namespace fp4q::io
