// fp4q/model/model.h — float32 forward pass of a Hugging Face decoder model (config.h lists the
// architectures), one decoder layer at a time, with a hook on the input of every linear layer.
//
// Memory model: Model::open keeps only the embedding matrix, the final norm and lm_head (or
// nothing extra when tied) in memory as float32, plus the memory-mapped safetensors files.
// Decoder layers are converted to float32 on demand (load_layer), so a caller can hold one layer
// at a time. Stored bf16/fp16/fp32 weights are widened exactly to float32; all arithmetic is
// float32 (reductions that feed a single value, like RMSNorm's mean and softmax sums, in double).
//
// Tensor names read (HF layout, all row-major):
//   model.embed_tokens.weight                      [vocab x hidden] (Gemma-3: times sqrt(hidden))
//   model.layers.L.input_layernorm.weight          [hidden]
//   model.layers.L.self_attn.{q,k,v,o}_proj.weight q: [n_heads*head_dim x hidden],
//                                                  k,v: [n_kv_heads*head_dim x hidden],
//                                                  o: [hidden x n_heads*head_dim]
//   model.layers.L.self_attn.{q,k,v}_proj.bias     Qwen2 only, [out]
//   model.layers.L.self_attn.{q,k}_norm.weight     Qwen3, Qwen3-MoE, Gemma-3: [head_dim]
//   model.layers.L.post_attention_layernorm.weight [hidden]
//   model.layers.L.mlp.{gate,up}_proj.weight       [intermediate x hidden]
//   model.layers.L.mlp.down_proj.weight            [hidden x intermediate]
//   model.norm.weight                              [hidden]
//   lm_head.weight                                 [vocab x hidden] (absent when tied)
// Architecture-specific (config.h):
//   Phi-3:  self_attn.qkv_proj.weight [q_dim + 2 kv_dim x hidden] instead of q/k/v_proj,
//           mlp.gate_up_proj.weight [2 intermediate x hidden] instead of gate/up_proj
//   Gemma-3: model.layers.L.{pre,post}_feedforward_layernorm.weight [hidden]
//   MoE layers (config.is_moe_layer(L)), instead of the dense mlp.*:
//     Qwen3-MoE: mlp.gate.weight [n_experts x hidden] (router),
//                mlp.experts.E.{gate,up}_proj.weight [moe_intermediate x hidden],
//                mlp.experts.E.down_proj.weight [hidden x moe_intermediate]
//     Mixtral:   block_sparse_moe.gate.weight (router), block_sparse_moe.experts.E.{w1,w3}.weight
//                (gate, up), block_sparse_moe.experts.E.w2.weight (down)
//   These per-expert 2-D tensors are what published checkpoints hold and what transformers 5
//   writes (save_pretrained reverts its in-memory fused 3-D experts to them). A checkpoint with
//   fused 3-D experts (mlp.experts.gate_up_proj [E x 2I x H]) is refused naming the tensor.
// Model::open checks that all of them exist with these shapes and float dtypes (F32/F16/BF16).
//
// Thread safety: a Model is immutable after open (the RoPE table cache is mutex-protected), so
// const methods may be called concurrently; layer_forward itself uses OpenMP/BLAS threads.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "fp4q/core/compute_dtype.h"
#include "fp4q/io/safetensors.h"
#include "fp4q/model/config.h"
#include "fp4q/model/layers.h"
#include "fp4q/model/moe.h"

namespace fp4q::model {

// The 7 linear layers of a decoder layer, in this fixed order (index = static_cast<int>(kind)).
// Fused checkpoints (Phi-3) store q/k/v as one Linear held in kQ (rows q, then k, then v) and
// gate/up as one held in kGate (rows gate, then up); kK, kV, kUp are then empty.
enum class LinearKind : int { kQ = 0, kK, kV, kO, kGate, kUp, kDown };
constexpr int kNumLinear = 7;

// "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
// "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj" (the HF module path inside a layer).
const char* linear_name(LinearKind k);
// All 7 kinds in order.
const LinearKind* all_linear_kinds();
// "model.layers.<layer>.<linear_name(k)>" (append ".weight" / ".bias" for tensors).
std::string linear_path(int layer, LinearKind k);
// The kind whose hook call carries this linear's input: q/k/v share the input of kQ, gate/up
// share the input of kGate; kO and kDown are their own.
LinearKind input_group(LinearKind k);

// One checkpoint Linear of a decoder layer as the model reads it (layer_linears lists them).
struct LayerLinear {
  std::string module;       // HF module name, e.g. "model.layers.3.self_attn.qkv_proj"
  LinearKind kind;          // slot: dense kQ..kDown (fused: kQ / kGate), expert kGate/kUp/kDown
  int expert = -1;          // expert index, -1 for dense Linears
  int64_t out = 0, in = 0;
  bool bias = false;
};
// Every quantizable Linear of layer l (not the MoE router), in this order: attention (q, k, v or
// qkv; o), then the dense MLP (gate, up or gate_up; down) or, for an MoE layer, expert 0's gate,
// up, down, expert 1's, ...
std::vector<LayerLinear> layer_linears(const ModelConfig& c, int l);
// Module name of expert e's Linear of `kind` (kGate/kUp/kDown) in MoE layer l:
// "model.layers.l.mlp.experts.e.gate_proj" (Qwen3-MoE) / "...block_sparse_moe.experts.e.w1" (Mixtral).
std::string expert_linear_path(const ModelConfig& c, int l, int e, LinearKind kind);
// Module name of the MoE router of layer l: "model.layers.l.mlp.gate" / "...block_sparse_moe.gate".
std::string router_path(const ModelConfig& c, int l);

struct LinearWeights {
  std::vector<float> w;     // [out x in] row-major (y = x W^T + bias)
  int64_t out = 0, in = 0;
  std::vector<float> bias;  // [out], or empty when the linear has no bias
};

// One expert of an MoE layer (SwiGLU: down(silu(gate(x)) * up(x))).
struct ExpertWeights {
  LinearWeights gate, up, down;  // [moe_intermediate x hidden] x 2, [hidden x moe_intermediate]
  LinearWeights& operator[](LinearKind k) { return k == LinearKind::kGate ? gate : k == LinearKind::kUp ? up : down; }
  const LinearWeights& operator[](LinearKind k) const {
    return k == LinearKind::kGate ? gate : k == LinearKind::kUp ? up : down;
  }
};

struct LayerWeights {
  LinearWeights lin[kNumLinear];  // indexed by LinearKind (fused / MoE layers: see LinearKind)
  std::vector<float> input_norm;  // [hidden]
  std::vector<float> post_norm;   // [hidden] (post_attention_layernorm)
  std::vector<float> q_norm;      // [head_dim] Qwen3 / Qwen3-MoE / Gemma-3, else empty
  std::vector<float> k_norm;      // [head_dim] Qwen3 / Qwen3-MoE / Gemma-3, else empty
  std::vector<float> pre_ff_norm;   // [hidden] Gemma-3 pre_feedforward_layernorm, else empty
  std::vector<float> post_ff_norm;  // [hidden] Gemma-3 post_feedforward_layernorm, else empty
  LinearWeights router;             // MoE layer: [n_experts x hidden] (never quantized)
  std::vector<ExpertWeights> experts;  // MoE layer: n_experts entries, else empty
  LinearWeights& operator[](LinearKind k) { return lin[static_cast<int>(k)]; }
  const LinearWeights& operator[](LinearKind k) const { return lin[static_cast<int>(k)]; }
  // The slot a checkpoint Linear lives in (dense: lin[kind]; expert: experts[e][kind]).
  LinearWeights& at(const LayerLinear& ll) { return ll.expert < 0 ? (*this)[ll.kind] : experts[ll.expert][ll.kind]; }
  const LinearWeights& at(const LayerLinear& ll) const {
    return ll.expert < 0 ? (*this)[ll.kind] : experts[ll.expert][ll.kind];
  }
  // Every float array of the layer (weights, biases, norms, router), e.g. to round them.
  std::vector<std::vector<float>*> all_arrays();
};

// Called by layer_forward with the input X of the linears of each input group, right before the
// matrix products, on the calling thread (never from inside a parallel region).
//   X: [tokens x in] row-major float32, in = hidden for kQ/kGate, n_heads*head_dim for kO,
//      intermediate for kDown.
// The hook may read X (e.g. accumulate a Hessian) and may overwrite it in place (e.g. rotate and
// fake-quantize activations); the layer then uses the overwritten X. Calls per layer, in order:
//   kQ   (the shared input of q_proj, k_proj, v_proj: the input-RMSNormed hidden state)
//   kO   (attention output, heads concatenated)
//   kGate (the shared input of gate_proj, up_proj: the post-attention-RMSNormed hidden state)
//   kDown (silu(gate) * up)
// kK, kV and kUp are never passed. Exceptions thrown by the hook propagate out of layer_forward.
// MoE layers call no kGate/kDown on_input*; instead, after on_routing, for every expert e with
// routed tokens (ascending e), on_expert_input(l, e, kGate, X_e) with X_e the rows routed to e
// (gathered copy, ascending token order) and then on_expert_input(l, e, kDown, act(gate)*up of
// those rows). When experts_see_all_tokens(l) is true, every expert instead gets ALL rows of
// the batch (for calibration of rarely routed experts); the layer output still uses the routing.
// layer_forward runs several sequences at once (rows of all of them stacked); it calls
// on_input_batch with `sequences` = their number (tokens = sequences * T). The default forwards
// to on_input, which suits hooks that act per token (activation transforms); hooks that count
// samples (Hessians: N = sequences) override on_input_batch.
struct LinearHook {
  virtual ~LinearHook() = default;
  virtual void on_input(int layer, LinearKind kind, float* x, int64_t tokens, int64_t in) = 0;
  virtual void on_input_batch(int layer, LinearKind kind, float* x, int64_t sequences,
                              int64_t tokens, int64_t in) {
    on_input(layer, kind, x, tokens, in);
  }
  // MoE: the inputs of expert `expert` (see above). The default forwards to on_input, so hooks
  // acting per token (activation transforms) treat expert inputs like the dense MLP's; hooks that
  // keep per-Linear statistics (Hessians) override it. x may be overwritten in place.
  virtual void on_expert_input(int layer, int expert, LinearKind kind, float* x, int64_t sequences,
                               int64_t tokens, int64_t in) {
    (void)expert;
    (void)sequences;
    on_input(layer, kind, x, tokens, in);
  }
  // MoE: the routing decisions of layer `layer` for this batch (before any expert runs).
  virtual void on_routing(int layer, const MoeRouting& routing) {
    (void)layer;
    (void)routing;
  }
  // MoE: whether every expert of `layer` should see every token (see above).
  virtual bool experts_see_all_tokens(int layer) const {
    (void)layer;
    return false;
  }
};

// Reusable scratch memory of layer_forward (activations of one batch: normed input, q, k, v,
// attention output, gate, up). Buffers are allocated on first use, grown when a larger batch
// comes, and backed by transparent huge pages, so a pass over many batches and layers touches
// fresh pages only once (a fresh 4 KiB page costs ~10 µs on the VMs fp4q runs on: at the sizes
// of an 8B layer, re-allocating per sequence cost more than the arithmetic). Not thread-safe:
// one scratch per concurrent caller.
class ForwardScratch {
 public:
  ForwardScratch();
  ~ForwardScratch();
  ForwardScratch(ForwardScratch&&) noexcept;
  ForwardScratch& operator=(ForwardScratch&&) noexcept;
  // Buffer `slot` (0..kSlots-1) with room for at least n floats (contents undefined).
  float* get(int slot, size_t n);
  size_t bytes() const;  // currently allocated
  static constexpr int kSlots = 12;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// weights_of_layer(l): a float32 LayerWeights to use for layer l (e.g. quantized-dequantized
// weights). The reference must stay valid until the call for the next layer.
using LayerWeightsFn = std::function<const LayerWeights&(int)>;

class Model {
 public:
  // Reads <dir>/config.json and opens the safetensors files (single or sharded) through
  // io::ModelFiles; loads embeddings, final norm and lm_head; validates every tensor of every
  // layer (presence, shape, float dtype) without converting it. Throws Error(kInput/kIo).
  // quantized_linears: the directory is an fp4q output whose Linear weights are stored in a
  // quantized layout (validated by exporter::ImportedModel, not here); load_layer() is then
  // unusable and callers pass their own weights_of_layer.
  static Model open(const std::string& dir, bool quantized_linears = false);

  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;
  ~Model();

  const ModelConfig& config() const { return cfg_; }
  const io::ModelFiles& files() const { return *files_; }
  const std::string& dir() const { return dir_; }

  // float32 copy of decoder layer l (0 <= l < n_layers).
  LayerWeights load_layer(int l) const;
  // The same with every Linear of layer_linears(config, l) read through read_linear(ll) (a float32
  // [out x in] weight, e.g. dequantised); norms, biases and routers come from the files.
  using LinearReader = std::function<std::vector<float>(const LayerLinear&)>;
  LayerWeights load_layer(int l, const LinearReader& read_linear) const;

  // Embedding rows: [T x hidden] row-major for T = ids.size(). Throws Error(kInput) for an id
  // outside [0, vocab).
  std::vector<float> embed(const std::vector<int32_t>& ids) const;

  // One decoder layer on one sequence at positions 0..T-1: hidden [T x hidden] row-major, updated
  // in place (hidden += attn(norm(hidden)); hidden += mlp(norm(hidden))). hook may be nullptr.
  // Throws Error(kInput) when config.json's sliding window for layer l is < T.
  void layer_forward(int l, const LayerWeights& w, float* hidden, int64_t T,
                     LinearHook* hook = nullptr) const;
  // The same for n_seq independent sequences of T tokens each, stored back to back in hidden
  // [n_seq*T x hidden] (sequence s = rows [s*T, (s+1)*T), positions 0..T-1 each). Every Linear
  // runs as ONE product over all n_seq*T rows (so small sequences still feed every core). The
  // bits do not depend on the thread count (fixed tile grid; see linalg/blas.h); they may differ
  // in the last place from a run that batches the same sequences differently, because a row's
  // position inside a BLAS tile can select a different edge kernel. scratch: reused buffers
  // (nullptr: allocate per call). need_output = false stops after the down_proj hook call without computing down_proj
  // or updating hidden (a pass that only captures Linear inputs, e.g. for Hessians).
  void layer_forward(int l, const LayerWeights& w, float* hidden, int64_t n_seq, int64_t T,
                     LinearHook* hook, ForwardScratch* scratch, bool need_output = true) const;

  // Final RMSNorm and lm_head for rows hidden [T x hidden] -> logits [T x vocab] row-major.
  void final_norm_logits(const float* hidden, int64_t T, float* logits) const;

  // Full forward of one sequence: logits [T x vocab] row-major. Layers come from
  // weights_of_layer when given, else load_layer (converted per call, one layer at a time).
  std::vector<float> forward(const std::vector<int32_t>& ids,
                             const LayerWeightsFn& weights_of_layer = {},
                             LinearHook* hook = nullptr) const;

  // Final hidden states only (after all layers, before the final norm): [T x hidden].
  std::vector<float> forward_hidden(const std::vector<int32_t>& ids,
                                    const LayerWeightsFn& weights_of_layer = {},
                                    LinearHook* hook = nullptr) const;

  // Sum over t in [0, T-1) of -log softmax(logits[t])[ids[t+1]] in double, from final hidden
  // states [T x hidden] (computes logits in row blocks, so memory stays O(block x vocab)).
  double nll_sum(const float* hidden, const int32_t* ids, int64_t T) const;

  // cos/sin tables for positions 0..T-1 (cached; grows on demand).
  std::shared_ptr<const RopeTable> rope_table(int64_t T) const;
  // The table layer l uses for sequences of T tokens (Gemma-3 sliding layers: their own base;
  // longrope: long factors when T > original_max_position_embeddings).
  std::shared_ptr<const RopeTable> rope_table_for_layer(int l, int64_t T) const;

  // The compute dtype to emulate (core/compute_dtype.h; default kF32, the float32 path above,
  // unchanged). kBF16 emulates transformers' bfloat16 eager path: the embeddings, final norm and
  // lm_head held here are rounded to bf16 once, and layer_forward / final_norm_logits round
  // activations wherever that path holds a bf16 tensor (model/bf16_ops.h: RMSNorm, each Linear's
  // output, RoPE, attention, SwiGLU, residual adds, logits). The caller passes LayerWeights already
  // rounded to bf16 (eval does). Call before any forward pass; switching back to kF32 afterwards
  // throws Error(kInternal) (the rounded tensors are not kept twice).
  void set_compute_dtype(ComputeDtype d);
  ComputeDtype compute_dtype() const { return dtype_; }

  // The arithmetic of the decoder layers' Linear products (the calibration matmuls of
  // `fp4q quantize --compute bf16`; independent of set_compute_dtype, whose semantics it leaves
  // alone). kF32 (default): linear(), float32 SGEMM — the reference path, bits unchanged.
  // kBF16: as GPU quantizers run their calibration forward —
  //   * every Linear input (the normed hidden states feeding q/k/v and gate/up, the attention
  //     context feeding o_proj, the SwiGLU product feeding down_proj, and the same for MoE
  //     experts) is rounded to bf16 (RNE) in place BEFORE the LinearHook sees it, so Hessians
  //     (2/N·XᵀX, still accumulated in float32) and activation amax come from bf16-valued
  //     activations, as GPTQModel / llm-compressor accumulate them from the model's bf16 tensors;
  //   * the product runs on linear_bf16 (weights rounded to bf16 RNE, exact products, float32
  //     accumulation in a fixed order, float32 output, bias added in float32);
  //   * everything else stays float32: norms, RoPE, attention, activations, residual adds, MoE
  //     routers (float32 product of the unrounded block input), lm_head.
  // Bits do not depend on the thread count. Throws Error(kUsage) naming AVX512_BF16 when the
  // CPU lacks it (linalg::require_bf16_gemm). Call before any forward pass.
  void set_linear_compute(ComputeDtype d);
  ComputeDtype linear_compute() const { return linear_dtype_; }

 private:
  Model();
  std::string dir_;
  ModelConfig cfg_;
  std::unique_ptr<io::ModelFiles> files_;
  std::vector<float> embed_;     // [vocab x hidden]
  std::vector<float> norm_;      // [hidden]
  std::vector<float> lm_head_;   // [vocab x hidden]; empty when tied (embed_ is used)
  std::vector<float> inv_freq_;  // [head_dim / 2]
  struct RopeCache;
  std::unique_ptr<RopeCache> rope_;
  enum { kRopeMain = 0, kRopeLong = 1, kRopeSliding = 2 };
  std::shared_ptr<const RopeTable> rope_variant(int v, int64_t T) const;
  float embed_scale_ = 0.0f;  // Gemma-3: float32(sqrt(hidden)); 0 = embeddings unscaled
  // The sparse MoE block of layer l on the normed rows xn [N x hidden]; returns its output
  // [N x hidden] in scratch memory (nullptr when !need_output). See moe.h for the order.
  float* moe_block(int l, const LayerWeights& w, const float* xn, int64_t n_seq, int64_t N,
                   LinearHook* hook, ForwardScratch& ws, bool need_output) const;
  ComputeDtype dtype_ = ComputeDtype::kF32;
  ComputeDtype linear_dtype_ = ComputeDtype::kF32;  // set_linear_compute
  // One decoder-layer Linear product with the arithmetic of linear_dtype_ (linear / linear_bf16).
  void layer_linear(const float* x, int64_t rows, int64_t in, const float* W, int64_t out,
                    const float* bias, float* y) const;
  // A Linear input as linear_dtype_ holds it: rounded to bf16 in place under kBF16, else untouched.
  void round_linear_input(float* x, int64_t rows, int64_t cols) const;
  const float* lm_head() const { return lm_head_.empty() ? embed_.data() : lm_head_.data(); }
};

// How many sequences of T tokens one batched layer_forward call should take: as many as fit in
// kBatchTokens (at least 1). Fixed by T alone, never by the thread count, so every result is
// thread-count independent. 4096 tokens give every Linear of an 8B-class model >= 16 output
// tiles (enough for 16 cores) and fold Hessians over 4096 tokens per BLAS call, while an
// intermediate activation of a 70B layer stays under 0.5 GiB.
constexpr int64_t kBatchTokens = 4096;
inline int64_t batch_sequences(int64_t T) { return T >= kBatchTokens ? 1 : kBatchTokens / T; }

// Perplexity over non-overlapping windows of `seqlen` tokens of ids (the remainder after the last
// full window is dropped); each window is one sequence at positions 0..seqlen-1 and contributes
// the NLL of its positions 1..seqlen-1 (seqlen-1 tokens). Sums in double; mean_nll =
// sum / tokens, ppl = exp(mean_nll).
// Without weights_of_layer every layer is loaded once and all are kept in memory (float32) for
// the duration of the call; pass weights_of_layer to control memory or use modified weights.
// Throws Error(kInput) when seqlen < 2 or ids hold fewer than seqlen tokens.
struct PplResult {
  int64_t windows = 0;
  int64_t tokens = 0;  // windows * (seqlen - 1)
  double mean_nll = 0.0;
  double ppl = 0.0;
  std::vector<double> window_nll_sum;  // per window
};
PplResult perplexity(const Model& model, const std::vector<int32_t>& ids, int seqlen,
                     const LayerWeightsFn& weights_of_layer = {}, LinearHook* hook = nullptr);

}  // namespace fp4q::model
