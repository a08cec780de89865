// Batched forward (several sequences per layer_forward call) against one call per sequence, the
// capture-only pass, the reusable scratch, thread-count independence, and the synthetic model
// writer (round trip through the safetensors reader and Model::open).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "fp4q/core/error.h"
#include "fp4q/core/half.h"
#include "fp4q/core/parallel.h"
#include "fp4q/io/safetensors.h"
#include "fp4q/model/model.h"
#include "fp4q/model/synthetic.h"
#include "fp4q/model/tokenizer.h"
#include "test_util.h"

namespace fp4q::model {
namespace {

std::vector<int32_t> random_ids(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& v : ids) v = static_cast<int32_t>(rng() % vocab);
  return ids;
}

// Records every hook call (kind, sequences, tokens, a copy of x).
struct Recorder : LinearHook {
  struct Call { LinearKind kind; int64_t seqs, tokens, in; std::vector<float> x; };
  std::vector<Call> calls;
  void on_input(int, LinearKind, float*, int64_t, int64_t) override { FAIL() << "batched path must call on_input_batch"; }
  void on_input_batch(int, LinearKind kind, float* x, int64_t seqs, int64_t tokens, int64_t in) override {
    calls.push_back({kind, seqs, tokens, in, std::vector<float>(x, x + tokens * in)});
  }
};

double max_rel(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0, r = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    m = std::max(m, std::fabs(static_cast<double>(a[i]) - b[i]));
    r = std::max(r, std::fabs(static_cast<double>(b[i])));
  }
  return r > 0 ? m / r : m;
}

class Batched : public ::testing::TestWithParam<const char*> {};

TEST_P(Batched, SequencesTogetherEqualSequencesAlone) {
  const Model m = Model::open(testing::tiny_dir() + "/" + GetParam());
  const auto& c = m.config();
  const int64_t T = 37, S = 3;  // T not a multiple of the 64-row attention block
  const auto ids = random_ids(S * T, c.vocab, 11);
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights w = m.load_layer(l);
    std::vector<float> together = m.embed(ids);
    std::vector<float> alone = together;
    Recorder rt, ra;
    ForwardScratch scratch;
    m.layer_forward(l, w, together.data(), S, T, &rt, &scratch);
    for (int64_t s = 0; s < S; ++s)
      m.layer_forward(l, w, alone.data() + s * T * c.hidden, 1, T, &ra, &scratch);
    // Same math; a row's BLAS tile position may differ, so allow float32 rounding only.
    EXPECT_LE(max_rel(together, alone), 2e-6) << GetParam() << " layer " << l;
    ASSERT_EQ(rt.calls.size(), 4u);
    ASSERT_EQ(ra.calls.size(), 4u * S);
    for (size_t k = 0; k < 4; ++k) {
      EXPECT_EQ(rt.calls[k].seqs, S);
      EXPECT_EQ(rt.calls[k].tokens, S * T);
      std::vector<float> joined;
      for (int64_t s = 0; s < S; ++s) {
        const auto& x = ra.calls[s * 4 + k].x;
        EXPECT_EQ(ra.calls[s * 4 + k].seqs, 1);
        joined.insert(joined.end(), x.begin(), x.end());
      }
      EXPECT_LE(max_rel(rt.calls[k].x, joined), 2e-6) << "hook input " << k;
    }
    // A capture-only pass sees the same inputs and leaves hidden's MLP half untouched.
    std::vector<float> cap = m.embed(ids);
    Recorder rc;
    m.layer_forward(l, w, cap.data(), S, T, &rc, &scratch, /*need_output=*/false);
    ASSERT_EQ(rc.calls.size(), 4u);
    for (size_t k = 0; k < 4; ++k) EXPECT_EQ(rc.calls[k].x, rt.calls[k].x) << "capture pass input " << k;
  }
}

TEST_P(Batched, ThreadCountDoesNotChangeBits) {
  const Model m = Model::open(testing::tiny_dir() + "/" + GetParam());
  const auto ids = random_ids(4 * 50, m.config().vocab, 3);
  std::vector<float> out[2];
  const int saved = num_threads();
  for (int t : {1, 2}) {
    set_num_threads(t);
    out[t - 1] = m.embed(ids);
    ForwardScratch scratch;
    for (int l = 0; l < m.config().n_layers; ++l)
      m.layer_forward(l, m.load_layer(l), out[t - 1].data(), 4, 50, nullptr, &scratch);
  }
  set_num_threads(saved);
  EXPECT_EQ(out[0], out[1]);
}

INSTANTIATE_TEST_SUITE_P(Archs, Batched,
                         ::testing::Values("llama3_tiny", "mistral_tiny", "qwen2_tiny", "qwen3_tiny"));

TEST(Batched, PerplexityBatchesEqualWindowByWindow) {
  // perplexity() batches windows; each window's NLL must equal a plain per-window forward.
  const Model m = Model::open(testing::stories_dir());
  const int seqlen = 64;
  const auto ids = random_ids(5 * seqlen + 7, m.config().vocab, 5);
  const PplResult r = perplexity(m, ids, seqlen);
  ASSERT_EQ(r.windows, 5);
  for (int64_t w = 0; w < r.windows; ++w) {
    const std::vector<int32_t> win(ids.begin() + w * seqlen, ids.begin() + (w + 1) * seqlen);
    const auto hidden = m.forward_hidden(win);
    const double s = m.nll_sum(hidden.data(), win.data(), seqlen);
    EXPECT_NEAR(r.window_nll_sum[w], s, 1e-5 * std::fabs(s)) << "window " << w;
  }
}

TEST(Synthetic, RoundTripThroughTheReaderAndModelOpen) {
  const std::string dir = ::testing::TempDir() + "/fp4q_synth_tiny";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  ModelShape s = model_shape("tiny");
  s.vocab = 300;
  write_synthetic_model(dir, s, io::DType::kBF16, 9, 1000);
  const Model m = Model::open(dir);  // validates every tensor's presence, shape and dtype
  EXPECT_EQ(m.config().hidden, s.hidden);
  EXPECT_EQ(m.config().intermediate, s.intermediate);
  EXPECT_EQ(m.config().n_layers, s.n_layers);
  EXPECT_EQ(m.config().n_kv_heads, s.n_kv_heads);
  const auto files = io::ModelFiles::open(dir);
  EXPECT_EQ(files.info("model.layers.1.mlp.down_proj.weight").dtype, io::DType::kBF16);
  // Stored values are the generator's float32 values rounded to bf16 (RNE).
  const auto ref = synthetic_tensor("model.layers.1.mlp.down_proj.weight", {s.hidden, s.intermediate}, 0, 9);
  const auto got = files.read_f32("model.layers.1.mlp.down_proj.weight");
  ASSERT_EQ(got.size(), ref.size());
  double sum2 = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const float r = bf16_to_float(float_to_bf16(ref[i]));
    ASSERT_EQ(got[i], r) << i;
    sum2 += static_cast<double>(ref[i]) * ref[i];
  }
  // Scale: 0.5/sqrt(in) with 1 channel in 97 at 8x -> E[w²] = 0.25/in * (96 + 64)/97.
  const double expect = 0.25 / s.intermediate * (96.0 + 64.0) / 97.0;
  EXPECT_NEAR(sum2 / ref.size(), expect, 0.1 * expect);
  // Deterministic: a second write gives the same bytes; random ids are in range.
  const std::string dir2 = dir + "_2";
  std::filesystem::remove_all(dir2);
  std::filesystem::create_directories(dir2);
  write_synthetic_model(dir2, s, io::DType::kBF16, 9, 1000);
  auto slurp = [](const std::string& p) {
    std::ifstream f(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  EXPECT_EQ(slurp(dir + "/model.safetensors"), slurp(dir2 + "/model.safetensors"));
  const auto ids = read_token_ids(dir + "/random-ids.txt");
  ASSERT_EQ(ids.size(), 1000u);
  for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < s.vocab);
  // The forward of the synthetic model is finite.
  const auto logits = m.forward(std::vector<int32_t>(ids.begin(), ids.begin() + 40));
  for (float v : logits) ASSERT_TRUE(std::isfinite(v));
}

TEST(Synthetic, PresetsHaveTheRealShapes) {
  const auto l8 = model_shape("llama3-8b");
  EXPECT_EQ(l8.layer_params() * l8.n_layers + 2 * l8.vocab * l8.hidden + l8.hidden, 8030261248);  // Llama-3.1-8B
  const auto q14 = model_shape("qwen3-14b");
  EXPECT_EQ(q14.n_layers, 40);
  EXPECT_THROW(model_shape("llama9"), Error);
}

}  // namespace
}  // namespace fp4q::model
