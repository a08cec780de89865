#include "fp4q/pipeline/act_quant.h"

#include <vector>

#include "fp4q/core/error.h"
#include "fp4q/core/half.h"
#include "fp4q/transform/hadamard.h"

namespace fp4q::pipeline {

void apply_input_transform(const InputTransform& t, float* x, int64_t rows, int64_t cols) {
  if (t.hadamard > 1) transform::hadamard_rows(x, rows, cols, t.hadamard);
  if (!t.quantize) return;
  if (format::spec(t.format).element != format::ElementType::kE2M1)
    throw Error(ErrorKind::kUsage, "activation quantization is defined for nvfp4 and mxfp4 only",
                "--activations");
  const float gs = format::spec(t.format).has_global_scale ? t.global_scale : 0.0f;
  const auto scales =
      format::choose_scales(t.format, x, rows, cols, format::ScaleMethod::kAbsmax, gs, "activations");
  const auto q = format::quantize_rtn(x, rows, cols, scales);
  format::dequantize(q, x);
}

float activation_global_scale(float amax) {
  if (!(amax > 0)) return 1.0f;
  return bf16_round_down(2688.0f / amax);
}

}  // namespace fp4q::pipeline
