// src/format/quantize.cpp — whole-matrix RTN quantization, dequantization, nibble packing and
// the input checks shared by the format sources.
#include <algorithm>
#include <string>
#include <vector>

#include "detail.h"
#include "fp4q/core/error.h"
#include "fp4q/core/parallel.h"
#include "fp4q/format/format.h"

namespace fp4q::format {

namespace detail {

void check_shape(FormatId id, int64_t rows, int64_t cols, const std::string& where) {
  const int g = spec(id).group_size;
  if (rows < 0 || cols < 0 || cols % g != 0)
    throw Error(ErrorKind::kInput,
                "matrix [" + std::to_string(rows) + " x " + std::to_string(cols) +
                    "]: the column count must be a multiple of the " + spec(id).name +
                    " group size " + std::to_string(g),
                where, "this tensor cannot be quantized with this format; exclude it");
}

void check_finite(const float* w, int64_t rows, int64_t cols, const std::string& where) {
  std::vector<int64_t> bad(static_cast<size_t>(rows), -1);  // first bad column per row
  for_rows(rows, cols, [&](int64_t r) {
    const float* row = w + r * cols;
    for (int64_t c = 0; c < cols; ++c)
      if (!std::isfinite(row[c])) { bad[r] = c; return; }
  });
  for (int64_t r = 0; r < rows; ++r) {
    if (bad[r] >= 0) {
      float v = w[r * cols + bad[r]];
      throw Error(ErrorKind::kNumeric,
                  "non-finite value " + std::to_string(v) + " at row " + std::to_string(r) +
                      ", column " + std::to_string(bad[r]) + " of a [" + std::to_string(rows) +
                      " x " + std::to_string(cols) + "] matrix",
                  where, "the weights (or the GPTQ update) contain NaN/Inf");
    }
  }
}

}  // namespace detail

QuantizedMatrix quantize_rtn(const float* w, int64_t rows, int64_t cols, const GroupScales& scales,
                             const std::string& where) {
  const FormatId id = scales.format;
  detail::check_shape(id, rows, cols, where);
  const int g = spec(id).group_size;
  const int64_t groups = cols / g;
  if (scales.rows != rows || scales.groups != groups ||
      static_cast<int64_t>(scales.values.size()) != rows * groups)
    throw Error(ErrorKind::kInternal,
                "scales are [" + std::to_string(scales.rows) + " x " +
                    std::to_string(scales.groups) + "], matrix needs [" + std::to_string(rows) +
                    " x " + std::to_string(groups) + "]",
                where);
  detail::check_finite(w, rows, cols, where);
  QuantizedMatrix q;
  q.format = id;
  q.rows = rows;
  q.cols = cols;
  q.codes.assign(static_cast<size_t>(rows * cols), 0);
  q.scales = scales;
  const bool is_int = (id == FormatId::kINT4);
  detail::for_rows(rows, cols, [&](int64_t r) {
    float d;
    for (int64_t k = 0; k < groups; ++k) {
      const float s = scales.values[r * groups + k];
      const float* x = w + r * cols + k * g;
      uint8_t* c = q.codes.data() + r * cols + k * g;
      if (!(s > 0.0f)) continue;  // zero group: codes stay 0
      for (int j = 0; j < g; ++j)
        c[j] = is_int ? detail::int4_quant(x[j], s, &d) : detail::e2m1_quant(x[j], s, &d);
    }
  });
  return q;
}

void dequantize(const QuantizedMatrix& q, float* out) {
  const int g = spec(q.format).group_size;
  const int64_t groups = q.cols / g;
  detail::for_rows(q.rows, q.cols, [&](int64_t r) {
    for (int64_t c = 0; c < q.cols; ++c) {
      const int64_t i = r * q.cols + c;
      out[i] = element_decode(q.format, q.codes[i]) * q.scales.values[r * groups + c / g];
    }
  });
}

std::vector<uint8_t> pack_nibbles(const uint8_t* codes, int64_t rows, int64_t cols) {
  if (rows < 0 || cols < 0 || cols % 2 != 0)
    throw Error(ErrorKind::kInput,
                "cannot pack [" + std::to_string(rows) + " x " + std::to_string(cols) +
                    "] 4-bit codes: the column count must be even");
  const int64_t half = cols / 2;
  std::vector<uint8_t> out(static_cast<size_t>(rows * half));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < half; ++j) {
      const uint8_t lo = codes[r * cols + 2 * j] & 0xF, hi = codes[r * cols + 2 * j + 1] & 0xF;
      out[r * half + j] = static_cast<uint8_t>(lo | (hi << 4));  // element 2j in the low nibble
    }
  return out;
}

std::vector<uint8_t> unpack_nibbles(const uint8_t* packed, int64_t rows, int64_t cols) {
  if (rows < 0 || cols < 0 || cols % 2 != 0)
    throw Error(ErrorKind::kInput,
                "cannot unpack to [" + std::to_string(rows) + " x " + std::to_string(cols) +
                    "] 4-bit codes: the column count must be even");
  const int64_t half = cols / 2;
  std::vector<uint8_t> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < half; ++j) {
      const uint8_t b = packed[r * half + j];
      out[r * cols + 2 * j] = b & 0xF;
      out[r * cols + 2 * j + 1] = static_cast<uint8_t>(b >> 4);
    }
  return out;
}

}  // namespace fp4q::format
