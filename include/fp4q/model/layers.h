// fp4q/model/layers.h — the building blocks of a decoder layer as plain functions on float32
// row-major matrices, each fast version with a scalar `_ref` twin (double accumulation) for tests.
//
// Conventions: a "[R x C] row-major" matrix has element (r, c) at p[r * ld + c] where ld (the row
// stride, in floats) is C unless a parameter says otherwise. Token t of a sequence is row t.
// Position of token t is t (one sequence, positions 0..T-1).
//
// Numerics follow transformers' float32 eager path: RMSNorm y = w * (x * rsqrt(mean(x^2) + eps));
// RoPE angles pos * inv_freq rounded to float32 (as HF's float32 matmul does), cos/sin of that
// angle; attention softmax(QK^T * head_dim^-0.5 + causal mask) V with float32 scores.
// All fast functions give results independent of the thread count: work is split into fixed
// blocks (never depending on the thread count), each computed by one thread in a fixed order;
// BLAS (cblas_sgemm) is called single-threaded per block, because OpenBLAS's own threading
// changes low bits with the thread count. OpenBLAS is switched to 1 thread for the duration of
// each call and restored afterwards (do not run these concurrently with other BLAS users).
#pragma once

#include <cstdint>
#include <vector>

#include "fp4q/model/config.h"

namespace fp4q::model {

// ---- Linear ---------------------------------------------------------------------------------
// y[T x out] = x[T x in] * W^T (+ bias[out]); W is [out x in] row-major (HF nn.Linear layout).
// bias may be nullptr. Fixed 256 x 512 output blocks, single-threaded cblas_sgemm each, OpenMP
// over blocks.
void linear(const float* x, int64_t T, int64_t in, const float* W, int64_t out, const float* bias,
            float* y);
void linear_ref(const float* x, int64_t T, int64_t in, const float* W, int64_t out,
                const float* bias, float* y);
// The same product with bf16 inputs (the `--compute bf16` calibration matmuls): y = bf16(x) ·
// bf16(W)ᵀ with float32 accumulation in linalg::gemm_bf16_nt's fixed order (linalg/bf16_gemm.h:
// RNE rounding of x and W, exact products, float32 sums, float32 output), then + bias in
// float32. Needs AVX512_BF16 (Error(kUsage) naming the feature otherwise). Bits independent of
// the thread count.
void linear_bf16(const float* x, int64_t T, int64_t in, const float* W, int64_t out,
                 const float* bias, float* y);

// ---- RMSNorm --------------------------------------------------------------------------------
// y[rows x n] = w[n] * x / sqrt(mean_j x[r, j]^2 + eps), per row. x and y may alias. x rows are
// `ld` floats apart (ld >= n; y uses the same stride).
void rms_norm(const float* x, int64_t rows, int64_t n, int64_t ld, const float* w, double eps,
              float* y);
void rms_norm_ref(const float* x, int64_t rows, int64_t n, int64_t ld, const float* w, double eps,
                  float* y);

// ---- RoPE -----------------------------------------------------------------------------------
// inv_freq[rotary_dim/2] as transformers computes it in float32, d = c.rotary_dim() (head_dim
// unless partial_rotary_factor): default 1 / theta^(2i/d); llama3: the smooth low/high-frequency
// rescaling of _compute_llama3_parameters; linear: default / factor; longrope: 1 / (ext[i] *
// theta^(2i/d)) with ext = long_factor when long_context (sequence longer than
// original_max_position_embeddings), else short_factor.
std::vector<float> rope_inv_freq(const ModelConfig& c, bool long_context = false);
// The same frequencies from the closed-form formula in double precision (test reference).
std::vector<double> rope_inv_freq_ref(const ModelConfig& c, bool long_context = false);

// cos/sin tables for positions 0..T-1: cos[t * half + i] = cos(float(t * inv_freq[i])) * scale
// (float32 product; scale = longrope's attention factor, else 1), half = rotary_dim / 2.
struct RopeTable {
  int64_t T = 0;
  int half = 0;
  std::vector<float> cos, sin;  // [T x half]
};
RopeTable make_rope_table(const std::vector<float>& inv_freq, int64_t T, float scale = 1.0f);

// In-place rotary embedding of x[T x n_heads*head_dim] (row stride ld), rotate_half convention
// over the first 2*half dimensions of each head (the rest pass through, as Phi-3's partial
// rotary): for each head and i < half: (a, b) = (x[i], x[i+half]) ->
//   (a*cos - b*sin, b*cos + a*sin), with the angle of position t. Requires table.T >= T and
//   2 * table.half <= head_dim.
void apply_rope(float* x, int64_t T, int n_heads, int head_dim, int64_t ld, const RopeTable& table);
// The same for `rows` rows holding consecutive sequences of `seq_len` tokens each (row r has
// position r % seq_len); requires table.T >= seq_len. Identical bits to apply_rope per sequence.
void apply_rope_batched(float* x, int64_t rows, int64_t seq_len, int n_heads, int head_dim,
                        int64_t ld, const RopeTable& table);
// Reference: angles t * inv_freq[i] recomputed in double, no table; rotates the first
// 2 * inv_freq.size() dimensions of each head, cos/sin multiplied by scale.
void apply_rope_ref(float* x, int64_t T, int n_heads, int head_dim, int64_t ld,
                    const std::vector<double>& inv_freq, double scale = 1.0);

// ---- Attention ------------------------------------------------------------------------------
// Variants of the score computation (defaults = plain causal attention with head_dim^-0.5).
//   scale:   score multiplier (0 = 1/sqrt(head_dim)), applied to the float32 dot product and
//            rounded to float32 first, as transformers multiplies by a python float;
//   softcap: > 0: s = softcap * tanh(s / softcap) after scaling (Gemma attn_logit_softcapping);
//   window:  > 0: query t sees keys s with t - window < s <= t (transformers'
//            sliding_window_overlay + causal mask); 0 = every s <= t.
struct AttentionOptions {
  double scale = 0.0;
  double softcap = 0.0;
  int64_t window = 0;
};

// Causal grouped-query attention of one sequence.
//   q   [T x n_heads*head_dim]     row-major (head h = columns [h*head_dim, (h+1)*head_dim))
//   k,v [T x n_kv_heads*head_dim]  row-major; query head h uses kv head h / (n_heads/n_kv_heads)
//   out [T x n_heads*head_dim]     out[t, h] = sum_{s<=t} softmax_s(q[t,h].k[s,kv(h)] * scale) v[s,kv(h)]
// scale = 1/sqrt(head_dim). Fast: 64-row query blocks per head (keys up to the block's last
// row), sgemm for QK^T and PV, OpenMP over (head, block) items.
void attention(const float* q, const float* k, const float* v, int64_t T, int n_heads,
               int n_kv_heads, int head_dim, float* out);
// The same for n_seq independent sequences of T tokens stored back to back (q/k/v/out have
// n_seq * T rows; sequence s is rows [s*T, (s+1)*T)): one parallel region over all (sequence,
// query block, head) items. Each sequence's result is bit-identical to attention() on it alone.
void attention_batched(const float* q, const float* k, const float* v, int64_t n_seq, int64_t T,
                       int n_heads, int n_kv_heads, int head_dim, float* out);
// The same with score options (window, soft-capping, scale). A query block sees only the keys of
// its rows' windows: [max(0, r0 - window + 1), r1).
void attention_batched(const float* q, const float* k, const float* v, int64_t n_seq, int64_t T,
                       int n_heads, int n_kv_heads, int head_dim, float* out,
                       const AttentionOptions& opt);
// Scalar loops, double accumulation of scores, softmax and the weighted sum.
void attention_ref(const float* q, const float* k, const float* v, int64_t T, int n_heads,
                   int n_kv_heads, int head_dim, float* out,
                   const AttentionOptions& opt = AttentionOptions());

// ---- MLP ------------------------------------------------------------------------------------
// gate[i] = silu(gate[i]) * up[i] for i < n (silu(x) = x / (1 + exp(-x))).
void swiglu(float* gate, const float* up, int64_t n);
// gate[i] = gelu_tanh(gate[i]) * up[i], gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
// in float32, the order of PyTorch's CPU kernel for GELU(approximate="tanh").
void geglu_tanh(float* gate, const float* up, int64_t n);
// Reference of both in double: act = silu or gelu_tanh.
void glu_ref(float* gate, const float* up, int64_t n, Activation act);
// One of the two by activation.
void glu(float* gate, const float* up, int64_t n, Activation act);

// ---- Soft-capping -----------------------------------------------------------------------------
// x[i] = cap * tanh(x[i] / cap) in float32 (cap > 0), as transformers' final_logit_softcapping.
void softcap(float* x, int64_t n, double cap);

}  // namespace fp4q::model
