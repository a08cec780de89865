// Tests of the bf16 calibration matmuls (Model::set_linear_compute(kBF16), model::linear_bf16):
//  * linear_bf16 equals the float64 reference on bf16-rounded inputs within the float32
//    accumulation bound (k·2^-24·Σ|x w|, plus the bias add's half ulp);
//  * under kBF16 every Linear input the hook sees (dense and MoE expert inputs) is bf16-exact
//    (low 16 bits zero), i.e. Hessians come from bf16-valued activations; under the default
//    float32 path they are not, and kF32 set explicitly gives the default path's exact bits;
//  * the layer output moves by a small relative amount (bf16 input rounding, relative 2^-9 per
//    element: the check is 0 < ‖Δ‖/‖y‖ < 2^-5) and is identical for 1 and 2 threads.
// Skipped (GTEST_SKIP) on CPUs without AVX512_BF16.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>
#include <vector>

#include <unistd.h>

#include "fp4q/core/compute_dtype.h"
#include "fp4q/core/parallel.h"
#include "fp4q/linalg/bf16_gemm.h"
#include "fp4q/model/layers.h"
#include "fp4q/model/model.h"
#include "fp4q/model/synthetic.h"
#include "test_util.h"

using namespace fp4q;
using namespace fp4q::model;
namespace mt = fp4q::model::testing;

namespace {

#define SKIP_WITHOUT_BF16()                                                           \
  if (!linalg::cpu_has_avx512_bf16()) GTEST_SKIP() << "CPU lacks AVX512_BF16 (no avx512_bf16 flag)"

bool bf16_exact(const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    if (u & 0xffffu) return false;
  }
  return true;
}

// Records, per call, whether the input was bf16-exact.
struct ExactHook : LinearHook {
  int calls = 0, exact = 0, expert_calls = 0;
  void on_input(int, LinearKind, float* x, int64_t tokens, int64_t in) override {
    ++calls;
    exact += bf16_exact(x, tokens * in);
  }
  void on_expert_input(int layer, int, LinearKind kind, float* x, int64_t, int64_t tokens,
                       int64_t in) override {
    ++expert_calls;
    on_input(layer, kind, x, tokens, in);
  }
};

std::vector<float> inputs(const Model& m, int64_t n_seq, int64_t T, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> tok(0, m.config().vocab - 1);
  std::vector<float> h;
  for (int64_t s = 0; s < n_seq; ++s) {
    std::vector<int32_t> ids(static_cast<size_t>(T));
    for (auto& t : ids) t = tok(rng);
    const auto e = m.embed(ids);
    h.insert(h.end(), e.begin(), e.end());
  }
  return h;
}

double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, n = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    n += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(d / n);
}

struct ThreadGuard {
  int saved_ = num_threads();
  ~ThreadGuard() { set_num_threads(saved_); }
};

}  // namespace

TEST(Bf16Compute, LinearBf16WithinBoundOfReferenceOnRoundedInputs) {
  SKIP_WITHOUT_BF16();
  const int64_t T = 37, in = 129, out = 70;
  const auto x = mt::random_vec(static_cast<size_t>(T * in), 3);
  const auto w = mt::random_vec(static_cast<size_t>(out * in), 4, 0.05f);
  const auto bias = mt::random_vec(static_cast<size_t>(out), 5, 0.1f);
  std::vector<float> y(static_cast<size_t>(T * out)), yr(y.size());
  linear_bf16(x.data(), T, in, w.data(), out, bias.data(), y.data());
  std::vector<float> xb(x), wb(w);
  round_to(ComputeDtype::kBF16, xb.data(), static_cast<int64_t>(xb.size()));
  round_to(ComputeDtype::kBF16, wb.data(), static_cast<int64_t>(wb.size()));
  linear_ref(xb.data(), T, in, wb.data(), out, bias.data(), yr.data());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < out; ++o) {
      double s = 0;
      for (int64_t i = 0; i < in; ++i) s += std::fabs(static_cast<double>(xb[t * in + i]) * wb[o * in + i]);
      const double bound = 1.01 * in * std::ldexp(1.0, -24) * s +
                           std::ldexp(std::fabs(static_cast<double>(yr[t * out + o])), -23) + 1e-30;
      ASSERT_LE(std::fabs(y[t * out + o] - yr[t * out + o]), bound) << t << "," << o;
    }
  // Without a bias the result is exactly the kernel's.
  std::vector<float> y0(y.size()), g(y.size());
  linear_bf16(x.data(), T, in, w.data(), out, nullptr, y0.data());
  linalg::gemm_bf16_nt(T, out, in, x.data(), in, w.data(), in, g.data(), out);
  EXPECT_EQ(std::memcmp(y0.data(), g.data(), y0.size() * sizeof(float)), 0);
}

TEST(Bf16Compute, DenseLayerInputsAreBf16AndOutputStaysClose) {
  SKIP_WITHOUT_BF16();
  ThreadGuard guard;
  Model f32 = Model::open(mt::stories_dir());
  Model f32_explicit = Model::open(mt::stories_dir());
  f32_explicit.set_linear_compute(ComputeDtype::kF32);
  Model bf = Model::open(mt::stories_dir());
  bf.set_linear_compute(ComputeDtype::kBF16);
  EXPECT_EQ(bf.linear_compute(), ComputeDtype::kBF16);
  const LayerWeights w = f32.load_layer(1);
  const int64_t n_seq = 3, T = 40;
  const auto h0 = inputs(f32, n_seq, T, 7);

  auto run = [&](const Model& m, int threads, ExactHook* hook) {
    set_num_threads(threads);
    std::vector<float> h(h0);
    ForwardScratch scratch;
    m.layer_forward(1, w, h.data(), n_seq, T, hook, &scratch, true);
    return h;
  };
  ExactHook hf, hb;
  const auto yf = run(f32, 2, &hf);
  const auto yb = run(bf, 2, &hb);
  EXPECT_EQ(hb.calls, 4);  // q (group), o, gate (group), down
  EXPECT_EQ(hb.exact, hb.calls) << "every Linear input must be bf16-valued under kBF16";
  EXPECT_LT(hf.exact, hf.calls) << "float32 inputs are not all bf16-exact (else the test proves nothing)";
  const auto ye = run(f32_explicit, 2, nullptr);
  EXPECT_EQ(std::memcmp(ye.data(), yf.data(), yf.size() * sizeof(float)), 0) << "kF32 must be the default path";
  const double d = rel_diff(yb, yf);
  EXPECT_GT(d, 0.0);
  EXPECT_LT(d, 1.0 / 32);
  const auto yb1 = run(bf, 1, nullptr);
  EXPECT_EQ(std::memcmp(yb1.data(), yb.data(), yb.size() * sizeof(float)), 0) << "1 vs 2 threads";
}

TEST(Bf16Compute, MoeExpertInputsAreBf16) {
  SKIP_WITHOUT_BF16();
  const std::string dir = ::testing::TempDir() + "/fp4q_bf16_moe_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  write_synthetic_model(dir, model_shape("tiny-qwen3-moe"), io::DType::kBF16, 11);
  {
    Model f32 = Model::open(dir);
    Model bf = Model::open(dir);
    bf.set_linear_compute(ComputeDtype::kBF16);
    int l = 0;
    while (l < f32.config().n_layers && !f32.config().is_moe_layer(l)) ++l;
    ASSERT_LT(l, f32.config().n_layers);
    const LayerWeights w = f32.load_layer(l);
    const int64_t n_seq = 2, T = 24;
    const auto h0 = inputs(f32, n_seq, T, 9);
    std::vector<float> hf(h0), hb(h0);
    ExactHook kf, kb;
    f32.layer_forward(l, w, hf.data(), n_seq, T, &kf, nullptr, true);
    bf.layer_forward(l, w, hb.data(), n_seq, T, &kb, nullptr, true);
    EXPECT_GT(kb.expert_calls, 0);
    EXPECT_EQ(kb.exact, kb.calls);
    EXPECT_LT(kf.exact, kf.calls);
    const double d = rel_diff(hb, hf);
    EXPECT_GT(d, 0.0);
    EXPECT_LT(d, 1.0 / 32);
  }
  std::filesystem::remove_all(dir);
}
