// Golden tests of the full forward pass: stories260K (fp64 reference outputs shipped with the
// model) and tiny random models of every supported architecture (transformers 5.17 goldens
// produced by tools/golden_models.py), perplexity vs transformers, hooks and weight overrides.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "fp4q/core/error.h"
#include "fp4q/core/parallel.h"
#include "fp4q/model/model.h"
#include "test_util.h"

namespace fp4q::model {
namespace {

using testing::compare;
using testing::read_json;
using testing::stories_dir;
using testing::tiny_dir;

// Tolerance of the brief: max|diff| / max|ref| <= 1e-4 and |diff| <= 1e-4 * (1 + |ref|) elementwise.
void expect_logits_close(const std::vector<float>& got, const std::vector<double>& ref,
                         const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  auto d = compare(got, ref, ref.size());
  EXPECT_LE(d.rel(), 1e-4) << what << ": max abs diff " << d.max_abs << ", max |ref| " << d.max_ref;
  EXPECT_LE(d.worst_scaled, 1e-4) << what;
  std::printf("[ info ] %s: max|diff| %.3g, max|ref| %.3g, rel %.3g, worst |d|/(1+|ref|) %.3g\n",
              what.c_str(), d.max_abs, d.max_ref, d.rel(), d.worst_scaled);
}

int argmax(const float* row, int64_t n) {
  return static_cast<int>(std::max_element(row, row + n) - row);
}

// ---- stories260K --------------------------------------------------------------------------

class Stories : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = new Model(Model::open(stories_dir()));
    ref_ = new nlohmann::json(read_json(stories_dir() + "/reference_outputs.json"));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete ref_;
  }
  static Model* model_;
  static nlohmann::json* ref_;
};
Model* Stories::model_ = nullptr;
nlohmann::json* Stories::ref_ = nullptr;

TEST_F(Stories, ConfigAndWeights) {
  const ModelConfig& c = model_->config();
  EXPECT_EQ(c.arch, Arch::kLlama);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.vocab, 512);
  EXPECT_TRUE(c.tie_embeddings);
  EXPECT_EQ(c.bos_id, 1);
  LayerWeights w = model_->load_layer(4);
  EXPECT_EQ(w[LinearKind::kK].out, 32);
  EXPECT_EQ(w[LinearKind::kDown].in, 172);
  EXPECT_TRUE(w.q_norm.empty());
  EXPECT_THROW(model_->load_layer(5), Error);
}

TEST_F(Stories, LogitsAtPromptPositions) {
  auto ids = (*ref_)["prompt_ids_with_bos"].get<std::vector<int32_t>>();
  auto rows = (*ref_)["logits_at_prompt_positions"].get<std::vector<std::vector<double>>>();
  std::vector<double> ref;
  for (auto& r : rows) ref.insert(ref.end(), r.begin(), r.end());
  std::vector<float> logits = model_->forward(ids);
  expect_logits_close(logits, ref, "stories260K prompt logits");
}

TEST_F(Stories, GreedyDecoding) {
  auto want = (*ref_)["greedy_ids_including_prompt"].get<std::vector<int32_t>>();
  ASSERT_EQ(want.size(), 65u);
  std::vector<LayerWeights> layers;
  for (int l = 0; l < model_->config().n_layers; ++l) layers.push_back(model_->load_layer(l));
  auto fn = [&](int l) -> const LayerWeights& { return layers[l]; };
  std::vector<int32_t> ids = (*ref_)["prompt_ids_with_bos"].get<std::vector<int32_t>>();
  const int64_t V = model_->config().vocab;
  while (ids.size() < want.size()) {
    std::vector<float> logits = model_->forward(ids, fn);
    ids.push_back(argmax(logits.data() + (ids.size() - 1) * V, V));
  }
  EXPECT_EQ(ids, want);
}

TEST_F(Stories, MeanNll) {
  auto ids = (*ref_)["nll_ids"].get<std::vector<int32_t>>();
  const double want = (*ref_)["mean_nll_nats_per_token"].get<double>();
  std::vector<float> hidden = model_->forward_hidden(ids);
  const double mean = model_->nll_sum(hidden.data(), ids.data(), ids.size()) / (ids.size() - 1);
  EXPECT_NEAR(mean, want, 1e-5);
  std::printf("[ info ] stories260K mean NLL %.8f vs reference %.8f (diff %.3g)\n", mean, want,
              mean - want);
  // perplexity() over one window of the whole sequence is the same number.
  PplResult r = perplexity(*model_, ids, static_cast<int>(ids.size()));
  EXPECT_EQ(r.windows, 1);
  EXPECT_EQ(r.tokens, static_cast<int64_t>(ids.size()) - 1);
  EXPECT_NEAR(r.mean_nll, want, 1e-5);
  EXPECT_NEAR(r.ppl, std::exp(want), 1e-5 * std::exp(want));
}

TEST_F(Stories, PerplexityMatchesTransformers) {
  auto ids = read_json(tiny_dir() + "/ppl_ids.json")["ids"].get<std::vector<int32_t>>();
  auto g = read_json(tiny_dir() + "/stories260K_ppl.json")["seqlens"];
  for (int L : {128, 512}) {
    const auto& want = g[std::to_string(L)];
    PplResult r = perplexity(*model_, ids, L);
    EXPECT_EQ(r.windows, want["windows"].get<int64_t>());
    EXPECT_EQ(r.tokens, want["tokens"].get<int64_t>());
    const double ppl = want["ppl"].get<double>();
    EXPECT_NEAR(r.ppl, ppl, 1e-3 * ppl) << "seqlen " << L;
    EXPECT_NEAR(r.mean_nll, want["mean_nll"].get<double>(), 1e-5) << "seqlen " << L;
    auto sums = want["window_nll_sum"].get<std::vector<double>>();
    ASSERT_EQ(r.window_nll_sum.size(), sums.size());
    double worst = 0;
    for (size_t w = 0; w < sums.size(); ++w)
      worst = std::max(worst, std::fabs(r.window_nll_sum[w] - sums[w]) / (L - 1));
    EXPECT_LE(worst, 2e-5) << "per-window mean NLL, seqlen " << L;
    std::printf("[ info ] stories260K seqlen %d: ppl %.6f vs transformers %.6f (rel %.3g), "
                "worst window mean-NLL diff %.3g\n",
                L, r.ppl, ppl, (r.ppl - ppl) / ppl, worst);
  }
}

TEST_F(Stories, PerplexityErrors) {
  std::vector<int32_t> ids(10, 5);
  EXPECT_THROW(perplexity(*model_, ids, 1), Error);
  try {
    perplexity(*model_, ids, 11);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInput);
  }
  try {
    model_->embed({1, 512});
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInput);
    EXPECT_NE(std::string(e.what()).find("512"), std::string::npos);
  }
}

// Records hook calls; optionally zeroes the inputs of o_proj and down_proj.
struct RecordingHook : LinearHook {
  struct Call {
    int layer;
    LinearKind kind;
    int64_t tokens, in;
  };
  std::vector<Call> calls;
  bool zero_residual_branches = false;
  void on_input(int layer, LinearKind kind, float* x, int64_t tokens, int64_t in) override {
    calls.push_back({layer, kind, tokens, in});
    if (zero_residual_branches && (kind == LinearKind::kO || kind == LinearKind::kDown))
      std::fill(x, x + tokens * in, 0.0f);
  }
};

TEST_F(Stories, HookSeesEveryInputGroupAndCanReplaceIt) {
  std::vector<int32_t> ids = {1, 403, 407, 261, 378, 432};
  const ModelConfig& c = model_->config();
  const int64_t T = ids.size();
  RecordingHook rec;
  std::vector<float> base = model_->forward(ids);
  std::vector<float> with_hook = model_->forward(ids, {}, &rec);
  EXPECT_EQ(base, with_hook);  // a read-only hook changes nothing
  ASSERT_EQ(rec.calls.size(), 4u * c.n_layers);
  const LinearKind order[4] = {LinearKind::kQ, LinearKind::kO, LinearKind::kGate, LinearKind::kDown};
  const int64_t ins[4] = {c.hidden, c.q_dim(), c.hidden, c.intermediate};
  for (int l = 0; l < c.n_layers; ++l)
    for (int i = 0; i < 4; ++i) {
      const auto& call = rec.calls[l * 4 + i];
      EXPECT_EQ(call.layer, l);
      EXPECT_EQ(call.kind, order[i]);
      EXPECT_EQ(call.tokens, T);
      EXPECT_EQ(call.in, ins[i]);
    }
  // Zeroing the inputs of o_proj and down_proj (no biases) makes every layer the identity, so the
  // logits are those of the embeddings after the final norm.
  RecordingHook zero;
  zero.zero_residual_branches = true;
  std::vector<float> z = model_->forward(ids, {}, &zero);
  std::vector<float> e = model_->embed(ids), want(T * c.vocab);
  model_->final_norm_logits(e.data(), T, want.data());
  EXPECT_EQ(z, want);
  EXPECT_NE(z, base);
}

TEST_F(Stories, WeightsOfLayerOverride) {
  std::vector<int32_t> ids = {1, 403, 407, 261, 378};
  const ModelConfig& c = model_->config();
  std::vector<LayerWeights> layers;
  for (int l = 0; l < c.n_layers; ++l) layers.push_back(model_->load_layer(l));
  auto fn = [&](int l) -> const LayerWeights& { return layers[l]; };
  EXPECT_EQ(model_->forward(ids, fn), model_->forward(ids));
  // Scaling o_proj of layer 2 must change the output (the override is really used).
  for (float& x : layers[2][LinearKind::kO].w) x *= 1.5f;
  EXPECT_NE(model_->forward(ids, fn), model_->forward(ids));
  // Wrong shapes are rejected.
  layers[1][LinearKind::kUp].w.pop_back();
  EXPECT_THROW(model_->forward(ids, fn), Error);
}

TEST_F(Stories, ThreadCountIndependent) {
  auto ids = read_json(tiny_dir() + "/ppl_ids.json")["ids"].get<std::vector<int32_t>>();
  ids.resize(512);  // large enough that every kernel takes its parallel path
  const int before = num_threads();
  set_num_threads(1);
  std::vector<float> a = model_->forward(ids);
  set_num_threads(2);
  std::vector<float> b = model_->forward(ids);
  set_num_threads(before);
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4));
}

// ---- tiny transformers models ---------------------------------------------------------------

class Tiny : public ::testing::TestWithParam<std::string> {};

TEST_P(Tiny, LogitsMatchTransformers) {
  const std::string dir = tiny_dir() + "/" + GetParam();
  auto g = read_json(dir + "/golden.json");
  auto ids = g["input_ids"].get<std::vector<int32_t>>();
  const int64_t T = g["T"], V = g["vocab"];
  std::vector<float> ref32 = testing::read_f32_file(dir + "/" + g["logits_file"].get<std::string>());
  ASSERT_EQ(static_cast<int64_t>(ref32.size()), T * V);
  std::vector<double> ref(ref32.begin(), ref32.end());
  Model m = Model::open(dir);
  EXPECT_EQ(m.config().vocab, V);
  std::vector<float> logits = m.forward(ids);
  expect_logits_close(logits, ref, GetParam());
}

INSTANTIATE_TEST_SUITE_P(Archs, Tiny,
                         ::testing::Values("qwen3_tiny", "qwen2_tiny", "mistral_tiny",
                                           "llama3_tiny"));

TEST(TinyFeatures, ConfigsDecodeAsIntended) {
  Model q3 = Model::open(tiny_dir() + "/qwen3_tiny");
  EXPECT_EQ(q3.config().arch, Arch::kQwen3);
  EXPECT_TRUE(q3.config().qk_norm);
  EXPECT_EQ(q3.config().q_dim(), 128);  // 8 heads x 16 != hidden 64
  EXPECT_TRUE(q3.config().tie_embeddings);
  EXPECT_EQ(q3.load_layer(0).q_norm.size(), 16u);
  Model q2 = Model::open(tiny_dir() + "/qwen2_tiny");
  EXPECT_TRUE(q2.config().qkv_bias);
  LayerWeights w = q2.load_layer(1);
  EXPECT_EQ(w[LinearKind::kK].bias.size(), 32u);
  EXPECT_TRUE(w[LinearKind::kO].bias.empty());
  Model mi = Model::open(tiny_dir() + "/mistral_tiny");
  EXPECT_EQ(mi.config().n_kv_heads, 1);
  EXPECT_EQ(mi.config().layer_sliding_window, (std::vector<int64_t>{4096, 4096}));
  EXPECT_FALSE(mi.config().tie_embeddings);
  Model l3 = Model::open(tiny_dir() + "/llama3_tiny");
  EXPECT_EQ(l3.config().rope_type, RopeType::kLlama3);
  EXPECT_EQ(l3.config().rope_original_max_pos, 64);
}

TEST(TinyFeatures, SlidingWindowMaskedWhenInEffect) {
  // mistral_tiny's golden has sliding_window 4096 (not in effect at 16 tokens). With a window of
  // 8 the first 8 positions see every key (logits equal the golden rows); later ones must not.
  const std::string src = tiny_dir() + "/mistral_tiny";
  auto g = read_json(src + "/golden.json");
  auto ids = g["input_ids"].get<std::vector<int32_t>>();
  std::vector<float> ref = testing::read_f32_file(src + "/golden_logits.bin");
  const int64_t V = g["vocab"];
  std::string dir = testing::copy_model_with_config(src, "sw", [](nlohmann::json& j) {
    j["sliding_window"] = 8;
  });
  Model m = Model::open(dir);
  EXPECT_EQ(m.config().layer_sliding_window, (std::vector<int64_t>{8, 8}));
  std::vector<float> logits = m.forward(ids);
  std::vector<double> ref8(ref.begin(), ref.begin() + 8 * V);
  std::vector<float> first8(logits.begin(), logits.begin() + 8 * V);
  expect_logits_close(first8, ref8, "mistral_tiny window 8, first 8 positions");
  auto d = compare(std::vector<float>(logits.begin() + 8 * V, logits.end()),
                   std::vector<float>(ref.begin() + 8 * V, ref.end()), 8 * V);
  EXPECT_GT(d.max_abs, 1e-3) << "positions 8..15 must not see keys 0..t-8";
  std::filesystem::remove_all(dir);
}

TEST(TinyFeatures, CheckpointMismatchErrors) {
  const std::string src = tiny_dir() + "/qwen3_tiny";
  struct Case {
    const char* tag;
    std::function<void(nlohmann::json&)> edit;
    const char* needle;
  } cases[] = {
      {"layers", [](nlohmann::json& j) { j["num_hidden_layers"] = 3; j.erase("layer_types"); },
       "model.layers.2."},
      {"untied", [](nlohmann::json& j) { j["tie_word_embeddings"] = false; }, "lm_head.weight"},
      {"inter", [](nlohmann::json& j) { j["intermediate_size"] = 96; }, "mlp.gate_proj.weight"},
      {"arch", [](nlohmann::json& j) { j["architectures"] = {"LlamaForCausalLM"}; }, "q_norm"},
  };
  for (const Case& c : cases) {
    std::string dir = testing::copy_model_with_config(src, c.tag, c.edit);
    try {
      Model::open(dir);
      ADD_FAILURE() << c.tag << ": expected an error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInput) << c.tag;
      EXPECT_NE(std::string(e.what()).find(c.needle), std::string::npos) << c.tag << ": " << e.what();
    }
    std::filesystem::remove_all(dir);
  }
}

}  // namespace
}  // namespace fp4q::model
