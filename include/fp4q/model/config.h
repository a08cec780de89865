// fp4q/model/config.h — the decoder-only architectures fp4q can run, read from a Hugging Face
// config.json.
//
// Supported ("architectures"[0], or "model_type" when "architectures" is absent):
//   LlamaForCausalLM    (model_type llama)       no biases, optional llama3 / linear rope scaling
//   MistralForCausalLM  (model_type mistral)     like Llama; sliding_window on every layer
//   Qwen2ForCausalLM    (model_type qwen2)       q/k/v projections carry a bias (o_proj does not)
//   Qwen3ForCausalLM    (model_type qwen3)       per-head RMSNorm q_norm / k_norm on q and k before RoPE
//   Qwen3MoeForCausalLM (model_type qwen3_moe)   Qwen3 attention; sparse MoE MLP (router softmax over
//                                                num_experts, top num_experts_per_tok, renormalised when
//                                                norm_topk_prob), dense MLP on mlp_only_layers / off
//                                                decoder_sparse_step; no shared experts
//   MixtralForCausalLM  (model_type mixtral)     Mistral attention; sparse MoE MLP (softmax, top-k,
//                                                always renormalised), experts w1/w3/w2
//   Gemma3ForCausalLM   (model_type gemma3_text) RMSNorm y = x/rms * (1 + w); embeddings * sqrt(hidden);
//                                                q/k norms; attention scale query_pre_attn_scalar^-0.5;
//                                                final-logit tanh soft-capping (attn_logit_softcapping
//                                                is ignored, as transformers' Gemma3Attention does);
//                                                sliding_attention layers with their own RoPE base;
//                                                post-attention and pre/post-feed-forward norms; GELU-tanh
//   Phi3ForCausalLM     (model_type phi3)        fused self_attn.qkv_proj (q rows, k rows, v rows) and
//                                                mlp.gate_up_proj (gate rows, up rows); optional partial
//                                                rotary (partial_rotary_factor) and longrope
// Common to all: RoPE in the HF rotate_half convention (pairs (i, i + rotary_dim/2)), grouped-query
// causal attention (sliding-window layers see keys s with t - window < s <= t, as transformers'
// sliding_window_overlay), pre-norm residual blocks, final norm, lm_head (or the embedding matrix
// when tie_word_embeddings). Llama-family RMSNorm is weight * x / sqrt(mean(x^2) + eps).
//
// Both config.json generations are read: transformers < 5 ("rope_theta" + "rope_scaling") and
// transformers >= 5 ("rope_parameters": {"rope_type", "rope_theta", ...}, or per layer type
// {"full_attention": {...}, "sliding_attention": {...}} for Gemma-3). Fields that would change
// the math in a way fp4q does not implement are rejected with Error(kInput) naming config.json and
// the field and listing what is supported; fields without effect on the forward pass (dropout,
// use_cache, initializer_range, pretraining_tp, dtype, router_aux_loss_coef, ...) are ignored.
//
// Invariants after from_json: hidden, intermediate, n_layers, n_heads, n_kv_heads, head_dim, vocab
// > 0; head_dim even; n_heads % n_kv_heads == 0; layer_sliding_window.size() == layer_moe.size()
// == n_layers; rotary_dim() even, 2 <= rotary_dim() <= head_dim; MoE archs: n_experts >= 1,
// 1 <= n_experts_per_tok <= n_experts, moe_intermediate > 0.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace fp4q::model {

enum class Arch { kLlama, kMistral, kQwen2, kQwen3, kQwen3Moe, kMixtral, kGemma3, kPhi3 };
// RoPE frequency rules (transformers' ROPE_INIT_FUNCTIONS): default 1/theta^(2i/d); llama3 smooth
// low/high-frequency rescaling; linear: default / factor; longrope: default / ext_factor[i] with
// short_factor for sequences <= original_max_position_embeddings and long_factor beyond, cos/sin
// multiplied by the attention factor.
enum class RopeType { kDefault, kLlama3, kLinear, kLongRope };
// MLP activation: silu (SwiGLU) or transformers' "gelu_pytorch_tanh" (GELU, tanh approximation).
enum class Activation { kSilu, kGeluTanh };

// "LlamaForCausalLM", ... for an Arch.
const char* arch_name(Arch a);

struct ModelConfig {
  Arch arch = Arch::kLlama;
  std::string arch_string;      // as written in config.json (architectures[0])
  int64_t hidden = 0;           // hidden_size
  int64_t intermediate = 0;     // intermediate_size
  int n_layers = 0;             // num_hidden_layers
  int n_heads = 0;              // num_attention_heads
  int n_kv_heads = 0;           // num_key_value_heads (default n_heads)
  int head_dim = 0;             // head_dim, or hidden / n_heads when absent / null
  int64_t vocab = 0;            // vocab_size
  double rms_eps = 1e-6;        // rms_norm_eps
  // RoPE: inv_freq[i] = rope_theta^(-2i/head_dim), i < head_dim/2, then rope_type's rescaling.
  double rope_theta = 10000.0;
  RopeType rope_type = RopeType::kDefault;
  double rope_factor = 1.0;               // llama3: factor
  double rope_low_freq_factor = 1.0;      // llama3: low_freq_factor
  double rope_high_freq_factor = 4.0;     // llama3: high_freq_factor
  int64_t rope_original_max_pos = 8192;   // llama3: original_max_position_embeddings
  int64_t max_pos = 0;                    // max_position_embeddings (informational; 0 = absent)
  bool tie_embeddings = false;  // tie_word_embeddings: logits use model.embed_tokens.weight
  bool qkv_bias = false;        // Qwen2: q/k/v_proj have .bias
  bool qk_norm = false;         // Qwen3, Qwen3-MoE, Gemma-3: self_attn.q_norm / k_norm
  // RoPE, continued.
  double partial_rotary_factor = 1.0;     // Phi-3 family: rotary_dim = int(head_dim * factor)
  std::vector<double> rope_short_factor;  // longrope: [rotary_dim / 2]
  std::vector<double> rope_long_factor;   // longrope: [rotary_dim / 2]
  double rope_attention_factor = 1.0;     // longrope: cos/sin multiplier (derived if absent)
  // Layers whose layer_types entry is sliding_attention use their own default-type RoPE with this
  // base (Gemma-3: rope_parameters.sliding_attention.rope_theta, legacy rope_local_base_freq);
  // 0 = every layer uses the rope above.
  double sliding_rope_theta = 0.0;
  // MLP.
  Activation act = Activation::kSilu;     // hidden_act / hidden_activation
  bool fused_qkv = false;       // Phi-3: one self_attn.qkv_proj [q_dim + 2 kv_dim x hidden]
  bool fused_gate_up = false;   // Phi-3: one mlp.gate_up_proj [2 intermediate x hidden]
  // Mixture of experts (Qwen3-MoE, Mixtral). layer_moe[l]: layer l has a sparse MoE block instead
  // of the dense MLP.
  int n_experts = 0;                 // num_experts / num_local_experts
  int n_experts_per_tok = 0;         // num_experts_per_tok (top-k)
  int64_t moe_intermediate = 0;      // per-expert intermediate size (Mixtral: intermediate_size)
  bool norm_topk_prob = true;        // renormalise the top-k probabilities (Mixtral: always)
  std::vector<bool> layer_moe;
  // Gemma-3.
  bool norm_plus_one = false;    // RMSNorm multiplies by (1 + weight), computed in float32
  bool sandwich_norms = false;   // post_attention_layernorm on the attention OUTPUT, plus
                                 // pre_feedforward_layernorm / post_feedforward_layernorm
  double attn_scale = 0.0;       // attention score scale; 0 = head_dim^-0.5 (Gemma-3:
                                 // query_pre_attn_scalar^-0.5)
  double attn_softcap = 0.0;     // attention score soft-cap (0 = none): s = cap * tanh(s / cap).
                                 // Gemma-3's attn_logit_softcapping does not set it: transformers'
                                 // Gemma3Attention ignores that field (Gemma-2 applied it)
  double final_softcap = 0.0;    // final_logit_softcapping (0 = none), on the logits
  bool scale_embeddings = false; // embeddings * float32(sqrt(hidden)) (Gemma3TextScaledWordEmbedding)
  // Per layer: attention window in tokens (0 = full causal attention). Query t attends to keys
  // s with t - window < s <= t.
  std::vector<int64_t> layer_sliding_window;
  // Per layer: true when the layer_types entry is sliding_attention (selects sliding_rope_theta).
  std::vector<bool> layer_sliding;
  int32_t bos_id = -1;             // bos_token_id (-1 = none)
  std::vector<int32_t> eos_ids;    // eos_token_id (int or list; empty = none)

  int64_t q_dim() const { return static_cast<int64_t>(n_heads) * head_dim; }    // q_proj out
  int64_t kv_dim() const { return static_cast<int64_t>(n_kv_heads) * head_dim; }  // k/v_proj out
  int rotary_dim() const;  // dimensions of each head that RoPE rotates (head_dim unless partial)
  bool is_moe() const { return n_experts > 0; }
  bool is_moe_layer(int l) const { return l >= 0 && l < static_cast<int>(layer_moe.size()) && layer_moe[l]; }
  // Attention score scale as transformers applies it (python double, used as float32).
  double attention_scale() const;

  // Parses a config.json object. `where` names the file in errors (e.g. "<dir>/config.json").
  // allow_quantized: accept a config.json with quantization_config (fp4q's own outputs, read by
  // eval); otherwise such a config is an input error.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& where,
                               bool allow_quantized = false);
  // Parses the text of a config.json (Error(kInput) naming `where` when it is not JSON).
  static ModelConfig parse(const std::string& text, const std::string& where,
                           bool allow_quantized = false);
  // Reads and parses <dir>/config.json (Error(kIo) when unreadable, kInput when malformed).
  static ModelConfig load(const std::string& dir, bool allow_quantized = false);
};

}  // namespace fp4q::model
