// fp4q/model/synthetic.h — synthetic decoder models with the layer shapes of real ones, written
// as ordinary Hugging Face model directories (config.json + safetensors), for benchmarks, memory
// tests and `fp4q bench` — no download, no Python.
//
// Weights are deterministic pseudo-random numbers (a counter-based generator keyed by the seed
// and the tensor name, so any tensor can be regenerated alone and the bytes never depend on the
// thread count): Linear weights ~ N(0, (1/sqrt(in))²) · 0.5 with a few input channels scaled ×8
// (outlier channels, as real LLM activations/weights have), embeddings ~ N(0, 1), norm weights
// 1 + N(0, 0.05²). The forward pass of such a model stays finite and well scaled at any depth,
// which is all a benchmark or memory test needs; its perplexity means nothing.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "fp4q/io/dtype.h"
#include "fp4q/model/config.h"

namespace fp4q::model {

// The shape of a decoder model (what config.json would say).
struct ModelShape {
  std::string name;        // preset name, or "custom"
  Arch arch = Arch::kLlama;
  int64_t hidden = 0, intermediate = 0;
  int n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int64_t vocab = 0;
  double rope_theta = 10000.0;
  bool llama3_rope = false;
  int64_t max_pos = 4096;
  bool tie_embeddings = false;
  // Mixture of experts (Arch::kQwen3Moe / kMixtral): every layer sparse.
  int n_experts = 0, top_k = 0;
  int64_t moe_intermediate = 0;  // per expert (Mixtral: = intermediate)
  bool norm_topk_prob = true;
  int64_t sliding_window = 0;    // Gemma-3: window of its sliding layers (pattern 6)
  // Parameters of one decoder layer (Linears, router and norms).
  int64_t layer_params() const;
  // Parameters a token passes through in one layer (MoE: top_k experts instead of all).
  int64_t active_layer_params() const;
  int64_t q_dim() const { return static_cast<int64_t>(n_heads) * head_dim; }
  int64_t kv_dim() const { return static_cast<int64_t>(n_kv_heads) * head_dim; }
};

// Presets: "llama3-8b" (Llama-3.1-8B), "llama3-70b" (Llama-3.3-70B), "qwen3-8b", "qwen3-14b",
// "qwen3-32b", "qwen3-30b-a3b" (Qwen3-30B-A3B: 48 layers, 128 experts, top-8),
// "mixtral-8x7b" (Mixtral-8x7B-v0.1), "gemma3-1b", "phi4-mini" (Phi-4-mini-instruct: fused
// projections, partial rotary, longrope), "tiny" (hidden 256, 2 layers: for tests) and tiny
// shapes of the other architectures for tests: "tiny-qwen3-moe", "tiny-mixtral",
// "tiny-gemma3", "tiny-phi3". Error(kUsage) listing the names.
ModelShape model_shape(const std::string& preset);
std::vector<std::string> model_shape_names();

// The config.json object of a shape (transformers 4.x field names; architectures[0] from arch).
nlohmann::json shape_config_json(const ModelShape& s);

// Tensor names follow the architecture (model.h): Phi-3 fused qkv_proj / gate_up_proj, Gemma-3's
// extra norms (stored as w of (1 + w), ~ N(0, 0.05²)), per-expert MoE tensors and routers.
// Writes <dir>/config.json and <dir>/model.safetensors (one file; tensors in HF order) for the
// shape, weights stored as `dtype` (F32, F16, BF16). dir must exist. Writes `ids_count` random
// token ids (uniform in [0, vocab), seeded) to <dir>/random-ids.txt when ids_count > 0, usable
// as --calib-ids / --ids. Memory: one tensor at a time. Error(kIo) on write failures.
// edit_config: changes config.json before the tensors are generated (their names and shapes
// follow the edited config, e.g. "mlp_only_layers" or a sliding window).
void write_synthetic_model(const std::string& dir, const ModelShape& shape, io::DType dtype,
                           uint64_t seed, int64_t ids_count = 0,
                           const std::function<void(nlohmann::json&)>& edit_config = {});

// The deterministic values of one synthetic tensor (numel = product of shape), float32, exactly as
// write_synthetic_model generates them before the dtype conversion. `kind`: 0 Linear weight
// (shape [out, in]), 1 embedding, 2 norm weight.
std::vector<float> synthetic_tensor(const std::string& name, const std::vector<int64_t>& shape,
                                    int kind, uint64_t seed);

}  // namespace fp4q::model
