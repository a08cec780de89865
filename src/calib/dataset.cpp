#include "fp4q/calib/dataset.h"

#include <random>

#include "fp4q/core/error.h"

namespace fp4q::calib {

namespace {
// Lemire-style rejection: uniform in [0, bound) from mt19937_64 draws, identical on every platform.
uint64_t draw_below(std::mt19937_64& rng, uint64_t bound) {
  const uint64_t limit = UINT64_MAX - (UINT64_MAX % bound);
  uint64_t x;
  do {
    x = rng();
  } while (x >= limit);
  return x % bound;
}
}  // namespace

CalibSet sample_windows(const std::vector<int32_t>& stream, int64_t n, int64_t seqlen,
                        uint64_t seed, int32_t bos, const std::string& where) {
  FP4Q_CHECK(n > 0, ErrorKind::kUsage, "--samples must be positive, got " + std::to_string(n), where);
  FP4Q_CHECK(seqlen >= 2, ErrorKind::kUsage, "--seqlen must be at least 2, got " + std::to_string(seqlen), where);
  const int64_t body = bos >= 0 ? seqlen - 1 : seqlen;  // stream tokens per sample
  const int64_t len = static_cast<int64_t>(stream.size());
  if (len < body) {
    throw Error(ErrorKind::kInput,
                "calibration text has " + std::to_string(len) + " tokens, fewer than one sample of " +
                    std::to_string(body),
                where, "use a longer --calib text or a smaller --seqlen");
  }
  CalibSet set;
  set.seqlen = seqlen;
  std::mt19937_64 rng(seed);
  const uint64_t starts = static_cast<uint64_t>(len - body + 1);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t off = static_cast<int64_t>(draw_below(rng, starts));
    std::vector<int32_t> s;
    s.reserve(static_cast<size_t>(seqlen));
    if (bos >= 0) s.push_back(bos);
    s.insert(s.end(), stream.begin() + off, stream.begin() + off + body);
    set.samples.push_back(std::move(s));
    set.offsets.push_back(off);
  }
  return set;
}

}  // namespace fp4q::calib
