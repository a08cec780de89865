// fp4q/calib/dataset.h — deterministic calibration samples from a token stream.
//
// A calibration set is `n` sequences of exactly `seqlen` token ids. Each sequence starts with
// BOS when `bos >= 0` (as a real document start would) followed by seqlen-1 consecutive tokens
// of the stream taken at a random offset. Offsets come from std::mt19937_64 seeded with `seed`
// and a uniform integer draw implemented here (not std::uniform_int_distribution, whose output
// differs between standard libraries), so the same seed gives the same set everywhere.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fp4q::calib {

struct CalibSet {
  int64_t seqlen = 0;
  std::vector<std::vector<int32_t>> samples;  // samples.size() sequences of seqlen ids
  std::vector<int64_t> offsets;               // start offset of each sample in the stream
};

// stream: tokenised text WITHOUT special tokens. Throws Error(kInput) naming `where` when the
// stream is shorter than one sample (with the counts and a hint to lower --seqlen).
CalibSet sample_windows(const std::vector<int32_t>& stream, int64_t n, int64_t seqlen,
                        uint64_t seed, int32_t bos, const std::string& where);

}  // namespace fp4q::calib
