// fp4q/model/config.h — the decoder-only architectures fp4q can run, read from a Hugging Face
// config.json.
//
// Supported ("architectures"[0], or "model_type" when "architectures" is absent):
//   LlamaForCausalLM   (model_type llama)    no biases, optional llama3 rope scaling
//   MistralForCausalLM (model_type mistral)  like Llama; sliding_window allowed only while it is
//                                            not in effect (sequence length <= window)
//   Qwen2ForCausalLM   (model_type qwen2)    q/k/v projections carry a bias (o_proj does not)
//   Qwen3ForCausalLM   (model_type qwen3)    per-head RMSNorm q_norm / k_norm on q and k before RoPE
// All share: RMSNorm (weight * x / sqrt(mean(x^2) + eps)), RoPE in the HF rotate_half convention
// (pairs (i, i + head_dim/2)), grouped-query causal attention with scale head_dim^-0.5, SwiGLU MLP
// down(silu(gate(x)) * up(x)), pre-norm residual blocks, final norm, lm_head (or the embedding
// matrix when tie_word_embeddings).
//
// Both config.json generations are read: transformers < 5 ("rope_theta" + "rope_scaling") and
// transformers >= 5 ("rope_parameters": {"rope_type", "rope_theta", ...}). Fields that would change
// the math in a way fp4q does not implement are rejected with Error(kInput) naming config.json and
// the field and listing what is supported; fields without effect on the forward pass (dropout,
// use_cache, initializer_range, pretraining_tp, dtype, ...) are ignored.
//
// Invariants after from_json: hidden, intermediate, n_layers, n_heads, n_kv_heads, head_dim, vocab
// > 0; head_dim even; n_heads % n_kv_heads == 0; layer_sliding_window.size() == n_layers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace fp4q::model {

enum class Arch { kLlama, kMistral, kQwen2, kQwen3 };
enum class RopeType { kDefault, kLlama3 };

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
  bool qk_norm = false;         // Qwen3: self_attn.q_norm / k_norm
  // Per layer: attention window in tokens (0 = full causal attention). A layer whose window is
  // smaller than the sequence length would need a sliding-window mask, which fp4q does not
  // implement; layer_forward throws Error(kInput) in that case.
  std::vector<int64_t> layer_sliding_window;
  int32_t bos_id = -1;             // bos_token_id (-1 = none)
  std::vector<int32_t> eos_ids;    // eos_token_id (int or list; empty = none)

  int64_t q_dim() const { return static_cast<int64_t>(n_heads) * head_dim; }    // q_proj out
  int64_t kv_dim() const { return static_cast<int64_t>(n_kv_heads) * head_dim; }  // k/v_proj out

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
