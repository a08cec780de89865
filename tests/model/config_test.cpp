// config.json parsing: both transformers generations, defaults, and the clear rejection of every
// field that would change the math in a way fp4q does not implement.
#include <gtest/gtest.h>

#include "fp4q/core/error.h"
#include "fp4q/model/config.h"
#include "test_util.h"

namespace fp4q::model {
namespace {

using nlohmann::json;

json llama_base() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
    "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8,
    "num_key_value_heads": 2, "vocab_size": 1000, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "max_position_embeddings": 2048, "hidden_act": "silu", "attention_bias": false,
    "mlp_bias": false, "tie_word_embeddings": false, "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16", "pretraining_tp": 1})");
}

ModelConfig parse(const json& j) { return ModelConfig::from_json(j, "/m/config.json"); }

// Expects Error(kInput) whose message names `field`, whose where names config.json and whose
// text lists what is supported (`supported` substring).
void expect_reject(const json& j, const std::string& field, const std::string& supported = "") {
  try {
    parse(j);
    ADD_FAILURE() << "accepted: " << j.dump();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInput) << e.what();
    EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    EXPECT_NE(e.where().find("config.json"), std::string::npos) << e.what();
    if (!supported.empty())
      EXPECT_NE(std::string(e.what()).find(supported), std::string::npos) << e.what();
  }
}

TEST(Config, LegacyLlamaFields) {
  ModelConfig c = parse(llama_base());
  EXPECT_EQ(c.arch, Arch::kLlama);
  EXPECT_EQ(c.hidden, 256);
  EXPECT_EQ(c.intermediate, 512);
  EXPECT_EQ(c.n_layers, 4);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 32);  // hidden / heads
  EXPECT_EQ(c.q_dim(), 256);
  EXPECT_EQ(c.kv_dim(), 64);
  EXPECT_EQ(c.vocab, 1000);
  EXPECT_DOUBLE_EQ(c.rms_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_type, RopeType::kDefault);
  EXPECT_EQ(c.max_pos, 2048);
  EXPECT_FALSE(c.tie_embeddings);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_EQ(c.bos_id, 128000);
  EXPECT_EQ(c.eos_ids, (std::vector<int32_t>{128001, 128008, 128009}));
  EXPECT_EQ(c.layer_sliding_window, std::vector<int64_t>(4, 0));
}

TEST(Config, Defaults) {
  json j = json::parse(R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10, "head_dim": null,
    "bos_token_id": null})");
  ModelConfig c = parse(j);  // no "architectures": from model_type
  EXPECT_EQ(c.arch, Arch::kLlama);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(c.rms_eps, 1e-6);
  EXPECT_EQ(c.bos_id, -1);
  EXPECT_TRUE(c.eos_ids.empty());
  EXPECT_FALSE(c.tie_embeddings);
}

TEST(Config, Llama3RopeScalingBothGenerations) {
  json j = llama_base();
  j["rope_scaling"] = json::parse(R"({"factor": 32.0, "high_freq_factor": 4.0,
    "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"})");
  ModelConfig c = parse(j);
  EXPECT_EQ(c.rope_type, RopeType::kLlama3);
  EXPECT_DOUBLE_EQ(c.rope_factor, 32.0);
  EXPECT_DOUBLE_EQ(c.rope_low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_original_max_pos, 8192);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  // Old key "type" instead of "rope_type".
  j["rope_scaling"].erase("rope_type");
  j["rope_scaling"]["type"] = "llama3";
  EXPECT_EQ(parse(j).rope_type, RopeType::kLlama3);
  // transformers >= 5: rope_parameters carries theta too.
  json k = llama_base();
  k.erase("rope_theta");
  k["rope_parameters"] = json::parse(R"({"rope_type": "llama3", "rope_theta": 250000.0,
    "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 4096})");
  ModelConfig c5 = parse(k);
  EXPECT_EQ(c5.rope_type, RopeType::kLlama3);
  EXPECT_DOUBLE_EQ(c5.rope_theta, 250000.0);
  EXPECT_EQ(c5.rope_original_max_pos, 4096);
  // default rope_type in rope_parameters / null rope_scaling.
  k["rope_parameters"] = json::parse(R"({"rope_type": "default", "rope_theta": 1000.0})");
  EXPECT_EQ(parse(k).rope_type, RopeType::kDefault);
  EXPECT_DOUBLE_EQ(parse(k).rope_theta, 1000.0);
  j["rope_scaling"] = nullptr;
  EXPECT_EQ(parse(j).rope_type, RopeType::kDefault);
  // Missing llama3 parameter.
  json m = llama_base();
  m["rope_scaling"] = json::parse(R"({"rope_type": "llama3", "factor": 8.0})");
  expect_reject(m, "low_freq_factor");
}

TEST(Config, ArchitectureFeatures) {
  json q2 = llama_base();
  q2["architectures"] = {"Qwen2ForCausalLM"};
  q2["model_type"] = "qwen2";
  q2.erase("attention_bias");
  q2.erase("mlp_bias");
  q2["sliding_window"] = 4096;
  q2["use_sliding_window"] = false;
  q2["max_window_layers"] = 2;
  ModelConfig c2 = parse(q2);
  EXPECT_EQ(c2.arch, Arch::kQwen2);
  EXPECT_TRUE(c2.qkv_bias);
  EXPECT_FALSE(c2.qk_norm);
  EXPECT_EQ(c2.layer_sliding_window, std::vector<int64_t>(4, 0));
  q2["use_sliding_window"] = true;  // layers >= max_window_layers use the window
  EXPECT_EQ(parse(q2).layer_sliding_window, (std::vector<int64_t>{0, 0, 4096, 4096}));
  q2["layer_types"] = {"full_attention", "sliding_attention", "full_attention", "full_attention"};
  EXPECT_EQ(parse(q2).layer_sliding_window, (std::vector<int64_t>{0, 4096, 0, 0}));

  json q3 = llama_base();
  q3["architectures"] = {"Qwen3ForCausalLM"};
  q3["head_dim"] = 128;  // q_dim 1024 != hidden 256
  ModelConfig c3 = parse(q3);
  EXPECT_TRUE(c3.qk_norm);
  EXPECT_FALSE(c3.qkv_bias);
  EXPECT_EQ(c3.head_dim, 128);
  EXPECT_EQ(c3.q_dim(), 1024);

  json mi = llama_base();
  mi["architectures"] = {"MistralForCausalLM"};
  mi["sliding_window"] = 4096;
  EXPECT_EQ(parse(mi).layer_sliding_window, std::vector<int64_t>(4, 4096));
  mi["sliding_window"] = nullptr;
  EXPECT_EQ(parse(mi).layer_sliding_window, std::vector<int64_t>(4, 0));

  json ll = llama_base();
  ll["sliding_window"] = 16;  // not used by LlamaForCausalLM (transformers ignores it)
  EXPECT_EQ(parse(ll).layer_sliding_window, std::vector<int64_t>(4, 0));
}

TEST(Config, TinyModelConfigsFromTransformers5) {
  ModelConfig l3 = ModelConfig::load(testing::tiny_dir() + "/llama3_tiny");
  EXPECT_EQ(l3.rope_type, RopeType::kLlama3);
  EXPECT_DOUBLE_EQ(l3.rope_factor, 8.0);
  EXPECT_EQ(l3.n_kv_heads, 2);
  ModelConfig q3 = ModelConfig::load(testing::tiny_dir() + "/qwen3_tiny");
  EXPECT_DOUBLE_EQ(q3.rope_theta, 1e6);
  EXPECT_EQ(q3.arch, Arch::kQwen3);
  try {
    ModelConfig::load("/nonexistent/dir");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
  }
}

TEST(Config, RejectsUnsupportedArchitecture) {
  json j = llama_base();
  j["architectures"] = {"GPT2LMHeadModel"};
  expect_reject(j, "architectures", "Qwen3ForCausalLM");
  j["architectures"] = {"Gemma2ForCausalLM"};
  expect_reject(j, "Gemma2ForCausalLM", "LlamaForCausalLM");
  json k = llama_base();
  k.erase("architectures");
  k["model_type"] = "phimoe";
  expect_reject(k, "architectures", "MistralForCausalLM");
  // Near misses name what is supported instead.
  j["architectures"] = {"Gemma3ForConditionalGeneration"};
  expect_reject(j, "Gemma3ForConditionalGeneration", "Gemma3ForCausalLM");
  j["architectures"] = {"Qwen2MoeForCausalLM"};
  expect_reject(j, "Qwen2MoeForCausalLM", "shared experts");
}

TEST(Config, RejectsUnsupportedRopeScaling) {
  for (const char* t : {"dynamic", "yarn", "ntk"}) {
    json j = llama_base();
    j["rope_scaling"] = {{"rope_type", t}, {"factor", 4.0}};
    expect_reject(j, "rope_scaling", "llama3");
    json k = llama_base();
    k["rope_parameters"] = {{"rope_type", t}, {"factor", 4.0}, {"rope_theta", 10000.0}};
    expect_reject(k, "rope_parameters", "longrope");
  }
  // longrope needs its factor lists (rotary_dim / 2 = 16 each here).
  for (const char* t : {"longrope", "su"}) {
    json j = llama_base();
    j["rope_scaling"] = {{"type", t}, {"short_factor", std::vector<double>(16, 1.0)}};
    expect_reject(j, "long_factor");
    j["rope_scaling"]["long_factor"] = std::vector<double>(15, 1.0);
    expect_reject(j, "long_factor", "16");
  }
  json p = llama_base();
  p["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e4}, {"partial_rotary_factor", 0.5}};
  expect_reject(p, "partial_rotary_factor");
}

TEST(Config, RejectsMathChangingFields) {
  json a = llama_base();
  a["hidden_act"] = "gelu";
  expect_reject(a, "hidden_act", "silu");
  json b = llama_base();
  b["attention_bias"] = true;
  expect_reject(b, "attention_bias", "supported");
  json b3 = llama_base();
  b3["architectures"] = {"Qwen3ForCausalLM"};
  b3["attention_bias"] = true;
  expect_reject(b3, "attention_bias");
  json c = llama_base();
  c["mlp_bias"] = true;
  expect_reject(c, "mlp_bias", "supported");
  json d = llama_base();
  d["quantization_config"] = {{"quant_method", "fp_quant"}};
  expect_reject(d, "quantization_config");
  json e = llama_base();
  e["layer_types"] = {"full_attention", "chunked_attention", "full_attention", "full_attention"};
  expect_reject(e, "layer_types", "full_attention");
  json f = llama_base();
  f["layer_types"] = {"full_attention", "sliding_attention", "full_attention", "full_attention"};
  expect_reject(f, "sliding_window");  // sliding layers need a window
}

TEST(Config, RejectsInconsistentShapes) {
  json a = llama_base();
  a["num_key_value_heads"] = 3;
  expect_reject(a, "num_key_value_heads");
  json b = llama_base();
  b["head_dim"] = 15;
  expect_reject(b, "head_dim");
  json c = llama_base();
  c["num_attention_heads"] = 7;
  c["num_key_value_heads"] = 7;
  expect_reject(c, "head_dim");  // 256 % 7 != 0 and no head_dim
  json d = llama_base();
  d.erase("vocab_size");
  expect_reject(d, "vocab_size");
  json e = llama_base();
  e["hidden_size"] = "256";
  expect_reject(e, "hidden_size");
  json f = llama_base();
  f["tie_word_embeddings"] = 1;
  expect_reject(f, "tie_word_embeddings");
}

}  // namespace
}  // namespace fp4q::model
