// src/model/synthetic.cpp — synthetic model directories (see synthetic.h).
#include "fp4q/model/synthetic.h"

#include <cmath>
#include <fstream>

#include "fp4q/core/error.h"
#include "fp4q/core/parallel.h"
#include "fp4q/io/writer.h"
#include "fp4q/model/model.h"

namespace fp4q::model {

int64_t ModelShape::layer_params() const {
  const bool qk = arch == Arch::kQwen3 || arch == Arch::kQwen3Moe || arch == Arch::kGemma3;
  const int64_t attn = hidden * (q_dim() + 2 * kv_dim()) + q_dim() * hidden;
  const int64_t norms = (arch == Arch::kGemma3 ? 4 : 2) * hidden + (qk ? 2 * head_dim : 0);
  if (n_experts > 0)
    return attn + norms + static_cast<int64_t>(n_experts) * (hidden + 3 * hidden * moe_intermediate);
  return attn + norms + 3 * hidden * intermediate;
}

int64_t ModelShape::active_layer_params() const {
  if (n_experts <= 0) return layer_params();
  return layer_params() - static_cast<int64_t>(n_experts - top_k) * 3 * hidden * moe_intermediate;
}

namespace {

ModelShape llama(const char* name, int64_t h, int64_t i, int layers, int heads, int kv) {
  ModelShape s;
  s.name = name;
  s.arch = Arch::kLlama;
  s.hidden = h;
  s.intermediate = i;
  s.n_layers = layers;
  s.n_heads = heads;
  s.n_kv_heads = kv;
  s.head_dim = static_cast<int>(h / heads);
  s.vocab = 128256;
  s.rope_theta = 500000.0;
  s.llama3_rope = true;
  s.max_pos = 131072;
  return s;
}

ModelShape qwen3(const char* name, int64_t h, int64_t i, int layers, int heads) {
  ModelShape s;
  s.name = name;
  s.arch = Arch::kQwen3;
  s.hidden = h;
  s.intermediate = i;
  s.n_layers = layers;
  s.n_heads = heads;
  s.n_kv_heads = 8;
  s.head_dim = 128;
  s.vocab = 151936;
  s.rope_theta = 1000000.0;
  s.max_pos = 40960;
  return s;
}

ModelShape moe(const char* name, Arch arch, int64_t h, int64_t i, int layers, int heads, int kv,
                int head_dim, int64_t vocab, int experts, int top_k, int64_t moe_i) {
  ModelShape s;
  s.name = name;
  s.arch = arch;
  s.hidden = h;
  s.intermediate = i;
  s.n_layers = layers;
  s.n_heads = heads;
  s.n_kv_heads = kv;
  s.head_dim = head_dim;
  s.vocab = vocab;
  s.rope_theta = 1000000.0;
  s.max_pos = arch == Arch::kMixtral ? 32768 : 40960;
  s.n_experts = experts;
  s.top_k = top_k;
  s.moe_intermediate = moe_i;
  return s;
}

ModelShape dense(const char* name, Arch arch, int64_t h, int64_t i, int layers, int heads, int kv,
                 int head_dim, int64_t vocab) {
  ModelShape s;
  s.name = name;
  s.arch = arch;
  s.hidden = h;
  s.intermediate = i;
  s.n_layers = layers;
  s.n_heads = heads;
  s.n_kv_heads = kv;
  s.head_dim = head_dim;
  s.vocab = vocab;
  s.max_pos = 2048;
  return s;
}

std::vector<ModelShape> presets() {
  ModelShape tiny;
  tiny.name = "tiny";
  tiny.arch = Arch::kLlama;
  tiny.hidden = 256;
  tiny.intermediate = 768;
  tiny.n_layers = 2;
  tiny.n_heads = 4;
  tiny.n_kv_heads = 2;
  tiny.head_dim = 64;
  tiny.vocab = 512;
  tiny.max_pos = 2048;
  ModelShape gemma = dense("gemma3-1b", Arch::kGemma3, 1152, 6912, 26, 4, 1, 256, 262144);
  gemma.rope_theta = 1000000.0;
  gemma.tie_embeddings = true;
  gemma.sliding_window = 512;
  gemma.max_pos = 32768;
  ModelShape phi4 = dense("phi4-mini", Arch::kPhi3, 3072, 8192, 32, 24, 8, 128, 200064);
  phi4.tie_embeddings = true;
  phi4.max_pos = 131072;
  ModelShape tq = moe("tiny-qwen3-moe", Arch::kQwen3Moe, 256, 512, 2, 4, 2, 64, 512, 8, 2, 128);
  tq.max_pos = 2048;
  ModelShape tm = moe("tiny-mixtral", Arch::kMixtral, 256, 256, 2, 4, 2, 64, 512, 4, 2, 256);
  tm.max_pos = 2048;
  ModelShape tg = dense("tiny-gemma3", Arch::kGemma3, 256, 512, 2, 4, 2, 64, 512);
  tg.tie_embeddings = true;
  tg.sliding_window = 32;
  ModelShape tp = dense("tiny-phi3", Arch::kPhi3, 256, 512, 2, 4, 2, 64, 512);
  return {llama("llama3-8b", 4096, 14336, 32, 32, 8), llama("llama3-70b", 8192, 28672, 80, 64, 8),
          qwen3("qwen3-8b", 4096, 12288, 36, 32), qwen3("qwen3-14b", 5120, 17408, 40, 40),
          qwen3("qwen3-32b", 5120, 25600, 64, 64),
          moe("qwen3-30b-a3b", Arch::kQwen3Moe, 2048, 6144, 48, 32, 4, 128, 151936, 128, 8, 768),
          moe("mixtral-8x7b", Arch::kMixtral, 4096, 14336, 32, 32, 8, 128, 32000, 8, 2, 14336),
          gemma, phi4, tiny, tq, tm, tg, tp};
}

// splitmix64: a bijective 64-bit mixer (Steele et al.); counter-based use gives independent
// streams per (seed, tensor, index).
uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ULL;
  return h;
}

// Standard normal number i of the stream `key` (Box-Muller on two 53-bit uniforms).
double normal(uint64_t key, uint64_t i) {
  const uint64_t a = mix(key ^ mix(2 * i)), b = mix(key ^ mix(2 * i + 1));
  const double u1 = (static_cast<double>(a >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
  const double u2 = static_cast<double>(b >> 11) * 0x1.0p-53;          // [0, 1)
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

}  // namespace

std::vector<std::string> model_shape_names() {
  std::vector<std::string> n;
  for (const auto& s : presets()) n.push_back(s.name);
  return n;
}

ModelShape model_shape(const std::string& preset) {
  std::string names;
  for (const auto& s : presets()) {
    if (s.name == preset) return s;
    names += (names.empty() ? "" : ", ") + s.name;
  }
  throw Error(ErrorKind::kUsage, "unknown model shape '" + preset + "'", "--shape", "choose one of " + names);
}

nlohmann::json shape_config_json(const ModelShape& s) {
  nlohmann::json j;
  j["architectures"] = {arch_name(s.arch)};
  const char* mt = "llama";
  switch (s.arch) {
    case Arch::kLlama: mt = "llama"; break;
    case Arch::kMistral: mt = "mistral"; break;
    case Arch::kQwen2: mt = "qwen2"; break;
    case Arch::kQwen3: mt = "qwen3"; break;
    case Arch::kQwen3Moe: mt = "qwen3_moe"; break;
    case Arch::kMixtral: mt = "mixtral"; break;
    case Arch::kGemma3: mt = "gemma3_text"; break;
    case Arch::kPhi3: mt = "phi3"; break;
  }
  j["model_type"] = mt;
  j["hidden_size"] = s.hidden;
  j["intermediate_size"] = s.intermediate;
  j["num_hidden_layers"] = s.n_layers;
  j["num_attention_heads"] = s.n_heads;
  j["num_key_value_heads"] = s.n_kv_heads;
  j["head_dim"] = s.head_dim;
  j["vocab_size"] = s.vocab;
  j["rms_norm_eps"] = 1e-5;
  j["rope_theta"] = s.rope_theta;
  if (s.llama3_rope)
    j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  else
    j["rope_scaling"] = nullptr;
  j["max_position_embeddings"] = s.max_pos;
  j["tie_word_embeddings"] = s.tie_embeddings;
  j["attention_bias"] = false;
  j["mlp_bias"] = false;
  j["hidden_act"] = "silu";
  j["bos_token_id"] = 0;
  j["eos_token_id"] = 1;
  j["torch_dtype"] = "bfloat16";
  if (s.arch == Arch::kQwen3Moe) {
    j["num_experts"] = s.n_experts;
    j["num_experts_per_tok"] = s.top_k;
    j["moe_intermediate_size"] = s.moe_intermediate;
    j["norm_topk_prob"] = s.norm_topk_prob;
    j["decoder_sparse_step"] = 1;
    j["mlp_only_layers"] = nlohmann::json::array();
  } else if (s.arch == Arch::kMixtral) {
    j["num_local_experts"] = s.n_experts;
    j["num_experts_per_tok"] = s.top_k;
    j["intermediate_size"] = s.moe_intermediate;
  } else if (s.arch == Arch::kGemma3) {
    j.erase("hidden_act");
    j.erase("mlp_bias");
    j["hidden_activation"] = "gelu_pytorch_tanh";
    j["query_pre_attn_scalar"] = s.head_dim;
    j["sliding_window"] = s.sliding_window;
    j["rope_local_base_freq"] = 10000.0;
    // Gemma3TextConfig's pattern 6 ((l + 1) % 6 == 0: full); models under 6 layers make their
    // last layer full so that both kinds occur.
    nlohmann::json lt = nlohmann::json::array();
    for (int l = 0; l < s.n_layers; ++l)
      lt.push_back((l + 1) % 6 && !(s.n_layers < 6 && l + 1 == s.n_layers) ? "sliding_attention"
                                                                           : "full_attention");
    j["layer_types"] = lt;
  } else if (s.arch == Arch::kPhi3) {
    j.erase("attention_bias");
    j.erase("mlp_bias");
    if (s.name == "phi4-mini") {  // partial rotary 0.75 + longrope, as Phi-4-mini-instruct
      j["partial_rotary_factor"] = 0.75;
      j["original_max_position_embeddings"] = 4096;
      const int half = static_cast<int>(s.head_dim * 0.75) / 2;
      std::vector<double> sf(half), lf(half);
      for (int i = 0; i < half; ++i) {
        sf[i] = 1.0 + 0.02 * i;
        lf[i] = 1.0 + 0.5 * i;
      }
      j["rope_scaling"] = {{"type", "longrope"}, {"short_factor", sf}, {"long_factor", lf}};
    }
  }
  j["fp4q_synthetic"] = s.name;
  return j;
}

std::vector<float> synthetic_tensor(const std::string& name, const std::vector<int64_t>& shape,
                                    int kind, uint64_t seed) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float> v(static_cast<size_t>(n));
  const uint64_t key = mix(seed ^ fnv1a(name));
  const int64_t cols = shape.empty() ? 1 : shape.back();
  // Linear: std 0.5/sqrt(in); every 97th input channel (offset by the tensor key) is an outlier
  // channel with 8x the scale.
  // kind 3: Gemma norm weights w of (1 + w): N(0, 0.05²).
  const double base = kind == 0 ? 0.5 / std::sqrt(static_cast<double>(cols)) : kind == 1 ? 1.0 : 0.05;
  const int64_t off = static_cast<int64_t>(key % 97);
  const long chunks = static_cast<long>((n + 65535) / 65536);
  parallel_for(chunks, [&](long c) {
    const int64_t e = std::min<int64_t>(n, (c + 1) * int64_t{65536});
    for (int64_t i = c * int64_t{65536}; i < e; ++i) {
      double x = normal(key, static_cast<uint64_t>(i)) * base;
      if (kind == 0 && (i % cols) % 97 == off) x *= 8.0;
      if (kind == 2) x += 1.0;  // kind 3 (Gemma) stays centred on 0
      v[i] = static_cast<float>(x);
    }
  });
  return v;
}

void write_synthetic_model(const std::string& dir, const ModelShape& s, io::DType dtype,
                           uint64_t seed, int64_t ids_count,
                           const std::function<void(nlohmann::json&)>& edit_config) {
  if (!io::is_float_dtype(dtype))
    throw Error(ErrorKind::kUsage, std::string("synthetic weights must be F32, F16 or BF16, not ") +
                                       io::dtype_tag(dtype), "--dtype");
  nlohmann::json config = shape_config_json(s);
  if (edit_config) edit_config(config);
  io::write_file_atomic(dir + "/config.json", config.dump(2) + "\n");
  io::ShardedWriter w(dir, 0, nlohmann::json{{"format", "pt"}});
  auto add = [&](const std::string& name, std::vector<int64_t> shape, int kind) {
    const auto v = synthetic_tensor(name, shape, kind, seed);
    w.add(io::make_tensor_from_f32(name, std::move(shape), v.data(), dtype));
  };
  // Names and shapes from the model module itself, so reader and writer cannot disagree.
  const ModelConfig cfg = ModelConfig::from_json(config, dir + "/config.json");
  const int norm_kind = cfg.norm_plus_one ? 3 : 2;
  // Gemma scales the embeddings by sqrt(hidden): store them at 1/sqrt(hidden) (kind 0's scale)
  // so that the scaled rows and the tied logits stay O(1), as in the real checkpoints.
  add("model.embed_tokens.weight", {cfg.vocab, cfg.hidden}, cfg.scale_embeddings ? 0 : 1);
  for (int l = 0; l < cfg.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {cfg.hidden}, norm_kind);
    const auto lin = layer_linears(cfg, l);
    for (const auto& ll : lin)
      if (ll.kind <= LinearKind::kO) add(ll.module + ".weight", {ll.out, ll.in}, 0);
    if (cfg.qk_norm) {
      add(p + "self_attn.q_norm.weight", {cfg.head_dim}, norm_kind);
      add(p + "self_attn.k_norm.weight", {cfg.head_dim}, norm_kind);
    }
    add(p + "post_attention_layernorm.weight", {cfg.hidden}, norm_kind);
    if (cfg.sandwich_norms) {
      add(p + "pre_feedforward_layernorm.weight", {cfg.hidden}, norm_kind);
      add(p + "post_feedforward_layernorm.weight", {cfg.hidden}, norm_kind);
    }
    if (cfg.is_moe_layer(l)) add(router_path(cfg, l) + ".weight", {cfg.n_experts, cfg.hidden}, 0);
    for (const auto& ll : lin)
      if (ll.kind > LinearKind::kO) add(ll.module + ".weight", {ll.out, ll.in}, 0);
  }
  add("model.norm.weight", {cfg.hidden}, cfg.norm_plus_one ? 3 : 2);
  if (!cfg.tie_embeddings) add("lm_head.weight", {cfg.vocab, cfg.hidden}, 0);
  w.finish();
  if (ids_count > 0) {
    std::string text;
    text.reserve(static_cast<size_t>(ids_count) * 7);
    const uint64_t key = mix(seed ^ fnv1a("random-ids"));
    for (int64_t i = 0; i < ids_count; ++i)
      text += std::to_string(mix(key ^ static_cast<uint64_t>(i)) % static_cast<uint64_t>(s.vocab)) +
              (i % 32 == 31 ? "\n" : " ");
    io::write_file_atomic(dir + "/random-ids.txt", text + "\n");
  }
}

}  // namespace fp4q::model
