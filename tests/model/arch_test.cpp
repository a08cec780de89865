// Issue 12 architectures (Qwen3-MoE, Mixtral, Gemma-3, Phi-3): config parsing of published
// configs, the new building blocks against scalar references (windowed / soft-capped attention,
// partial RoPE, longrope frequencies, GELU-tanh, top-k routing), whole forwards of synthetic
// models of each architecture against an independent float64 re-implementation of transformers'
// semantics, the MoE hook protocol, clear errors for unsupported layouts, and the transformers
// goldens of tools/golden_models_moe.py (logits and routing decisions).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <numeric>
#include <random>

#include "fp4q/core/error.h"
#include "fp4q/core/parallel.h"
#include "fp4q/io/safetensors.h"
#include "fp4q/io/writer.h"
#include "fp4q/model/model.h"
#include "fp4q/model/moe.h"
#include "fp4q/model/synthetic.h"
#include "test_util.h"

namespace fp4q::model {
namespace {

using nlohmann::json;
using testing::compare;
using testing::read_json;
using testing::tiny_dir;

ModelConfig parse(const json& j) { return ModelConfig::from_json(j, "/m/config.json"); }

void expect_reject(const json& j, const std::string& needle) {
  try {
    parse(j);
    ADD_FAILURE() << "accepted: " << j.dump().substr(0, 300);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInput) << e.what();
    EXPECT_NE((std::string(e.what()) + e.hint()).find(needle), std::string::npos) << e.what() << " | " << e.hint();
  }
}

// ---- configs of published checkpoints ---------------------------------------------------------

TEST(ArchConfig, Qwen3Moe30BA3B) {
  // Qwen/Qwen3-30B-A3B config.json (transformers 4.51 generation).
  const json j = json::parse(R"({"architectures": ["Qwen3MoeForCausalLM"], "attention_bias": false,
    "attention_dropout": 0.0, "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645,
    "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 6144, "max_position_embeddings": 40960, "max_window_layers": 48,
    "mlp_only_layers": [], "model_type": "qwen3_moe", "moe_intermediate_size": 768,
    "norm_topk_prob": true, "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8,
    "num_hidden_layers": 48, "num_key_value_heads": 4, "output_router_logits": false,
    "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000.0,
    "router_aux_loss_coef": 0.001, "sliding_window": null, "tie_word_embeddings": false,
    "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": true,
    "use_sliding_window": false, "vocab_size": 151936})");
  const ModelConfig c = parse(j);
  EXPECT_EQ(c.arch, Arch::kQwen3Moe);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_EQ(c.n_experts, 128);
  EXPECT_EQ(c.n_experts_per_tok, 8);
  EXPECT_EQ(c.moe_intermediate, 768);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.layer_moe, std::vector<bool>(48, true));
  EXPECT_EQ(c.layer_sliding_window, std::vector<int64_t>(48, 0));
  const auto lin = layer_linears(c, 7);
  ASSERT_EQ(lin.size(), 4u + 3u * 128u);  // q, k, v, o + 128 experts x (gate, up, down)
  EXPECT_EQ(lin[4].module, "model.layers.7.mlp.experts.0.gate_proj");
  EXPECT_EQ(lin[4].out, 768);
  EXPECT_EQ(lin[6].module, "model.layers.7.mlp.experts.0.down_proj");
  EXPECT_EQ(lin[6].in, 768);
  EXPECT_EQ(lin.back().module, "model.layers.7.mlp.experts.127.down_proj");
  EXPECT_EQ(router_path(c, 7), "model.layers.7.mlp.gate");
  // Dense layers: mlp_only_layers and decoder_sparse_step.
  json d = j;
  d["mlp_only_layers"] = {0, 47};
  d["decoder_sparse_step"] = 2;
  const ModelConfig cd = parse(d);
  EXPECT_FALSE(cd.layer_moe[0]);
  EXPECT_TRUE(cd.layer_moe[1]);
  EXPECT_FALSE(cd.layer_moe[2]);
  EXPECT_FALSE(cd.layer_moe[47]);
  EXPECT_EQ(layer_linears(cd, 0).size(), 7u);
  EXPECT_EQ(layer_linears(cd, 0)[4].out, 6144);  // the dense MLP uses intermediate_size
  json bad = j;
  bad["num_experts_per_tok"] = 129;
  expect_reject(bad, "num_experts_per_tok");
  bad = j;
  bad["shared_expert_intermediate_size"] = 512;
  expect_reject(bad, "shared experts");
}

TEST(ArchConfig, Mixtral8x7B) {
  const json j = json::parse(R"({"architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0,
    "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768,
    "model_type": "mixtral", "num_attention_heads": 32, "num_experts_per_tok": 2,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8,
    "output_router_logits": false, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
    "router_aux_loss_coef": 0.02, "sliding_window": null, "tie_word_embeddings": false,
    "torch_dtype": "bfloat16", "transformers_version": "4.36.0.dev0", "use_cache": true,
    "vocab_size": 32000})");
  const ModelConfig c = parse(j);
  EXPECT_EQ(c.arch, Arch::kMixtral);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_EQ(c.n_experts, 8);
  EXPECT_EQ(c.moe_intermediate, 14336);
  EXPECT_TRUE(c.norm_topk_prob);  // Mixtral always renormalises
  const auto lin = layer_linears(c, 3);
  ASSERT_EQ(lin.size(), 4u + 24u);
  EXPECT_EQ(lin[4].module, "model.layers.3.block_sparse_moe.experts.0.w1");
  EXPECT_EQ(lin[5].module, "model.layers.3.block_sparse_moe.experts.0.w3");
  EXPECT_EQ(lin[6].module, "model.layers.3.block_sparse_moe.experts.0.w2");
  EXPECT_EQ(lin[6].kind, LinearKind::kDown);
  EXPECT_EQ(router_path(c, 3), "model.layers.3.block_sparse_moe.gate");
}

TEST(ArchConfig, Gemma3_1bLegacyAndTransformers5) {
  // google/gemma-3-1b-pt config.json (legacy rope fields, no layer_types).
  const json j = json::parse(R"({"architectures": ["Gemma3ForCausalLM"], "attention_bias": false,
    "attention_dropout": 0.0, "attn_logit_softcapping": null, "bos_token_id": 2,
    "cache_implementation": "hybrid", "eos_token_id": 1, "final_logit_softcapping": null,
    "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152,
    "initializer_range": 0.02, "intermediate_size": 6912, "max_position_embeddings": 32768,
    "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 26,
    "num_key_value_heads": 1, "pad_token_id": 0, "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000, "rope_scaling": null,
    "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6,
    "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0", "use_cache": true,
    "vocab_size": 262144})");
  const ModelConfig c = parse(j);
  EXPECT_EQ(c.arch, Arch::kGemma3);
  EXPECT_TRUE(c.tie_embeddings);  // Gemma3TextConfig default
  EXPECT_TRUE(c.norm_plus_one && c.sandwich_norms && c.scale_embeddings && c.qk_norm);
  EXPECT_EQ(c.act, Activation::kGeluTanh);
  EXPECT_DOUBLE_EQ(c.attention_scale(), 1.0 / 16.0);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_DOUBLE_EQ(c.sliding_rope_theta, 1e4);
  EXPECT_EQ(c.attn_softcap, 0.0);
  for (int l = 0; l < 26; ++l) {
    const bool sliding = (l + 1) % 6 != 0;
    EXPECT_EQ(c.layer_sliding[l], sliding) << l;
    EXPECT_EQ(c.layer_sliding_window[l], sliding ? 512 : 0) << l;
  }
  // transformers 5 spelling: per-layer-type rope_parameters (linear scaling on global layers).
  json k = j;
  k.erase("rope_theta");
  k.erase("rope_local_base_freq");
  k.erase("rope_scaling");
  k["rope_parameters"] = {{"full_attention", {{"rope_type", "linear"}, {"factor", 8.0}, {"rope_theta", 1e6}}},
                          {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 1e4}}}};
  k["layer_types"] = std::vector<std::string>(26, "sliding_attention");
  k["layer_types"][25] = "full_attention";
  const ModelConfig c5 = parse(k);
  EXPECT_EQ(c5.rope_type, RopeType::kLinear);
  EXPECT_DOUBLE_EQ(c5.rope_factor, 8.0);
  EXPECT_DOUBLE_EQ(c5.sliding_rope_theta, 1e4);
  EXPECT_TRUE(c5.layer_sliding[5]);
  EXPECT_FALSE(c5.layer_sliding[25]);
  json s = j;
  s["attn_logit_softcapping"] = 50.0;
  s["final_logit_softcapping"] = 30.0;
  s["query_pre_attn_scalar"] = 144;
  const ModelConfig cs = parse(s);
  EXPECT_DOUBLE_EQ(cs.attn_softcap, 0.0);  // transformers' Gemma3Attention does not apply it
  
  EXPECT_DOUBLE_EQ(cs.final_softcap, 30.0);
  EXPECT_DOUBLE_EQ(cs.attention_scale(), 1.0 / 12.0);
  json b = j;
  b["hidden_activation"] = "gelu";
  expect_reject(b, "hidden_activation");
  b = j;
  b["use_bidirectional_attention"] = true;
  expect_reject(b, "use_bidirectional_attention");
  b = k;
  b["rope_parameters"]["sliding_attention"]["rope_type"] = "linear";
  expect_reject(b, "sliding_attention");
  // soft-capping is only implemented where transformers applies it
  json l = json::parse(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10, "final_logit_softcapping": 30.0})");
  expect_reject(l, "final_logit_softcapping");
}

TEST(ArchConfig, Phi3AndPhi4MiniLongRope) {
  // microsoft/Phi-3-mini-4k-instruct (abridged to the fields that matter).
  const json j = json::parse(R"({"architectures": ["Phi3ForCausalLM"], "attention_dropout": 0.0,
    "bos_token_id": 1, "embd_pdrop": 0.0, "eos_token_id": 32000, "hidden_act": "silu",
    "hidden_size": 3072, "initializer_range": 0.02, "intermediate_size": 8192,
    "max_position_embeddings": 4096, "model_type": "phi3", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 32, "original_max_position_embeddings": 4096,
    "pad_token_id": 32000, "resid_pdrop": 0.0, "rms_norm_eps": 1e-05, "rope_scaling": null,
    "rope_theta": 10000.0, "sliding_window": 2047, "tie_word_embeddings": false,
    "torch_dtype": "bfloat16", "use_cache": true, "vocab_size": 32064})");
  const ModelConfig c = parse(j);
  EXPECT_EQ(c.arch, Arch::kPhi3);
  EXPECT_TRUE(c.fused_qkv && c.fused_gate_up);
  EXPECT_EQ(c.layer_sliding_window, std::vector<int64_t>(32, 2047));
  const auto lin = layer_linears(c, 0);
  ASSERT_EQ(lin.size(), 4u);
  EXPECT_EQ(lin[0].module, "model.layers.0.self_attn.qkv_proj");
  EXPECT_EQ(lin[0].out, 3 * 3072);
  EXPECT_EQ(lin[2].module, "model.layers.0.mlp.gate_up_proj");
  EXPECT_EQ(lin[2].kind, LinearKind::kGate);
  EXPECT_EQ(lin[2].out, 2 * 8192);
  EXPECT_EQ(lin[3].kind, LinearKind::kDown);
  // Phi-4-mini-instruct: partial rotary 0.75 of head_dim 128 and longrope (48 factors each).
  json k = j;
  k["hidden_size"] = 3072;
  k["num_attention_heads"] = 24;
  k["num_key_value_heads"] = 8;
  k["partial_rotary_factor"] = 0.75;
  k["max_position_embeddings"] = 131072;
  k["sliding_window"] = 262144;
  std::vector<double> sf(48, 1.0), lf(48, 2.0);
  k["rope_scaling"] = {{"long_factor", lf}, {"short_factor", sf}, {"type", "longrope"}};
  const ModelConfig c4 = parse(k);
  EXPECT_EQ(c4.head_dim, 128);
  EXPECT_EQ(c4.rotary_dim(), 96);
  EXPECT_EQ(c4.rope_type, RopeType::kLongRope);
  EXPECT_EQ(c4.rope_original_max_pos, 4096);
  EXPECT_NEAR(c4.rope_attention_factor, std::sqrt(1.0 + std::log(32.0) / std::log(4096.0)), 1e-15);
  k["rope_scaling"]["short_factor"] = std::vector<double>(64, 1.0);  // rotary_dim / 2 = 48
  expect_reject(k, "short_factor");
}

// ---- building blocks ----------------------------------------------------------------------------

TEST(ArchLayers, AttentionWindowSoftcapScaleMatchReference) {
  struct Case { int64_t T; int heads, kv, hd; AttentionOptions o; };
  const Case cases[] = {
      {37, 4, 2, 16, {0.0, 0.0, 8}},    {130, 2, 1, 32, {0.0, 0.0, 50}},
      {130, 2, 2, 16, {0.2, 20.0, 0}},  {200, 4, 1, 8, {0.125, 5.0, 64}},
      {70, 2, 2, 16, {0.0, 0.0, 1}},    {66, 2, 1, 16, {0.0, 0.0, 66}},
  };
  for (const Case& cs : cases) {
    const int64_t qd = cs.heads * cs.hd, kvd = cs.kv * cs.hd;
    auto q = testing::random_vec(cs.T * qd, 1, 1.5f), k = testing::random_vec(cs.T * kvd, 2, 1.5f),
         v = testing::random_vec(cs.T * kvd, 3);
    std::vector<float> a(cs.T * qd), b(cs.T * qd);
    attention_batched(q.data(), k.data(), v.data(), 1, cs.T, cs.heads, cs.kv, cs.hd, a.data(), cs.o);
    attention_ref(q.data(), k.data(), v.data(), cs.T, cs.heads, cs.kv, cs.hd, b.data(), cs.o);
    const auto d = compare(a, b, a.size());
    EXPECT_LE(d.worst_scaled, 2e-6) << "T " << cs.T << " window " << cs.o.window << " cap " << cs.o.softcap;
  }
  // A window of 1: every token attends only to itself, so the output is v (per kv head).
  const int64_t T = 20;
  auto q = testing::random_vec(T * 32, 4), k = testing::random_vec(T * 32, 5), v = testing::random_vec(T * 32, 6);
  std::vector<float> o(T * 32);
  AttentionOptions w1;
  w1.window = 1;
  attention_batched(q.data(), k.data(), v.data(), 1, T, 2, 2, 16, o.data(), w1);
  for (size_t i = 0; i < o.size(); ++i) ASSERT_NEAR(o[i], v[i], 1e-6) << i;
  // Batched sequences with a window equal one call per sequence, bit for bit.
  auto q2 = testing::random_vec(3 * 50 * 32, 7), k2 = testing::random_vec(3 * 50 * 16, 8),
       v2 = testing::random_vec(3 * 50 * 16, 9);
  AttentionOptions w;
  w.window = 9;
  w.softcap = 10;
  std::vector<float> all(3 * 50 * 32), one(50 * 32);
  attention_batched(q2.data(), k2.data(), v2.data(), 3, 50, 2, 1, 16, all.data(), w);
  for (int s = 0; s < 3; ++s) {
    attention_batched(q2.data() + s * 50 * 32, k2.data() + s * 50 * 16, v2.data() + s * 50 * 16, 1, 50, 2, 1,
                      16, one.data(), w);
    EXPECT_EQ(0, std::memcmp(one.data(), all.data() + s * 50 * 32, one.size() * 4)) << s;
  }
}

TEST(ArchLayers, PartialRotaryLinearAndLongRope) {
  json j = json::parse(R"({"architectures": ["Phi3ForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10, "max_position_embeddings": 64,
    "original_max_position_embeddings": 8, "partial_rotary_factor": 0.75,
    "rope_scaling": {"type": "longrope", "short_factor": [1.0, 1.1, 1.3, 1.7, 2.3, 3.1],
                     "long_factor": [1.0, 1.5, 2.5, 4.0, 6.5, 9.0]}})");
  const ModelConfig c = parse(j);
  ASSERT_EQ(c.rotary_dim(), 12);
  for (bool lc : {false, true}) {
    const auto f = rope_inv_freq(c, lc);
    const auto r = rope_inv_freq_ref(c, lc);
    ASSERT_EQ(f.size(), 6u);
    for (int i = 0; i < 6; ++i) {
      const double want = std::pow(10000.0, -2.0 * i / 12.0) / (lc ? c.rope_long_factor : c.rope_short_factor)[i];
      EXPECT_NEAR(f[i], want, 4e-7 * want) << i;  // float32 pow, product, reciprocal
      EXPECT_NEAR(r[i], want, 1e-15 * want) << i;
    }
  }
  // apply_rope over 12 of 16 dims: dims 12..15 of every head pass through untouched.
  const auto inv = rope_inv_freq(c, true);
  const RopeTable tab = make_rope_table(inv, 20, static_cast<float>(c.rope_attention_factor));
  auto x = testing::random_vec(20 * 64, 3);
  auto y = x, z = x;
  apply_rope(y.data(), 20, 4, 16, 64, tab);
  std::vector<double> invd(inv.begin(), inv.end());
  apply_rope_ref(z.data(), 20, 4, 16, 64, invd, static_cast<float>(c.rope_attention_factor));
  for (int64_t t = 0; t < 20; ++t)
    for (int h = 0; h < 4; ++h)
      for (int e = 0; e < 16; ++e) {
        const size_t i = t * 64 + h * 16 + e;
        if (e >= 12) {
          ASSERT_EQ(y[i], x[i]);
        }
        ASSERT_NEAR(y[i], z[i], 1e-5 * (1 + std::fabs(z[i])));
      }
  // linear scaling: default / factor
  json g = json::parse(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10,
    "rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}})");
  const ModelConfig cl = parse(g);
  const auto fl = rope_inv_freq(cl);
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(fl[i], std::pow(1e4, -i / 8.0) / 4.0, 1e-7 * fl[i]);
}

TEST(ArchLayers, GeluTanhGluAndSoftcap) {
  auto g = testing::random_vec(10000, 1, 3.0f), u = testing::random_vec(10000, 2);
  for (Activation a : {Activation::kSilu, Activation::kGeluTanh}) {
    auto x = g, y = g;
    glu(x.data(), u.data(), 10000, a);
    glu_ref(y.data(), u.data(), 10000, a);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(x[i], y[i], 1e-6 * (1 + std::fabs(y[i]))) << i;
  }
  std::vector<float> v = {0.0f, 1.0f, -30.0f, 1000.0f};
  softcap(v.data(), 4, 15.0);
  EXPECT_EQ(v[0], 0.0f);
  EXPECT_NEAR(v[1], 15.0 * std::tanh(1.0 / 15.0), 1e-6);
  EXPECT_NEAR(v[2], -15.0 * std::tanh(2.0), 1e-5);
  EXPECT_NEAR(v[3], 15.0, 1e-5);
}

TEST(ArchLayers, RoutingMatchesReference) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  for (int E : {4, 8, 128})
    for (int k : {1, 2, 8})
      for (bool renorm : {false, true}) {
        if (k > E) continue;
        const int64_t T = 300;
        std::vector<float> logits(T * E);
        for (auto& x : logits) x = nd(rng);
        const MoeRouting a = route_topk(logits.data(), T, E, k, renorm);
        const MoeRouting b = route_topk_ref(logits.data(), T, E, k, renorm);
        ASSERT_EQ(a.ids, b.ids) << E << " " << k;
        for (size_t i = 0; i < a.weights.size(); ++i)
          ASSERT_NEAR(a.weights[i], b.weights[i], 1e-6) << i;
        // CSR view: every (token, expert) pair once, rows ascending per expert.
        ASSERT_EQ(a.offsets.back(), T * k);
        for (int e = 0; e < E; ++e)
          for (int64_t i = a.offsets[e] + 1; i < a.offsets[e + 1]; ++i) ASSERT_LT(a.row_ids[i - 1], a.row_ids[i]);
        if (renorm)
          for (int64_t t = 0; t < T; ++t) {
            double s = 0;
            for (int j = 0; j < k; ++j) s += a.weights[t * k + j];
            ASSERT_NEAR(s, 1.0, 1e-6);
          }
      }
  // Ties go to the lower expert id.
  std::vector<float> tie = {1.0f, 3.0f, 3.0f, 0.0f};
  const MoeRouting r = route_topk(tie.data(), 1, 4, 2, true);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{1, 2}));
  EXPECT_FLOAT_EQ(r.weights[0], 0.5f);
}

// ---- synthetic models vs an independent float64 forward ---------------------------------------

std::string synth_dir(const std::string& preset, const std::function<void(json&)>& edit = {}) {
  namespace fs = std::filesystem;
  const std::string dir = ::testing::TempDir() + "/fp4q_arch_" + preset + "_" + std::to_string(::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  ModelShape s = model_shape(preset);
  write_synthetic_model(dir, s, io::DType::kBF16, 17, 0, edit);
  return dir;
}

// transformers' semantics, written independently of the fp4q kernels, all in double.
struct RefModel {
  const Model& m;
  const ModelConfig& c;
  std::vector<LayerWeights> layers;
  explicit RefModel(const Model& mm) : m(mm), c(mm.config()) {
    for (int l = 0; l < c.n_layers; ++l) layers.push_back(m.load_layer(l));
  }
  using V = std::vector<double>;
  void norm(const double* x, const std::vector<float>& w, double* y, int64_t n) const {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += x[i] * x[i];
    const double inv = 1.0 / std::sqrt(s / n + c.rms_eps);
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * inv * (c.norm_plus_one ? 1.0 + w[i] : w[i]);
  }
  static void lin(const double* x, const float* W, int64_t out, int64_t in, double* y) {
    for (int64_t o = 0; o < out; ++o) {
      double s = 0;
      for (int64_t i = 0; i < in; ++i) s += x[i] * W[o * in + i];
      y[o] = s;
    }
  }
  double act(double g) const {
    return c.act == Activation::kGeluTanh
               ? 0.5 * g * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (g + 0.044715 * g * g * g)))
               : g / (1.0 + std::exp(-g));
  }
  void mlp(const double* x, const LinearWeights& gate, const LinearWeights& up, int64_t up_row0,
           const LinearWeights& down, int64_t I, double* y) const {
    const int64_t H = c.hidden;
    V g(I), u(I);
    lin(x, gate.w.data(), I, H, g.data());
    lin(x, up.w.data() + up_row0 * H, I, H, u.data());
    for (int64_t i = 0; i < I; ++i) g[i] = act(g[i]) * u[i];
    lin(g.data(), down.w.data(), H, I, y);
  }
  std::vector<double> forward(const std::vector<int32_t>& ids) const {
    const int64_t T = ids.size(), H = c.hidden, hd = c.head_dim, QD = c.q_dim(), KVD = c.kv_dim();
    V h(T * H);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < H; ++j)
        h[t * H + j] = static_cast<double>(m.embed({ids[t]})[j]);  // embed() includes Gemma's scale
    for (int l = 0; l < c.n_layers; ++l) {
      const LayerWeights& w = layers[l];
      V xn(T * H), q(T * QD), k(T * KVD), v(T * KVD), ctx(T * QD, 0.0), y(H);
      for (int64_t t = 0; t < T; ++t) norm(&h[t * H], w.input_norm, &xn[t * H], H);
      for (int64_t t = 0; t < T; ++t) {
        const float* W = w[LinearKind::kQ].w.data();
        lin(&xn[t * H], W, QD, H, &q[t * QD]);
        lin(&xn[t * H], c.fused_qkv ? W + QD * H : w[LinearKind::kK].w.data(), KVD, H, &k[t * KVD]);
        lin(&xn[t * H], c.fused_qkv ? W + (QD + KVD) * H : w[LinearKind::kV].w.data(), KVD, H, &v[t * KVD]);
        if (c.qk_norm) {
          for (int hh = 0; hh < c.n_heads; ++hh) norm(&q[t * QD + hh * hd], w.q_norm, &q[t * QD + hh * hd], hd);
          for (int hh = 0; hh < c.n_kv_heads; ++hh) norm(&k[t * KVD + hh * hd], w.k_norm, &k[t * KVD + hh * hd], hd);
        }
      }
      // RoPE: this layer's base and type, rotary dims first.
      const bool sliding_rope = c.sliding_rope_theta > 0 && c.layer_sliding[l];
      const int rd = sliding_rope ? hd : c.rotary_dim(), half = rd / 2;
      const bool long_ctx = c.rope_type == RopeType::kLongRope && T > c.rope_original_max_pos;
      const double sc = !sliding_rope && c.rope_type == RopeType::kLongRope ? c.rope_attention_factor : 1.0;
      for (int64_t t = 0; t < T; ++t)
        for (int which = 0; which < 2; ++which) {
          double* base = which ? &k[t * KVD] : &q[t * QD];
          const int nh = which ? c.n_kv_heads : c.n_heads;
          for (int hh = 0; hh < nh; ++hh)
            for (int i = 0; i < half; ++i) {
              double f = std::pow(sliding_rope ? c.sliding_rope_theta : c.rope_theta, -2.0 * i / rd);
              if (!sliding_rope && c.rope_type == RopeType::kLinear) f /= c.rope_factor;
              if (!sliding_rope && c.rope_type == RopeType::kLongRope)
                f /= (long_ctx ? c.rope_long_factor : c.rope_short_factor)[i];
              const double cs = std::cos(t * f) * sc, sn = std::sin(t * f) * sc;
              double* x = base + hh * hd;
              const double a = x[i], b = x[i + half];
              x[i] = a * cs - b * sn;
              x[i + half] = b * cs + a * sn;
            }
        }
      const int64_t win = c.layer_sliding_window[l];
      const int group = c.n_heads / c.n_kv_heads;
      for (int hh = 0; hh < c.n_heads; ++hh)
        for (int64_t t = 0; t < T; ++t) {
          const int64_t s0 = win > 0 ? std::max<int64_t>(0, t - win + 1) : 0;
          V p(T, 0.0);
          double mx = -INFINITY;
          for (int64_t s = s0; s <= t; ++s) {
            double d = 0;
            for (int e = 0; e < hd; ++e) d += q[t * QD + hh * hd + e] * k[s * KVD + (hh / group) * hd + e];
            d *= c.attention_scale();
            if (c.attn_softcap > 0) d = std::tanh(d / c.attn_softcap) * c.attn_softcap;
            p[s] = d;
            mx = std::max(mx, d);
          }
          double sum = 0;
          for (int64_t s = s0; s <= t; ++s) sum += (p[s] = std::exp(p[s] - mx));
          for (int64_t s = s0; s <= t; ++s)
            for (int e = 0; e < hd; ++e)
              ctx[t * QD + hh * hd + e] += p[s] / sum * v[s * KVD + (hh / group) * hd + e];
        }
      for (int64_t t = 0; t < T; ++t) {
        lin(&ctx[t * QD], w[LinearKind::kO].w.data(), H, QD, y.data());
        if (c.sandwich_norms) norm(y.data(), w.post_norm, y.data(), H);
        for (int64_t j = 0; j < H; ++j) h[t * H + j] += y[j];
      }
      for (int64_t t = 0; t < T; ++t) {
        V x(H), o(H, 0.0);
        norm(&h[t * H], c.sandwich_norms ? w.pre_ff_norm : w.post_norm, x.data(), H);
        if (c.is_moe_layer(l)) {
          const int E = c.n_experts, K = c.n_experts_per_tok;
          V lg(E), pr(E);
          lin(x.data(), w.router.w.data(), E, H, lg.data());
          const double mx = *std::max_element(lg.begin(), lg.end());
          double sum = 0;
          for (int e = 0; e < E; ++e) sum += (pr[e] = std::exp(lg[e] - mx));
          for (int e = 0; e < E; ++e) pr[e] /= sum;
          std::vector<int> ord(E);
          std::iota(ord.begin(), ord.end(), 0);
          std::stable_sort(ord.begin(), ord.end(), [&](int a, int b) { return pr[a] > pr[b]; });
          double top = 0;
          for (int j = 0; j < K; ++j) top += pr[ord[j]];
          for (int j = 0; j < K; ++j) {
            const ExpertWeights& ew = w.experts[ord[j]];
            V ye(H);
            mlp(x.data(), ew.gate, ew.up, 0, ew.down, c.moe_intermediate, ye.data());
            const double wt = c.norm_topk_prob ? pr[ord[j]] / top : pr[ord[j]];
            for (int64_t i = 0; i < H; ++i) o[i] += wt * ye[i];
          }
        } else {
          const LinearWeights& g = w[LinearKind::kGate];
          mlp(x.data(), g, c.fused_gate_up ? g : w[LinearKind::kUp], c.fused_gate_up ? c.intermediate : 0,
              w[LinearKind::kDown], c.intermediate, o.data());
        }
        if (c.sandwich_norms) norm(o.data(), w.post_ff_norm, o.data(), H);
        for (int64_t j = 0; j < H; ++j) h[t * H + j] += o[j];
      }
    }
    // final norm, lm_head (tied: embeddings), soft-capping
    const auto files = io::ModelFiles::open(m.dir());
    const std::vector<float> lm = files.read_f32(c.tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
    const std::vector<float> fn = files.read_f32("model.norm.weight");
    V logits(T * c.vocab);
    for (int64_t t = 0; t < T; ++t) {
      V x(H);
      norm(&h[t * H], fn, x.data(), H);
      lin(x.data(), lm.data(), c.vocab, H, &logits[t * c.vocab]);
      if (c.final_softcap > 0)
        for (int64_t i = 0; i < c.vocab; ++i)
          logits[t * c.vocab + i] = std::tanh(logits[t * c.vocab + i] / c.final_softcap) * c.final_softcap;
    }
    return logits;
  }
};

std::vector<int32_t> ids_for(int64_t T, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> ids(T);
  for (auto& x : ids) x = static_cast<int32_t>(rng() % vocab);
  return ids;
}

struct SynthCase {
  const char* name;
  const char* preset;
  std::function<void(json&)> edit;
};

class SynthArch : public ::testing::TestWithParam<int> {};

const std::vector<SynthCase>& synth_cases() {
  static const std::vector<SynthCase> cases = {
      {"qwen3_moe", "tiny-qwen3-moe", {}},
      {"qwen3_moe_nonorm_dense1", "tiny-qwen3-moe",
       [](json& j) { j["norm_topk_prob"] = false; j["mlp_only_layers"] = {1}; }},
      {"mixtral_window", "tiny-mixtral", [](json& j) { j["sliding_window"] = 12; }},
      {"gemma3", "tiny-gemma3",
       [](json& j) { j["attn_logit_softcapping"] = 3.0; j["final_logit_softcapping"] = 5.0;
                     j["query_pre_attn_scalar"] = 48; j["sliding_window"] = 10; }},
      {"gemma3_linear_rope", "tiny-gemma3",
       [](json& j) { j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 8.0}}; }},
      {"phi3", "tiny-phi3", [](json& j) { j["sliding_window"] = 16; }},
      {"phi3_longrope_partial", "tiny-phi3",
       [](json& j) {
         j["partial_rotary_factor"] = 0.5;
         j["max_position_embeddings"] = 256;
         j["original_max_position_embeddings"] = 32;
         std::vector<double> sf(16), lf(16);
         for (int i = 0; i < 16; ++i) { sf[i] = 1.0 + 0.1 * i; lf[i] = 1.0 + 0.7 * i; }
         j["rope_scaling"] = {{"type", "longrope"}, {"short_factor", sf}, {"long_factor", lf}};
       }},
  };
  return cases;
}

TEST_P(SynthArch, ForwardMatchesFloat64Reference) {
  const SynthCase& sc = synth_cases()[GetParam()];
  const std::string dir = synth_dir(sc.preset, sc.edit);
  const Model m = Model::open(dir);
  const RefModel ref(m);
  // 40 tokens: past every sliding window and past longrope's original 32 positions; 24 tokens:
  // longrope's short factors.
  for (int64_t T : {40, 24}) {
    const auto ids = ids_for(T, m.config().vocab, 5 + T);
    const auto got = m.forward(ids);
    const auto want = ref.forward(ids);
    const auto d = compare(got, want, want.size());
    EXPECT_LE(d.rel(), 2e-5) << sc.name << " T " << T << ": max diff " << d.max_abs << " max ref " << d.max_ref;
  }
  std::filesystem::remove_all(dir);
}

TEST_P(SynthArch, BatchedAndThreadCountIndependent) {
  const SynthCase& sc = synth_cases()[GetParam()];
  const std::string dir = synth_dir(sc.preset, sc.edit);
  const Model m = Model::open(dir);
  const int64_t T = 45, S = 3;
  const auto ids = ids_for(S * T, m.config().vocab, 77);
  std::vector<float> together = m.embed(ids);
  std::vector<float> alone = together;
  ForwardScratch ws;
  for (int l = 0; l < m.config().n_layers; ++l) {
    const LayerWeights w = m.load_layer(l);
    m.layer_forward(l, w, together.data(), S, T, nullptr, &ws);
    for (int s = 0; s < S; ++s) m.layer_forward(l, w, alone.data() + s * T * m.config().hidden, 1, T, nullptr, &ws);
  }
  EXPECT_LE(compare(together, alone, alone.size()).rel(), 1e-6) << sc.name;
  const int saved = num_threads();
  std::vector<float> out[2];
  for (int i = 0; i < 2; ++i) {
    set_num_threads(i + 1);
    out[i] = m.forward(std::vector<int32_t>(ids.begin(), ids.begin() + 2 * T));
  }
  set_num_threads(saved);
  EXPECT_EQ(0, std::memcmp(out[0].data(), out[1].data(), out[0].size() * 4)) << sc.name;
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Archs, SynthArch, ::testing::Range(0, 7),
                         [](const ::testing::TestParamInfo<int>& i) { return std::string(synth_cases()[i.param].name); });

// Records the MoE hook protocol.
struct MoeRecorder : LinearHook {
  bool all = false;
  std::vector<LinearKind> dense_kinds;
  std::map<int, MoeRouting> routing;
  std::map<std::pair<int, int>, std::vector<int64_t>> tokens;  // (layer, expert) -> gate, down rows
  std::map<std::pair<int, int>, std::vector<float>> first_gate_row;
  void on_input(int, LinearKind kind, float*, int64_t, int64_t) override { dense_kinds.push_back(kind); }
  void on_expert_input(int layer, int e, LinearKind kind, float* x, int64_t, int64_t t, int64_t in) override {
    tokens[{layer, e}].push_back(t);
    if (kind == LinearKind::kGate && t > 0) first_gate_row[{layer, e}] = std::vector<float>(x, x + in);
  }
  void on_routing(int layer, const MoeRouting& r) override { routing[layer] = r; }
  bool experts_see_all_tokens(int) const override { return all; }
};

TEST(MoeHooks, ExpertInputsFollowTheRoutingAndAllTokensModeKeepsTheOutput) {
  const std::string dir = synth_dir("tiny-qwen3-moe");
  const Model m = Model::open(dir);
  const auto& c = m.config();
  const int64_t T = 30, S = 2, N = S * T;
  const auto ids = ids_for(N, c.vocab, 3);
  const LayerWeights w = m.load_layer(0);
  std::vector<float> routed = m.embed(ids), alltok = routed, capture = routed;
  MoeRecorder a, b, cap;
  b.all = true;
  cap.all = true;
  m.layer_forward(0, w, routed.data(), S, T, &a, nullptr);
  m.layer_forward(0, w, alltok.data(), S, T, &b, nullptr);
  EXPECT_EQ(routed, alltok);  // all-tokens mode changes only what the hook sees
  m.layer_forward(0, w, capture.data(), S, T, &cap, nullptr, /*need_output=*/false);
  EXPECT_EQ(cap.tokens, b.tokens);  // a capture pass feeds the hooks the same rows
  EXPECT_EQ(a.dense_kinds, (std::vector<LinearKind>{LinearKind::kQ, LinearKind::kO}));  // no dense MLP calls
  ASSERT_EQ(a.routing.count(0), 1u);
  const MoeRouting& r = a.routing[0];
  ASSERT_EQ(r.tokens, N);
  int64_t total = 0;
  for (int e = 0; e < c.n_experts; ++e) {
    const int64_t n_e = r.count(e);
    total += n_e;
    if (n_e == 0) {
      EXPECT_EQ(a.tokens.count(std::make_pair(0, e)), 0u) << "experts without tokens are not called";
    } else {
      EXPECT_EQ(a.tokens[std::make_pair(0, e)], (std::vector<int64_t>{n_e, n_e})) << e;
    }
    EXPECT_EQ(b.tokens[std::make_pair(0, e)], (std::vector<int64_t>{N, N})) << e;
  }
  EXPECT_EQ(total, N * c.n_experts_per_tok);
  // The first row each expert sees is the normed hidden state of its first routed token.
  std::vector<float> h = m.embed(ids);
  std::vector<float> xn(N * c.hidden);
  // (recompute the block input by running the attention half through a recording hook)
  struct Grab : LinearHook {
    std::vector<float> gate_in;
    void on_input(int, LinearKind, float*, int64_t, int64_t) override {}
    void on_expert_input(int, int e, LinearKind k, float* x, int64_t, int64_t t, int64_t in) override {
      if (e == 0 && k == LinearKind::kGate) gate_in.assign(x, x + t * in);
    }
    bool experts_see_all_tokens(int) const override { return true; }
  } grab;
  m.layer_forward(0, w, h.data(), S, T, &grab, nullptr, false);
  ASSERT_EQ(static_cast<int64_t>(grab.gate_in.size()), N * c.hidden);
  for (int e = 0; e < c.n_experts; ++e) {
    if (r.count(e) == 0) continue;
    const int64_t row = r.row_ids[r.offsets[e]];
    const std::vector<float> want(grab.gate_in.begin() + row * c.hidden, grab.gate_in.begin() + (row + 1) * c.hidden);
    EXPECT_EQ(a.first_gate_row[std::make_pair(0, e)], want) << e;
  }
  std::filesystem::remove_all(dir);
}

// ---- unsupported layouts ------------------------------------------------------------------------

TEST(ArchErrors, FusedExpertsAndWrongNamesAreRefusedNamingTheTensor) {
  namespace fs = std::filesystem;
  const std::string src = synth_dir("tiny-mixtral");
  const auto files = io::ModelFiles::open(src);
  // Rewrites the checkpoint with `rename` applied to tensor names (and optional extra tensors).
  auto variant = [&](const std::string& tag, std::function<std::string(const std::string&)> rename,
                     bool add_fused) {
    const std::string dir = src + "_" + tag;
    fs::remove_all(dir);
    fs::create_directories(dir);
    fs::copy_file(src + "/config.json", dir + "/config.json");
    io::ShardedWriter wr(dir, 0, json{{"format", "pt"}});
    for (const auto& n : files.names()) {
      const auto& ti = files.info(n);
      wr.add_raw(rename(n), ti.dtype, ti.shape, files.data(n), ti.nbytes);
    }
    if (add_fused) {
      std::vector<float> z(4 * 512 * 256, 0.0f);
      wr.add(io::make_tensor_from_f32("model.layers.0.mlp.experts.gate_up_proj", {4, 512, 256}, z.data(),
                                      io::DType::kBF16));
    }
    wr.finish();
    return dir;
  };
  auto expect_open_error = [](const std::string& dir, const std::string& needle) {
    try {
      Model::open(dir);
      ADD_FAILURE() << "opened " << dir;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInput);
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_open_error(variant("fused", [](const std::string& n) { return n; }, true),
                    "model.layers.0.mlp.experts.gate_up_proj");
  expect_open_error(variant("v5names",
                            [](std::string n) {
                              const auto p = n.find("block_sparse_moe.gate.");
                              if (p != std::string::npos) n.replace(p, 21, "mlp.gate");
                              return n;
                            },
                            false),
                    "mlp.gate.weight");
  expect_open_error(variant("noexpert",
                            [](std::string n) {
                              const auto p = n.find("experts.3.w2");
                              if (p != std::string::npos) n.replace(p, 12, "experts.3.wX");
                              return n;
                            },
                            false),
                    "block_sparse_moe.experts.3.w2.weight");
  for (const auto& e : fs::directory_iterator(fs::path(src).parent_path()))
    if (e.path().string().rfind(src, 0) == 0) fs::remove_all(e.path());
}

// ---- transformers goldens -----------------------------------------------------------------------

const char* const kGoldenModels[] = {"qwen3_moe_tiny", "qwen3_moe_nonorm_tiny", "mixtral_tiny",
                                     "gemma3_tiny",    "phi3_tiny",             "phi3_longrope_tiny"};

class Golden : public ::testing::TestWithParam<const char*> {
 protected:
  std::string dir() const { return tiny_dir() + "/" + GetParam(); }
  void SetUp() override {
    if (!std::filesystem::exists(dir() + "/golden.json"))
      GTEST_SKIP() << "golden files missing: " << dir()
                   << " — run `python3 tools/golden_models_moe.py --out $OUT` on the GPU machine and "
                      "extract tiny_models_moe.tar.gz into tests/data/";
  }
};

void expect_close_1e5(const std::vector<float>& got, const std::vector<float>& ref, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  const auto d = compare(got, ref, ref.size());
  EXPECT_LE(d.rel(), 1e-5) << what << ": max abs diff " << d.max_abs << ", max |ref| " << d.max_ref;
  std::printf("[ info ] %s: max|diff| %.3g, max|ref| %.3g, rel %.3g\n", what.c_str(), d.max_abs, d.max_ref, d.rel());
}

TEST_P(Golden, LogitsMatchTransformers) {
  const auto g = read_json(dir() + "/golden.json");
  const Model m = Model::open(dir());
  const auto ids = g["input_ids"].get<std::vector<int32_t>>();
  const auto ref = testing::read_f32_file(dir() + "/" + g["logits_file"].get<std::string>());
  ASSERT_EQ(static_cast<int64_t>(ref.size()), g["T"].get<int64_t>() * g["vocab"].get<int64_t>());
  expect_close_1e5(m.forward(ids), ref, GetParam());
  if (g.contains("short_logits_file")) {
    const auto sids = g["short_input_ids"].get<std::vector<int32_t>>();
    const auto sref = testing::read_f32_file(dir() + "/" + g["short_logits_file"].get<std::string>());
    expect_close_1e5(m.forward(sids), sref, std::string(GetParam()) + " (short: longrope short factors)");
  }
}

// Records the routing of every MoE layer.
struct RoutingRecorder : LinearHook {
  std::map<int, MoeRouting> r;
  void on_input(int, LinearKind, float*, int64_t, int64_t) override {}
  void on_routing(int layer, const MoeRouting& routing) override { r[layer] = routing; }
};

TEST_P(Golden, RoutingDecisionsIdentical) {
  if (!std::filesystem::exists(dir() + "/routing.json")) GTEST_SKIP() << GetParam() << " is dense";
  const auto rj = read_json(dir() + "/routing.json");
  const Model m = Model::open(dir());
  RoutingRecorder rec;
  m.forward(rj["input_ids"].get<std::vector<int32_t>>(), {}, &rec);
  ASSERT_EQ(rec.r.size(), rj["layers"].size());
  for (const auto& [layer, lr] : rj["layers"].items()) {
    const MoeRouting& got = rec.r.at(std::stoi(layer));
    const auto ids = lr["ids"].get<std::vector<std::vector<int32_t>>>();
    const auto wts = lr["weights"].get<std::vector<std::vector<double>>>();
    ASSERT_EQ(static_cast<int64_t>(ids.size()), got.tokens);
    for (int64_t t = 0; t < got.tokens; ++t)
      for (int j = 0; j < got.k; ++j) {
        EXPECT_EQ(got.ids[t * got.k + j], ids[t][j]) << "layer " << layer << " token " << t << " slot " << j;
        EXPECT_NEAR(got.weights[t * got.k + j], wts[t][j], 2e-6) << "layer " << layer << " token " << t;
      }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, Golden, ::testing::ValuesIn(kGoldenModels));

}  // namespace
}  // namespace fp4q::model
