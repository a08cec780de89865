#include "fp4q/model/config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "fp4q/core/error.h"

namespace fp4q::model {

namespace {

using nlohmann::json;

const char* kSupportedArchs =
    "supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM";

[[noreturn]] void bad(const std::string& where, const std::string& field, const std::string& what,
                      const std::string& hint = {}) {
  throw Error(ErrorKind::kInput, "field \"" + field + "\": " + what, where, hint);
}

bool present(const json& j, const char* key) { return j.contains(key) && !j.at(key).is_null(); }

int64_t get_int(const json& j, const char* key, const std::string& where, bool required,
                int64_t def = 0) {
  if (!present(j, key)) {
    if (required) bad(where, key, "missing (required)");
    return def;
  }
  const json& v = j.at(key);
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::floor(d) == d && std::fabs(d) < 9e15) return static_cast<int64_t>(d);
  }
  bad(where, key, "expected an integer, got " + v.dump());
}

double get_num(const json& j, const char* key, const std::string& where, bool required,
               double def = 0.0) {
  if (!present(j, key)) {
    if (required) bad(where, key, "missing (required)");
    return def;
  }
  const json& v = j.at(key);
  if (!v.is_number()) bad(where, key, "expected a number, got " + v.dump());
  return v.get<double>();
}

bool get_bool(const json& j, const char* key, const std::string& where, bool def) {
  if (!present(j, key)) return def;
  const json& v = j.at(key);
  if (!v.is_boolean()) bad(where, key, "expected true/false, got " + v.dump());
  return v.get<bool>();
}

std::string get_str(const json& j, const char* key, const std::string& where,
                    const std::string& def) {
  if (!present(j, key)) return def;
  const json& v = j.at(key);
  if (!v.is_string()) bad(where, key, "expected a string, got " + v.dump());
  return v.get<std::string>();
}

Arch parse_arch(const json& j, const std::string& where, std::string* name) {
  std::string a;
  if (present(j, "architectures")) {
    const json& v = j.at("architectures");
    if (!v.is_array() || v.empty() || !v[0].is_string())
      bad(where, "architectures", "expected a non-empty list of strings, got " + v.dump());
    if (v.size() > 1) bad(where, "architectures", "more than one architecture listed: " + v.dump(),
                          kSupportedArchs);
    a = v[0].get<std::string>();
  } else {
    std::string mt = get_str(j, "model_type", where, "");
    if (mt == "llama") a = "LlamaForCausalLM";
    else if (mt == "mistral") a = "MistralForCausalLM";
    else if (mt == "qwen2") a = "Qwen2ForCausalLM";
    else if (mt == "qwen3") a = "Qwen3ForCausalLM";
    else
      bad(where, "architectures",
          "missing, and model_type \"" + mt + "\" is not a supported decoder", kSupportedArchs);
  }
  *name = a;
  if (a == "LlamaForCausalLM") return Arch::kLlama;
  if (a == "MistralForCausalLM") return Arch::kMistral;
  if (a == "Qwen2ForCausalLM") return Arch::kQwen2;
  if (a == "Qwen3ForCausalLM") return Arch::kQwen3;
  bad(where, "architectures", "unsupported architecture \"" + a + "\"", kSupportedArchs);
}

// Reads rope_theta and the rope scaling from either generation of config.json.
void parse_rope(const json& j, const std::string& where, ModelConfig& c) {
  const json* scaling = nullptr;
  std::string sfield;
  if (present(j, "rope_parameters")) {
    const json& rp = j.at("rope_parameters");
    sfield = "rope_parameters";
    if (!rp.is_object()) bad(where, sfield, "expected an object, got " + rp.dump());
    if (!rp.contains("rope_type") && !rp.contains("rope_theta") && !rp.contains("type"))
      bad(where, sfield, "per-layer-type rope parameters are not supported: " + rp.dump(),
          "supported: one {\"rope_type\": \"default\"|\"llama3\", \"rope_theta\": ...} object");
    scaling = &rp;
    c.rope_theta = get_num(rp, "rope_theta", where + " (rope_parameters)", false,
                           get_num(j, "rope_theta", where, false, 10000.0));
  } else {
    c.rope_theta = get_num(j, "rope_theta", where, false, 10000.0);
    if (present(j, "rope_scaling")) {
      scaling = &j.at("rope_scaling");
      sfield = "rope_scaling";
      if (!scaling->is_object()) bad(where, sfield, "expected an object or null, got " + scaling->dump());
    }
  }
  if (!(c.rope_theta > 0)) bad(where, "rope_theta", "must be > 0");
  if (!scaling) return;
  const json& s = *scaling;
  std::string type = get_str(s, "rope_type", where, get_str(s, "type", where, "default"));
  const std::string sup =
      "supported rope types: \"default\" and \"llama3\" (factor, low_freq_factor, high_freq_factor, "
      "original_max_position_embeddings)";
  if (present(s, "partial_rotary_factor") &&
      get_num(s, "partial_rotary_factor", where, false, 1.0) != 1.0)
    bad(where, sfield + ".partial_rotary_factor", "partial rotary embeddings are not supported", sup);
  if (type == "default") return;
  if (type != "llama3")
    bad(where, sfield + ".rope_type", "unsupported rope scaling type \"" + type + "\"", sup);
  std::string w = where + " (" + sfield + ")";
  c.rope_type = RopeType::kLlama3;
  c.rope_factor = get_num(s, "factor", w, true);
  c.rope_low_freq_factor = get_num(s, "low_freq_factor", w, true);
  c.rope_high_freq_factor = get_num(s, "high_freq_factor", w, true);
  c.rope_original_max_pos = get_int(s, "original_max_position_embeddings", w, true);
  if (!(c.rope_factor > 0) || !(c.rope_low_freq_factor > 0) ||
      !(c.rope_high_freq_factor > c.rope_low_freq_factor) || c.rope_original_max_pos <= 0)
    bad(where, sfield,
        "llama3 parameters out of range (need factor > 0, 0 < low_freq_factor < high_freq_factor, "
        "original_max_position_embeddings > 0): " + s.dump());
}

void parse_sliding(const json& j, const std::string& where, ModelConfig& c) {
  c.layer_sliding_window.assign(c.n_layers, 0);
  int64_t window = get_int(j, "sliding_window", where, false, 0);
  if (present(j, "layer_types")) {
    const json& lt = j.at("layer_types");
    if (!lt.is_array() || static_cast<int64_t>(lt.size()) != c.n_layers)
      bad(where, "layer_types", "expected a list of num_hidden_layers = " +
                                    std::to_string(c.n_layers) + " strings, got " + lt.dump());
    for (int l = 0; l < c.n_layers; ++l) {
      std::string t = lt[l].is_string() ? lt[l].get<std::string>() : lt[l].dump();
      if (t == "full_attention") continue;
      if (t != "sliding_attention")
        bad(where, "layer_types", "layer " + std::to_string(l) + " has unsupported type \"" + t + "\"",
            "supported: full_attention, sliding_attention");
      if (window <= 0)
        bad(where, "sliding_window", "layer_types has sliding_attention but sliding_window is " +
                                         (present(j, "sliding_window") ? j.at("sliding_window").dump()
                                                                       : std::string("missing")));
      c.layer_sliding_window[l] = window;
    }
    return;
  }
  if (window <= 0) return;
  if (c.arch == Arch::kMistral) {
    c.layer_sliding_window.assign(c.n_layers, window);
  } else if (c.arch == Arch::kQwen2 || c.arch == Arch::kQwen3) {
    if (!get_bool(j, "use_sliding_window", where, false)) return;
    int64_t first = get_int(j, "max_window_layers", where, false, 28);
    for (int l = 0; l < c.n_layers; ++l)
      if (l >= first) c.layer_sliding_window[l] = window;
  }
  // Llama has no sliding-window attention; transformers ignores the field there.
}

std::vector<int32_t> parse_ids(const json& j, const char* key, const std::string& where) {
  std::vector<int32_t> out;
  if (!present(j, key)) return out;
  const json& v = j.at(key);
  if (v.is_number_integer()) {
    out.push_back(v.get<int32_t>());
  } else if (v.is_array()) {
    for (const auto& e : v) {
      if (!e.is_number_integer()) bad(where, key, "expected integers, got " + v.dump());
      out.push_back(e.get<int32_t>());
    }
  } else {
    bad(where, key, "expected an integer or a list of integers, got " + v.dump());
  }
  return out;
}

}  // namespace

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::kLlama: return "LlamaForCausalLM";
    case Arch::kMistral: return "MistralForCausalLM";
    case Arch::kQwen2: return "Qwen2ForCausalLM";
    case Arch::kQwen3: return "Qwen3ForCausalLM";
  }
  return "?";
}

ModelConfig ModelConfig::from_json(const json& j, const std::string& where, bool allow_quantized) {
  if (!j.is_object()) throw Error(ErrorKind::kInput, "expected a JSON object", where);
  ModelConfig c;
  c.arch = parse_arch(j, where, &c.arch_string);

  if (!allow_quantized && present(j, "quantization_config"))
    bad(where, "quantization_config",
        "the model is already quantized (" + j.at("quantization_config").dump().substr(0, 120) + ")",
        "fp4q needs the original bf16/fp16/fp32 checkpoint as input");

  c.hidden = get_int(j, "hidden_size", where, true);
  c.intermediate = get_int(j, "intermediate_size", where, true);
  c.n_layers = static_cast<int>(get_int(j, "num_hidden_layers", where, true));
  c.n_heads = static_cast<int>(get_int(j, "num_attention_heads", where, true));
  c.n_kv_heads = static_cast<int>(get_int(j, "num_key_value_heads", where, false, c.n_heads));
  c.vocab = get_int(j, "vocab_size", where, true);
  if (c.hidden <= 0) bad(where, "hidden_size", "must be > 0");
  if (c.intermediate <= 0) bad(where, "intermediate_size", "must be > 0");
  if (c.n_layers <= 0) bad(where, "num_hidden_layers", "must be > 0");
  if (c.n_heads <= 0) bad(where, "num_attention_heads", "must be > 0");
  if (c.vocab <= 0) bad(where, "vocab_size", "must be > 0");
  if (c.n_kv_heads <= 0 || c.n_heads % c.n_kv_heads != 0)
    bad(where, "num_key_value_heads",
        "must be > 0 and divide num_attention_heads = " + std::to_string(c.n_heads) + ", got " +
            std::to_string(c.n_kv_heads));
  if (present(j, "head_dim")) {
    c.head_dim = static_cast<int>(get_int(j, "head_dim", where, true));
  } else {
    if (c.hidden % c.n_heads != 0)
      bad(where, "head_dim", "missing and hidden_size " + std::to_string(c.hidden) +
                                 " is not divisible by num_attention_heads " + std::to_string(c.n_heads));
    c.head_dim = static_cast<int>(c.hidden / c.n_heads);
  }
  if (c.head_dim <= 0 || c.head_dim % 2 != 0)
    bad(where, "head_dim", "must be a positive even number, got " + std::to_string(c.head_dim));
  c.rms_eps = get_num(j, "rms_norm_eps", where, false, 1e-6);
  if (!(c.rms_eps >= 0)) bad(where, "rms_norm_eps", "must be >= 0");
  c.max_pos = get_int(j, "max_position_embeddings", where, false, 0);
  c.tie_embeddings = get_bool(j, "tie_word_embeddings", where, false);

  std::string act = get_str(j, "hidden_act", where, "silu");
  if (act != "silu")
    bad(where, "hidden_act", "unsupported activation \"" + act + "\"", "supported: \"silu\" (SwiGLU MLP)");
  if (get_bool(j, "mlp_bias", where, false))
    bad(where, "mlp_bias", "MLP biases (true) are not supported", "supported: mlp_bias false/absent");
  bool attention_bias = get_bool(j, "attention_bias", where, false);
  if (c.arch == Arch::kQwen2) {
    c.qkv_bias = true;  // Qwen2Attention: q/k/v_proj bias=True, o_proj bias=False, always
  } else if (attention_bias) {
    bad(where, "attention_bias",
        std::string("attention biases (true) are not supported for ") + arch_name(c.arch),
        "supported: attention_bias false/absent (q/k/v biases only for Qwen2ForCausalLM)");
  }
  c.qk_norm = c.arch == Arch::kQwen3;

  parse_rope(j, where, c);
  parse_sliding(j, where, c);

  auto bos = parse_ids(j, "bos_token_id", where);
  c.bos_id = bos.empty() ? -1 : bos[0];
  c.eos_ids = parse_ids(j, "eos_token_id", where);
  return c;
}

ModelConfig ModelConfig::parse(const std::string& text, const std::string& where,
                               bool allow_quantized) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(ErrorKind::kInput, std::string("invalid JSON: ") + e.what(), where);
  }
  return from_json(j, where, allow_quantized);
}

ModelConfig ModelConfig::load(const std::string& dir, bool allow_quantized) {
  std::string path = dir + "/config.json";
  std::ifstream f(path);
  if (!f) throw Error(ErrorKind::kIo, "cannot open file", path, "is this a Hugging Face model directory?");
  std::stringstream ss;
  ss << f.rdbuf();
  return parse(ss.str(), path, allow_quantized);
}

}  // namespace fp4q::model
