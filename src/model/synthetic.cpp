// src/model/synthetic.cpp — synthetic model directories (see synthetic.h).
#include "fp4q/model/synthetic.h"

#include <cmath>
#include <fstream>

#include "fp4q/core/error.h"
#include "fp4q/core/parallel.h"
#include "fp4q/io/writer.h"

namespace fp4q::model {

int64_t ModelShape::layer_params() const {
  return hidden * (q_dim() + 2 * kv_dim()) + q_dim() * hidden + 3 * hidden * intermediate +
         2 * hidden + (arch == Arch::kQwen3 ? 2 * head_dim : 0);
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
  return {llama("llama3-8b", 4096, 14336, 32, 32, 8), llama("llama3-70b", 8192, 28672, 80, 64, 8),
          qwen3("qwen3-8b", 4096, 12288, 36, 32), qwen3("qwen3-14b", 5120, 17408, 40, 40),
          qwen3("qwen3-32b", 5120, 25600, 64, 64), tiny};
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
  j["model_type"] = s.arch == Arch::kQwen3 ? "qwen3" : "llama";
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
  const double base = kind == 0 ? 0.5 / std::sqrt(static_cast<double>(cols)) : kind == 1 ? 1.0 : 0.05;
  const int64_t off = static_cast<int64_t>(key % 97);
  const long chunks = static_cast<long>((n + 65535) / 65536);
  parallel_for(chunks, [&](long c) {
    const int64_t e = std::min<int64_t>(n, (c + 1) * int64_t{65536});
    for (int64_t i = c * int64_t{65536}; i < e; ++i) {
      double x = normal(key, static_cast<uint64_t>(i)) * base;
      if (kind == 0 && (i % cols) % 97 == off) x *= 8.0;
      if (kind == 2) x += 1.0;
      v[i] = static_cast<float>(x);
    }
  });
  return v;
}

void write_synthetic_model(const std::string& dir, const ModelShape& s, io::DType dtype,
                           uint64_t seed, int64_t ids_count) {
  if (!io::is_float_dtype(dtype))
    throw Error(ErrorKind::kUsage, std::string("synthetic weights must be F32, F16 or BF16, not ") +
                                       io::dtype_tag(dtype), "--dtype");
  io::write_file_atomic(dir + "/config.json", shape_config_json(s).dump(2) + "\n");
  io::ShardedWriter w(dir, 0, nlohmann::json{{"format", "pt"}});
  auto add = [&](const std::string& name, std::vector<int64_t> shape, int kind) {
    const auto v = synthetic_tensor(name, shape, kind, seed);
    w.add(io::make_tensor_from_f32(name, std::move(shape), v.data(), dtype));
  };
  add("model.embed_tokens.weight", {s.vocab, s.hidden}, 1);
  for (int l = 0; l < s.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {s.hidden}, 2);
    add(p + "self_attn.q_proj.weight", {s.q_dim(), s.hidden}, 0);
    add(p + "self_attn.k_proj.weight", {s.kv_dim(), s.hidden}, 0);
    add(p + "self_attn.v_proj.weight", {s.kv_dim(), s.hidden}, 0);
    add(p + "self_attn.o_proj.weight", {s.hidden, s.q_dim()}, 0);
    if (s.arch == Arch::kQwen3) {
      add(p + "self_attn.q_norm.weight", {s.head_dim}, 2);
      add(p + "self_attn.k_norm.weight", {s.head_dim}, 2);
    }
    add(p + "post_attention_layernorm.weight", {s.hidden}, 2);
    add(p + "mlp.gate_proj.weight", {s.intermediate, s.hidden}, 0);
    add(p + "mlp.up_proj.weight", {s.intermediate, s.hidden}, 0);
    add(p + "mlp.down_proj.weight", {s.hidden, s.intermediate}, 0);
  }
  add("model.norm.weight", {s.hidden}, 2);
  if (!s.tie_embeddings) add("lm_head.weight", {s.vocab, s.hidden}, 0);
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
