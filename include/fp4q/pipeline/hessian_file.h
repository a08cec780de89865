// fp4q/pipeline/hessian_file.h — precomputed Hessians (`fp4q hessians` writes, `--hessians` reads).
//
// A safetensors file with, per input group of each decoder layer:
//   "<module>.hessian"          F32 [in, in]  H = 2/N · Σ x xᵀ of the UNROTATED inputs (symmetric)
//   "<module>.hessian_samples"  I64 [1]       N, the number of calibration sequences
// <module> is the first Linear of the group that reads that input: self_attn.q_proj (shared by
// q/k/v), self_attn.o_proj, mlp.gate_proj (shared by gate/up) and mlp.down_proj, e.g.
// "model.layers.3.mlp.gate_proj.hessian". A reader looking up k_proj falls back to q_proj, and
// up_proj to gate_proj. __metadata__ {"format": "fp4q-hessians", "version": "1"}.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fp4q/io/safetensors.h"

namespace fp4q::pipeline {

class HessianFile {
 public:
  static HessianFile open(const std::string& path);
  // The same checks on an already parsed file (e.g. io::SafetensorsFile::from_bytes, fuzzing).
  static HessianFile from_safetensors(io::SafetensorsFile f);
  // H [in x in] for the module (or its group's first module); throws Error(kInput) naming the
  // file and module when missing, of the wrong shape, with a sample count N < 1 or with a
  // non-finite entry or negative diagonal. *samples receives N.
  std::vector<float> read(const std::string& module, int64_t in, int64_t* samples) const;

 private:
  explicit HessianFile(io::SafetensorsFile f) : f_(std::move(f)) {}
  io::SafetensorsFile f_;
};

// The module name under which a module's Hessian is stored (q/k/v -> q_proj, gate/up -> gate_proj).
std::string hessian_key_module(const std::string& module);

}  // namespace fp4q::pipeline
