// fp4q/io/dtype.h — the safetensors element types: one table of tag, byte size and name.
//
// Tags are the strings of the safetensors header "dtype" field ("F32", "BF16", "U8", ...).
// Every type here has a whole number of bytes per element (safetensors' sub-byte F4/F6 types are
// not supported and are rejected by the reader with a clear error). Packed FP4 weights are plain
// U8 tensors (two E2M1 codes per byte, low nibble first); MXFP4 E8M0 scales are written as U8 by
// compressed-tensors; NVFP4 E4M3 scales are F8_E4M3.
// Invariant: dtype_size(d) >= 1 for every DType; parse_dtype(dtype_tag(d)) == d.
#pragma once

#include <cstddef>
#include <optional>
#include <string>

namespace fp4q::io {

enum class DType : int {
  kF32,
  kF16,
  kBF16,
  kF64,
  kI8,
  kU8,
  kI16,
  kU16,
  kI32,
  kU32,
  kI64,
  kU64,
  kBool,
  kF8_E4M3,   // float8_e4m3fn (no inf; NaN = 0x7f/0xff)
  kF8_E5M2,
  kF8_E8M0,   // OCP E8M0 scale (tag "F8_E8M0"); compressed-tensors writes E8M0 scales as U8 instead
};

// All DTypes in table order (for loops in tests and `fp4q inspect`).
const DType* all_dtypes(size_t* count);

// Bytes per element (1, 2, 4 or 8).
size_t dtype_size(DType d);

// The safetensors header tag, e.g. "F32", "BF16", "F8_E4M3".
const char* dtype_tag(DType d);

// Parses a safetensors tag (exact, case-sensitive). nullopt for unknown or unsupported tags.
std::optional<DType> parse_dtype(const std::string& tag);

// True for F32, F16, BF16 (the types read_f32 converts).
inline bool is_float_dtype(DType d) { return d == DType::kF32 || d == DType::kF16 || d == DType::kBF16; }

}  // namespace fp4q::io
