// GPTQ solver tests: against the float64 textbook reference (all formats, act-order on/off,
// dead inputs), H = I equals RTN, GPTQ beats RTN on correlated Hessians, act-order helps,
// damping escalation / failures, thread-count independence.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "fp4q/core/error.h"
#include "fp4q/core/parallel.h"
#include "fp4q/format/format.h"
#include "fp4q/gptq/gptq.h"
#include "gptq_reference.h"
#include "gptq_test_util.h"

using namespace fp4q;
using fp4q::format::FormatId;
using fp4q::format::ScaleMethod;

namespace {

struct Problem {
  int64_t rows, cols;
  std::vector<float> w, h;
};

Problem make_problem(int64_t rows, int64_t cols, int64_t tokens, int outliers, uint64_t seed,
                     int dead = 0) {
  std::mt19937_64 rng(seed);
  Problem p{rows, cols, gptq_test::gaussian(rows * cols, rng, 0.02f), {}};
  auto x = gptq_test::laplace_inputs(tokens, cols, outliers, rng);
  for (int d = 0; d < dead; ++d) {  // dead input channels: always zero
    const int64_t c = (d * 37 + 5) % cols;
    for (int64_t t = 0; t < tokens; ++t) x[t * cols + c] = 0.0f;
  }
  p.h = gptq_test::hessian_of(x, tokens, cols, std::max<int64_t>(1, tokens / 64));
  return p;
}

std::vector<double> dequant_d(const format::QuantizedMatrix& q) {
  std::vector<float> f(static_cast<size_t>(q.rows * q.cols));
  format::dequantize(q, f.data());
  return {f.begin(), f.end()};
}

void record(const std::string& key, double v) {
  ::testing::Test::RecordProperty(key, std::to_string(v));
}

}  // namespace

// ---- reference comparison -------------------------------------------------------------------

struct RefCase {
  FormatId fmt;
  ScaleMethod method;
  bool act_order;
  int64_t rows, cols;
  int dead;
};

class GptqReference : public ::testing::TestWithParam<RefCase> {};

TEST_P(GptqReference, MatchesFloat64TextbookGptq) {
  const RefCase c = GetParam();
  const auto p = make_problem(c.rows, c.cols, 4 * c.cols, 3,
                              1000 + c.cols + 7 * static_cast<int>(c.fmt) + c.act_order, c.dead);
  const auto scales = format::choose_scales(c.fmt, p.w.data(), c.rows, c.cols, c.method);
  gptq::GptqOptions opt;
  opt.act_order = c.act_order;
  const auto fast = gptq::gptq_solve(p.w.data(), c.rows, c.cols, p.h.data(), scales, opt, "t");
  ASSERT_EQ(fast.stats.damp_tries, 1);
  ASSERT_DOUBLE_EQ(fast.stats.damp_used, 0.01);
  ASSERT_EQ(fast.stats.dead_columns, c.dead);

  const auto plain = gptq_test::gptq_reference(p.w, c.rows, c.cols, p.h, scales, 0.01, c.act_order);
  const auto guided = gptq_test::gptq_reference(p.w, c.rows, c.cols, p.h, scales, 0.01,
                                              c.act_order, fast.q.codes.data(), 1e-4);
  int64_t plain_diff = 0;
  for (size_t i = 0; i < plain.codes.size(); ++i) plain_diff += plain.codes[i] != fast.q.codes[i];
  const int64_t total = c.rows * c.cols;
  std::printf("[ref] %s %s act_order=%d %lldx%lld dead=%d: unguided mismatches %lld / %lld, "
              "guided (near-tie) mismatches %lld, max tie distance %.3g\n",
              format::spec(c.fmt).name, format::scale_method_name(c.method), c.act_order,
              (long long)c.rows, (long long)c.cols, c.dead, (long long)plain_diff,
              (long long)total, (long long)guided.mismatches, guided.max_tie_distance);
  record("unguided_mismatches", static_cast<double>(plain_diff));
  record("guided_mismatches", static_cast<double>(guided.mismatches));
  record("max_tie_distance", guided.max_tie_distance);
  // Every disagreement is a float32-vs-float64 near-tie, and they are rare.
  EXPECT_EQ(guided.far_mismatches, 0);
  EXPECT_LE(guided.mismatches, total / 1000);
  EXPECT_EQ(guided.codes, fast.q.codes);
  // Dead inputs quantize to exact zeros.
  for (int64_t i = 0; i < c.cols; ++i) {
    if (p.h[i * c.cols + i] != 0.0f) continue;
    for (int64_t r = 0; r < c.rows; ++r)
      ASSERT_EQ(format::element_decode(c.fmt, fast.q.codes[r * c.cols + i]), 0.0f);
  }

  // Statistics against float64 naive formulas on the same Ŵ (undamped H).
  std::vector<double> wd(p.w.begin(), p.w.end()), hd(p.h.begin(), p.h.end());
  const auto what = dequant_d(fast.q);
  const auto e = gptq::quantization_error_ref(wd.data(), what.data(), c.rows, c.cols, hd.data());
  EXPECT_NEAR(fast.stats.rel_weight_err, e.rel_weight_err, 1e-6 * e.rel_weight_err);
  EXPECT_NEAR(fast.stats.hessian_err, e.hessian_err, 1e-4 * e.hessian_err);
  const auto rq = format::quantize_rtn(p.w.data(), c.rows, c.cols, scales);
  const auto rhat = dequant_d(rq);
  const auto er = gptq::quantization_error_ref(wd.data(), rhat.data(), c.rows, c.cols, hd.data());
  EXPECT_NEAR(fast.stats.rtn_rel_weight_err, er.rel_weight_err, 1e-6 * er.rel_weight_err);
  EXPECT_NEAR(fast.stats.rtn_hessian_err, er.hessian_err, 1e-4 * er.hessian_err);
  EXPECT_LT(fast.stats.hessian_err, fast.stats.rtn_hessian_err);
}

INSTANTIATE_TEST_SUITE_P(
    AllFormats, GptqReference,
    ::testing::Values(RefCase{FormatId::kNVFP4, ScaleMethod::kAbsmax, true, 96, 256, 0},
                      RefCase{FormatId::kNVFP4, ScaleMethod::kAbsmax, false, 96, 256, 0},
                      RefCase{FormatId::kNVFP4, ScaleMethod::kMse, true, 64, 384, 3},
                      // 2 row panels (256 + 45 rows, a last group of 1 row), 4 blocks
                      RefCase{FormatId::kNVFP4, ScaleMethod::kAbsmax, true, 301, 512, 1},
                      RefCase{FormatId::kMXFP4, ScaleMethod::kAbsmax, true, 96, 256, 0},
                      RefCase{FormatId::kMXFP4, ScaleMethod::kAbsmax, false, 64, 320, 2},
                      RefCase{FormatId::kMXFP4, ScaleMethod::kMse, true, 128, 512, 0},
                      RefCase{FormatId::kINT4, ScaleMethod::kAbsmax, true, 96, 256, 0},
                      RefCase{FormatId::kINT4, ScaleMethod::kAbsmax, false, 64, 384, 4},
                      RefCase{FormatId::kINT4, ScaleMethod::kMse, true, 64, 256, 0}));

// The reference comparison with a block size that does not divide the column count and a
// precomputed (shared) NVFP4 global scale, as the pipeline passes for fused q/k/v.
TEST(GptqSolve, OddBlockSizeAndSharedGlobalScale) {
  const auto p = make_problem(48, 224, 600, 2, 77);
  const float gs = 0.5f * format::nvfp4_global_scale(p.w.data(), 48 * 224);
  const auto scales =
      format::choose_scales(FormatId::kNVFP4, p.w.data(), 48, 224, ScaleMethod::kAbsmax, gs);
  ASSERT_EQ(scales.global_scale, gs);
  gptq::GptqOptions opt;
  opt.block_size = 48;
  const auto fast = gptq::gptq_solve(p.w.data(), 48, 224, p.h.data(), scales, opt, "t");
  EXPECT_EQ(fast.q.scales.global_scale, gs);
  EXPECT_EQ(fast.q.scales.codes, scales.codes);
  const auto g = gptq_test::gptq_reference(p.w, 48, 224, p.h, scales, 0.01, true,
                                         fast.q.codes.data(), 1e-4);
  EXPECT_EQ(g.far_mismatches, 0);
  EXPECT_LE(g.mismatches, 48 * 224 / 1000);
  // Different lazy-batch block sizes are the same algorithm: near-identical codes.
  opt.block_size = 128;
  const auto f128 = gptq::gptq_solve(p.w.data(), 48, 224, p.h.data(), scales, opt, "t");
  int64_t diff = 0;
  for (size_t i = 0; i < f128.q.codes.size(); ++i) diff += f128.q.codes[i] != fast.q.codes[i];
  EXPECT_LE(diff, 48 * 224 / 200);
}

// ---- H = I is RTN -----------------------------------------------------------------------------

TEST(GptqSolve, IdentityOrDiagonalHessianEqualsRtn) {
  for (FormatId f : {FormatId::kNVFP4, FormatId::kMXFP4, FormatId::kINT4})
    for (bool diag : {false, true})
      for (bool ao : {false, true}) {
        std::mt19937_64 rng(5 + static_cast<int>(f));
        const int64_t rows = 40, cols = 192;
        auto w = gptq_test::gaussian(rows * cols, rng, 0.05f);
        w[7] = 1.0f;  // an outlier so some group saturates differently
        std::vector<float> h(static_cast<size_t>(cols * cols), 0.0f);
        std::uniform_real_distribution<float> u(0.1f, 10.0f);
        for (int64_t i = 0; i < cols; ++i) h[i * cols + i] = diag ? u(rng) : 1.0f;
        const auto scales = format::choose_scales(f, w.data(), rows, cols, ScaleMethod::kAbsmax);
        gptq::GptqOptions opt;
        opt.act_order = ao;
        const auto g = gptq::gptq_solve(w.data(), rows, cols, h.data(), scales, opt, "t");
        const auto r = format::quantize_rtn(w.data(), rows, cols, scales);
        EXPECT_EQ(g.q.codes, r.codes) << format::spec(f).name << " diag " << diag << " ao " << ao;
        // GPTQ's trace comes from the sweep's errors (‖E‖² − δ‖ΔW‖²), RTN's from a Gram
        // matrix: the same number up to float32 rounding.
        EXPECT_NEAR(g.stats.hessian_err, g.stats.rtn_hessian_err, 1e-5 * g.stats.rtn_hessian_err);
        EXPECT_EQ(g.stats.rel_weight_err, g.stats.rtn_rel_weight_err);
        // A caller-guaranteed full symmetric H (no internal copy) gives the same bits.
        gptq::GptqOptions sym = opt;
        sym.h_full_symmetric = true;
        const auto gs = gptq::gptq_solve(w.data(), rows, cols, h.data(), scales, sym, "t");
        EXPECT_EQ(gs.q.codes, g.q.codes);
        EXPECT_EQ(gs.stats.hessian_err, g.stats.hessian_err);
        const auto rs = gptq::rtn_solve(w.data(), rows, cols, h.data(), scales, "t");
        EXPECT_EQ(rs.q.codes, r.codes);
        EXPECT_EQ(rs.stats.hessian_err, g.stats.rtn_hessian_err);
      }
}

// ---- quality: GPTQ vs RTN, static act-order vs natural order ---------------------------------

TEST(GptqSolve, BeatsRtnOnCorrelatedHessiansAndActOrderHelps) {
  const int trials = 100;
  int wins = 0;
  double sum_rtn = 0, sum_nat = 0, sum_act = 0;
  int act_better = 0;
  const FormatId fmts[3] = {FormatId::kNVFP4, FormatId::kMXFP4, FormatId::kINT4};
  for (int t = 0; t < trials; ++t) {
    const FormatId f = fmts[t % 3];
    const auto p = make_problem(16, 128, 256, 1 + t % 4, 5000 + t);
    const auto scales = format::choose_scales(f, p.w.data(), 16, 128, ScaleMethod::kAbsmax);
    gptq::GptqOptions opt;
    opt.act_order = false;
    const auto nat = gptq::gptq_solve(p.w.data(), 16, 128, p.h.data(), scales, opt, "t");
    opt.act_order = true;
    const auto act = gptq::gptq_solve(p.w.data(), 16, 128, p.h.data(), scales, opt, "t");
    wins += act.stats.hessian_err < act.stats.rtn_hessian_err;
    act_better += act.stats.hessian_err < nat.stats.hessian_err;
    sum_rtn += act.stats.rtn_hessian_err;
    sum_nat += nat.stats.hessian_err;
    sum_act += act.stats.hessian_err;
  }
  std::printf("[quality] %d trials: GPTQ (act-order) beats RTN in %d; mean Hessian error RTN "
              "%.4e, GPTQ natural %.4e, GPTQ act-order %.4e; act-order better in %d\n",
              trials, wins, sum_rtn / trials, sum_nat / trials, sum_act / trials, act_better);
  record("gptq_beats_rtn", wins);
  record("mean_rtn", sum_rtn / trials);
  record("mean_natural", sum_nat / trials);
  record("mean_act_order", sum_act / trials);
  EXPECT_GE(wins, 99);
  EXPECT_LE(sum_act, sum_nat);
}

// ---- damping escalation and failures ----------------------------------------------------------

TEST(GptqDamping, EscalatesAndReportsOnIndefiniteHessian) {
  std::mt19937_64 rng(11);
  const int64_t rows = 32, cols = 128;
  const auto w = gptq_test::gaussian(rows * cols, rng, 0.02f);
  // Eigenvalues 1 (x127) and -0.05: λ = 0.01 fails, λ = 0.1 succeeds.
  const auto h = gptq_test::identity_minus_rank1(cols, 1.05, rng);
  const auto scales = format::choose_scales(FormatId::kMXFP4, w.data(), rows, cols,
                                            ScaleMethod::kAbsmax);
  const auto r = gptq::gptq_solve(w.data(), rows, cols, h.data(), scales, {}, "layer.x");
  EXPECT_EQ(r.stats.damp_tries, 2);
  EXPECT_DOUBLE_EQ(r.stats.damp_used, 0.1);
  const auto g = gptq_test::gptq_reference(w, rows, cols, h, scales, 0.1, true, r.q.codes.data());
  EXPECT_EQ(g.far_mismatches, 0);
  EXPECT_LE(g.mismatches, rows * cols / 1000);
  // With only one attempt allowed the same Hessian is an error naming the layer.
  gptq::GptqOptions one;
  one.max_damp_tries = 1;
  try {
    gptq::gptq_solve(w.data(), rows, cols, h.data(), scales, one, "layer.x");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNumeric);
    EXPECT_EQ(e.where(), "layer.x");
  }
}

TEST(GptqDamping, RankDeficientHessianNeedsNoEscalation) {
  std::mt19937_64 rng(12);
  const int64_t rows = 32, cols = 256, tokens = 40;  // rank <= 40
  const auto w = gptq_test::gaussian(rows * cols, rng, 0.02f);
  const auto x = gptq_test::laplace_inputs(tokens, cols, 2, rng);
  const auto h = gptq_test::hessian_of(x, tokens, cols, 1);
  const auto scales = format::choose_scales(FormatId::kNVFP4, w.data(), rows, cols,
                                            ScaleMethod::kAbsmax);
  const auto r = gptq::gptq_solve(w.data(), rows, cols, h.data(), scales, {}, "t");
  EXPECT_EQ(r.stats.damp_tries, 1);
  EXPECT_TRUE(std::isfinite(r.stats.hessian_err));
  EXPECT_LT(r.stats.hessian_err, r.stats.rtn_hessian_err);
  const auto g = gptq_test::gptq_reference(w, rows, cols, h, scales, 0.01, true, r.q.codes.data());
  EXPECT_EQ(g.far_mismatches, 0);
}

TEST(GptqDamping, HopelessHessiansThrowNamingTheLayer) {
  std::mt19937_64 rng(13);
  const int64_t rows = 16, cols = 128;
  const auto w = gptq_test::gaussian(rows * cols, rng, 0.02f);
  const auto scales = format::choose_scales(FormatId::kINT4, w.data(), rows, cols,
                                            ScaleMethod::kAbsmax);
  const std::string where = "model.layers.7.mlp.down_proj";
  auto expect_numeric = [&](const std::vector<float>& h, const char* what) {
    try {
      gptq::gptq_solve(w.data(), rows, cols, h.data(), scales, {}, where);
      ADD_FAILURE() << what << ": expected fp4q::Error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kNumeric) << what;
      EXPECT_EQ(e.where(), where) << what;
      EXPECT_NE(std::string(e.what()).find(where), std::string::npos) << what;
    }
  };
  auto h = gptq_test::identity_minus_rank1(cols, 20.0, rng);  // eigenvalue -19: beyond λ = 1
  expect_numeric(h, "strongly indefinite");
  std::vector<float> neg(static_cast<size_t>(cols * cols), 0.0f);
  for (int64_t i = 0; i < cols; ++i) neg[i * cols + i] = -1.0f;
  expect_numeric(neg, "negative definite");
  auto nan = gptq_test::identity_minus_rank1(cols, 0.5, rng);
  nan[5 * cols + 3] = NAN;
  expect_numeric(nan, "NaN");
  auto inf = gptq_test::identity_minus_rank1(cols, 0.5, rng);
  inf[9 * cols + 9] = INFINITY;
  expect_numeric(inf, "Inf");
  // Bad options are usage errors.
  gptq::GptqOptions bad;
  bad.damp = 0.0;
  EXPECT_THROW(gptq::gptq_solve(w.data(), rows, cols, neg.data(), scales, bad, where), Error);
}

TEST(GptqSolve, ActOrderPermutationIsStableDescending) {
  const int64_t n = 6;
  std::vector<float> h(n * n, 0.0f);
  const float d[n] = {1, 3, 3, 0, 2, 3};
  for (int64_t i = 0; i < n; ++i) h[i * n + i] = d[i];
  EXPECT_EQ(gptq::act_order_permutation(h.data(), n), (std::vector<int64_t>{1, 2, 5, 4, 0, 3}));
}

// ---- thread-count independence ----------------------------------------------------------------

TEST(GptqThreads, CodesAndStatsBitIdenticalFor1And2Threads) {
  const int saved = fp4q::num_threads();
  const auto p = make_problem(384, 1024, 1100, 4, 99, 3);
  const auto scales = format::choose_scales(FormatId::kNVFP4, p.w.data(), 384, 1024,
                                            ScaleMethod::kAbsmax);
  gptq::SolveResult r[2];
  for (int t = 1; t <= 2; ++t) {
    fp4q::set_num_threads(t);
    r[t - 1] = gptq::gptq_solve(p.w.data(), 384, 1024, p.h.data(), scales, {}, "t");
  }
  fp4q::set_num_threads(saved);
  EXPECT_TRUE(r[0].q.codes == r[1].q.codes);
  EXPECT_EQ(r[0].stats.hessian_err, r[1].stats.hessian_err);
  EXPECT_EQ(r[0].stats.rel_weight_err, r[1].stats.rel_weight_err);
  EXPECT_EQ(r[0].stats.rtn_hessian_err, r[1].stats.rtn_hessian_err);
  std::printf("[threads] 384x1024 nvfp4: GPTQ h_err %.6e, RTN h_err %.6e (identical for 1 and 2 "
              "threads)\n", r[0].stats.hessian_err, r[0].stats.rtn_hessian_err);
}
