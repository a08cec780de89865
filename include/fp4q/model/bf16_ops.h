// fp4q/model/bf16_ops.h — the decoder-layer building blocks as a bfloat16 runtime computes them
// (transformers' eager path with dtype=torch.bfloat16), on float32 arrays holding bf16 values.
//
// Every input is bf16-exact (a float32 whose low 16 bits are zero) and every output is rounded to
// bf16 (RNE, core/compute_dtype.h) at exactly the points where transformers materialises a bf16
// tensor; arithmetic in between is float32 ("opmath"), as PyTorch's CUDA kernels do. Layouts are
// those of layers.h. Results do not depend on the thread count.
#pragma once

#include <cstdint>

#include "fp4q/model/layers.h"

namespace fp4q::model {

// LlamaRMSNorm: n = bf16(x · 1/sqrt(mean_j x_j² + eps)) in float32, y = bf16(w · n).
// x and y may alias; rows are `ld` floats apart.
void rms_norm_bf16(const float* x, int64_t rows, int64_t n, int64_t ld, const float* w, double eps,
                   float* y);

// apply_rotary_pos_emb with cos/sin cast to bf16: for each head and i < half, (a, b) = (x[i],
// x[i+half]) -> (bf16(bf16(a·c) − bf16(b·s)), bf16(bf16(b·c) + bf16(a·s))), c = bf16(cos),
// s = bf16(sin) of the angle of position r % seq_len.
void apply_rope_bf16(float* x, int64_t rows, int64_t seq_len, int n_heads, int head_dim, int64_t ld,
                     const RopeTable& table);

// eager_attention_forward in bf16 for n_seq sequences of T tokens (layout of attention_batched):
// scores = bf16(bf16(q·k) · head_dim^-0.5) (dot products accumulated in float32), causal mask,
// softmax over the row in float32 rounded to bf16, out = bf16(Σ p·v) accumulated in float32.
void attention_bf16(const float* q, const float* k, const float* v, int64_t n_seq, int64_t T, int n_heads,
                    int n_kv_heads, int head_dim, float* out);

// LlamaMLP's act_fn(gate) * up: gate[i] = bf16(bf16(silu(gate[i])) · up[i]).
void swiglu_bf16(float* gate, const float* up, int64_t n);

}  // namespace fp4q::model
