// Numeric robustness of gptq_solve on the degenerate inputs real models produce (issue 11):
// dead and duplicated input channels, all-zero weight rows and groups, huge outliers
// (|w| ~ 1e4, activation channels ~ 1e4), and bf16 subnormal weights / activations. For every
// format: no NaN/Inf anywhere (codes, scales, dequantized weights, statistics), the damping
// actually used is reported (damp_tries, damp_used = damp · 10^(tries-1)), and, where the
// problem is well posed, the codes agree with the float64 textbook reference
// (tests/gptq/gptq_reference.h) up to float32-vs-float64 near-ties.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "fp4q/core/error.h"
#include "fp4q/core/half.h"
#include "fp4q/format/format.h"
#include "fp4q/gptq/gptq.h"
#include "gptq_reference.h"
#include "gptq_test_util.h"

using namespace fp4q;
using fp4q::format::FormatId;
using fp4q::format::ScaleMethod;

namespace {

const FormatId kFormats[] = {FormatId::kNVFP4, FormatId::kMXFP4, FormatId::kINT4};

struct Checked {
  gptq::SolveResult r;
  gptq_test::RefGptq ref;  // guided float64 reference at the damping actually used
  std::vector<float> deq;
};

// Solves, checks everything is finite and the damping report is consistent, and runs the guided
// float64 reference at r.stats.damp_used. `name` labels failures.
Checked solve_checked(const std::vector<float>& w, int64_t rows, int64_t cols,
                      const std::vector<float>& h, FormatId fmt, ScaleMethod sm,
                      const gptq::GptqOptions& opt, const std::string& name) {
  SCOPED_TRACE(name + " " + format::spec(fmt).name + " " + format::scale_method_name(sm));
  Checked c;
  const auto scales = format::choose_scales(fmt, w.data(), rows, cols, sm, 0.0f, name);
  EXPECT_TRUE(std::isfinite(scales.global_scale) && scales.global_scale > 0) << scales.global_scale;
  for (float v : scales.values) EXPECT_TRUE(std::isfinite(v) && v >= 0) << v;
  c.r = gptq::gptq_solve(w.data(), rows, cols, h.data(), scales, opt, name);
  const auto& st = c.r.stats;
  EXPECT_GE(st.damp_tries, 1);
  EXPECT_LE(st.damp_tries, opt.max_damp_tries);
  EXPECT_DOUBLE_EQ(st.damp_used, opt.damp * std::pow(10.0, st.damp_tries - 1));
  EXPECT_TRUE(std::isfinite(st.rel_weight_err)) << st.rel_weight_err;
  EXPECT_TRUE(std::isfinite(st.hessian_err)) << st.hessian_err;
  EXPECT_TRUE(std::isfinite(st.rtn_rel_weight_err)) << st.rtn_rel_weight_err;
  EXPECT_TRUE(std::isfinite(st.rtn_hessian_err)) << st.rtn_hessian_err;
  for (uint8_t code : c.r.q.codes) EXPECT_LT(code, 16);
  c.deq.resize(static_cast<size_t>(rows * cols));
  format::dequantize(c.r.q, c.deq.data());
  int64_t bad = 0;
  for (float v : c.deq) bad += !std::isfinite(v);
  EXPECT_EQ(bad, 0) << "non-finite dequantized weights";
  c.ref = gptq_test::gptq_reference(w, rows, cols, h, scales, st.damp_used, opt.act_order,
                                    c.r.q.codes.data(), 1e-3);
  return c;
}

// Agreement with the reference: every disagreement is a near-tie, and they are rare.
void expect_matches_reference(const Checked& c, int64_t total, const std::string& name) {
  EXPECT_EQ(c.ref.far_mismatches, 0) << name;
  EXPECT_LE(c.ref.mismatches, std::max<int64_t>(2, total / 500)) << name;
}

std::vector<float> hessian(const std::vector<float>& x, int64_t tokens, int64_t n) {
  return gptq_test::hessian_of(x, tokens, n, std::max<int64_t>(1, tokens / 64));
}

// Largest bf16 subnormal magnitude is 0x007F (1.16e-38); smallest 0x0001 (9.2e-41).
float bf16_bits(uint16_t b) { return bf16_to_float(b); }

}  // namespace

// Dead inputs (channels that are always zero: diag(H) = 0), including a whole dead group and
// the extreme of a layer whose every input is dead (H = 0).
TEST(GptqRobustness, DeadInputChannels) {
  const int64_t rows = 48, cols = 256, tokens = 1024;
  for (FormatId f : kFormats) {
    std::mt19937_64 rng(100 + static_cast<int>(f));
    const auto w = gptq_test::gaussian(rows * cols, rng, 0.02f);
    auto x = gptq_test::laplace_inputs(tokens, cols, 2, rng);
    std::vector<bool> dead(cols, false);
    for (int64_t c = 0; c < cols; c += 3) dead[c] = true;     // every third channel
    for (int64_t c = 64; c < 96; ++c) dead[c] = true;         // two whole NVFP4 / one MXFP4 group
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t c = 0; c < cols; ++c)
        if (dead[c]) x[t * cols + c] = 0.0f;
    const auto h = hessian(x, tokens, cols);
    int64_t n_dead = 0;
    for (int64_t c = 0; c < cols; ++c) n_dead += dead[c];
    for (bool ao : {true, false}) {
      gptq::GptqOptions opt;
      opt.act_order = ao;
      const auto c = solve_checked(w, rows, cols, h, f, ScaleMethod::kAbsmax, opt, "dead");
      EXPECT_EQ(c.r.stats.dead_columns, n_dead);
      EXPECT_EQ(c.r.stats.damp_tries, 1);
      expect_matches_reference(c, rows * cols, "dead");
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t col = 0; col < cols; ++col)
          if (dead[col]) {
            ASSERT_EQ(c.deq[r * cols + col], 0.0f) << r << "," << col;
          }
      EXPECT_LT(c.r.stats.hessian_err, c.r.stats.rtn_hessian_err);
    }
    // Every input dead: H = 0. Nothing to minimise; every code is zero and nothing is NaN.
    const std::vector<float> h0(static_cast<size_t>(cols * cols), 0.0f);
    const auto c0 = solve_checked(w, rows, cols, h0, f, ScaleMethod::kAbsmax, {}, "all-dead");
    EXPECT_EQ(c0.r.stats.dead_columns, cols);
    for (float v : c0.deq) ASSERT_EQ(v, 0.0f);
    EXPECT_EQ(c0.r.stats.rel_weight_err, 1.0);  // Ŵ = 0
  }
}

// Duplicated input channels (exact copies and scaled copies) make H exactly singular; with
// fewer tokens than channels it is rank deficient as well. The default damping must handle it
// without escalation; a tiny damping must escalate (reported) or fail with a clear error —
// never NaN.
TEST(GptqRobustness, DuplicatedInputChannels) {
  const int64_t rows = 40, cols = 192;
  for (int64_t tokens : {int64_t{1024}, int64_t{96}}) {
    for (FormatId f : kFormats) {
      std::mt19937_64 rng(200 + static_cast<int>(f) + tokens);
      const auto w = gptq_test::gaussian(rows * cols, rng, 0.02f);
      auto x = gptq_test::laplace_inputs(tokens, cols, 2, rng);
      for (int64_t c = 1; c < cols; c += 4)  // channel c copies channel c-1 (every 4th pair)
        for (int64_t t = 0; t < tokens; ++t) x[t * cols + c] = x[t * cols + c - 1];
      for (int64_t c = 2; c < cols; c += 8)  // and some channels are 2x another one
        for (int64_t t = 0; t < tokens; ++t) x[t * cols + c] = 2.0f * x[t * cols + (c + 5) % cols];
      const auto h = hessian(x, tokens, cols);
      const auto c = solve_checked(w, rows, cols, h, f, ScaleMethod::kMse, {}, "duplicated");
      EXPECT_EQ(c.r.stats.damp_tries, 1);
      EXPECT_EQ(c.r.stats.dead_columns, 0);
      expect_matches_reference(c, rows * cols, "duplicated");
      EXPECT_LT(c.r.stats.hessian_err, c.r.stats.rtn_hessian_err);

      gptq::GptqOptions tiny;
      tiny.damp = 1e-9;
      tiny.max_damp_tries = 12;
      try {
        const auto ct = solve_checked(w, rows, cols, h, f, ScaleMethod::kMse, tiny, "duplicated-tiny-damp");
        EXPECT_GE(ct.r.stats.damp_used, 1e-9);
      } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::kNumeric);
        EXPECT_EQ(e.where(), "duplicated-tiny-damp");
      }
    }
  }
}

// All-zero weight rows (an output that is never used) and all-zero groups inside a row: zero
// scales, zero codes, no division by a zero scale.
TEST(GptqRobustness, AllZeroRowsAndGroups) {
  const int64_t rows = 32, cols = 128, tokens = 512;
  for (FormatId f : kFormats) {
    for (ScaleMethod sm : {ScaleMethod::kAbsmax, ScaleMethod::kMse}) {
      std::mt19937_64 rng(300 + static_cast<int>(f));
      auto w = gptq_test::gaussian(rows * cols, rng, 0.02f);
      for (int64_t r = 0; r < rows; r += 5)
        for (int64_t c = 0; c < cols; ++c) w[r * cols + c] = 0.0f;  // zero rows
      for (int64_t r = 1; r < rows; r += 5)
        for (int64_t c = 32; c < 64; ++c) w[r * cols + c] = 0.0f;   // zero groups
      const auto x = gptq_test::laplace_inputs(tokens, cols, 2, rng);
      const auto h = hessian(x, tokens, cols);
      const auto c = solve_checked(w, rows, cols, h, f, sm, {}, "zero-rows");
      expect_matches_reference(c, rows * cols, "zero-rows");
      for (int64_t r = 0; r < rows; r += 5)
        for (int64_t col = 0; col < cols; ++col) ASSERT_EQ(c.deq[r * cols + col], 0.0f);
      // The whole matrix zero: Ŵ = W = 0, both errors exactly 0.
      const std::vector<float> z(static_cast<size_t>(rows * cols), 0.0f);
      const auto cz = solve_checked(z, rows, cols, h, f, sm, {}, "zero-matrix");
      for (float v : cz.deq) ASSERT_EQ(v, 0.0f);
      EXPECT_EQ(cz.r.stats.rel_weight_err, 0.0);
      EXPECT_EQ(cz.r.stats.hessian_err, 0.0);
    }
  }
}

// Huge outliers: a few weights of magnitude ~1e4 among weights ~0.02, and activation channels
// ~1e4 times larger than the rest (H entries ~1e8 next to ~1).
TEST(GptqRobustness, HugeOutliers) {
  const int64_t rows = 48, cols = 256, tokens = 1024;
  for (FormatId f : kFormats) {
    for (ScaleMethod sm : {ScaleMethod::kAbsmax, ScaleMethod::kMse}) {
      std::mt19937_64 rng(400 + static_cast<int>(f));
      auto w = gptq_test::gaussian(rows * cols, rng, 0.02f);
      w[3 * cols + 17] = 1.2e4f;
      w[20 * cols + 200] = -9.5e3f;
      w[47 * cols + 0] = 3.0e4f;
      auto x = gptq_test::laplace_inputs(tokens, cols, 2, rng);
      for (int64_t c : {5, 77, 130})
        for (int64_t t = 0; t < tokens; ++t) x[t * cols + c] *= 1e4f;
      const auto h = hessian(x, tokens, cols);
      const auto c = solve_checked(w, rows, cols, h, f, sm, {}, "outliers");
      EXPECT_EQ(c.r.stats.damp_tries, 1);
      expect_matches_reference(c, rows * cols, "outliers");
      // The outliers themselves survive to within the format's relative step.
      EXPECT_NEAR(c.deq[3 * cols + 17], 1.2e4f, 0.2f * 1.2e4f);
      EXPECT_NEAR(c.deq[47 * cols + 0], 3.0e4f, 0.2f * 3.0e4f);
      // GPTQ is greedy, not optimal: with saturating outlier groups it may lose to RTN by a
      // hair, never by much (a broken update would be far worse).
      EXPECT_LE(c.r.stats.hessian_err, c.r.stats.rtn_hessian_err * 1.05);
    }
  }
}

// bf16 subnormal weights (a layer whose weights are all ~1e-39, and subnormals mixed with
// normal weights) and bf16-subnormal activations (H entries underflow towards 0).
TEST(GptqRobustness, Bf16Subnormals) {
  const int64_t rows = 32, cols = 128, tokens = 512;
  for (FormatId f : kFormats) {
    for (ScaleMethod sm : {ScaleMethod::kAbsmax, ScaleMethod::kMse}) {
      std::mt19937_64 rng(500 + static_cast<int>(f));
      std::uniform_int_distribution<int> mant(1, 0x7f);
      std::vector<float> w_sub(static_cast<size_t>(rows * cols));
      for (auto& v : w_sub)
        v = bf16_bits(static_cast<uint16_t>(mant(rng) | (rng() & 1 ? 0x8000 : 0)));
      for (float v : w_sub) ASSERT_TRUE(v != 0.0f && std::fpclassify(v) == FP_SUBNORMAL);
      auto w_mix = gptq_test::gaussian(rows * cols, rng, 0.02f);
      for (int64_t i = 0; i < rows * cols; i += 3) w_mix[i] = w_sub[i];
      const auto x = gptq_test::laplace_inputs(tokens, cols, 2, rng);
      const auto h = hessian(x, tokens, cols);
      for (const auto* w : {&w_sub, &w_mix}) {
        const std::string name = w == &w_sub ? "subnormal-weights" : "mixed-subnormal-weights";
        const auto c = solve_checked(*w, rows, cols, h, f, sm, {}, name);
        expect_matches_reference(c, rows * cols, name);
      }
      // Activations at bf16-subnormal scale: x ~ 1e-39 gives H ~ 1e-78, i.e. exactly 0 in
      // float32: every channel is dead. Scaled to 1e-19 instead, H ~ 1e-38 (float32
      // subnormal) is still a valid, tiny Hessian.
      auto xs = x;
      for (auto& v : xs) v *= 1e-19f;
      const auto hs = hessian(xs, tokens, cols);
      const auto c = solve_checked(w_mix, rows, cols, hs, f, sm, {}, "subnormal-hessian");
      EXPECT_EQ(c.r.stats.damp_tries, 1);
      EXPECT_EQ(c.r.stats.dead_columns, 0);
      auto xz = x;
      for (auto& v : xz) v = bf16_bits(static_cast<uint16_t>(mant(rng)));
      const auto hz = hessian(xz, tokens, cols);
      const auto cz = solve_checked(w_mix, rows, cols, hz, f, sm, {}, "underflowing-hessian");
      EXPECT_EQ(cz.r.stats.dead_columns, cols);
    }
  }
}
