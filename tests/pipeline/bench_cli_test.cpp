// `fp4q bench` and `fp4q synth` through the binary: the JSON contract of bench (every phase row,
// one total row, FLOP from an independent count of the tiny shape, consistent rates), the
// dry-run estimate, and synth's error handling. Timings themselves are never asserted.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "run_util.h"

namespace {

using fp4q_test::Run;

// Independent FLOP count of the tiny preset (hidden 256, intermediate 768, heads 4/2 x 64) for
// S sequences of T tokens: what the bench must report for the calibration forward (no
// down_proj), Hessians and quantized forward.
struct TinyFlop { double calib, hessian, quant; };
TinyFlop tiny_flop(double S, double T) {
  const double d = 256, q = 256, kv = 128, I = 768;
  double keys = 0;  // causal attention in 64-row query blocks
  for (double r0 = 0; r0 < T; r0 += 64) keys += (std::min(T, r0 + 64) - r0) * std::min(T, r0 + 64);
  const double att = 4 * q * keys * S;
  const double tok = S * T;
  return {tok * 2 * (d * (q + 2 * kv) + q * d + 2 * d * I) + att,
          tok * (d * (d + 1) + q * (q + 1) + d * (d + 1) + I * (I + 1)),
          tok * 2 * (d * (q + 2 * kv) + q * d + 3 * d * I) + att};
}

TEST(BenchCli, TinyJsonHasEveryPhaseAndConsistentNumbers) {
  fp4q_test::TempDir tmp;
  const fp4q_test::Run r = fp4q_test::run_fp4q("bench --shape tiny --samples 3 --seqlen 96 --threads 1,2 --json --work-dir " +
                                    tmp.path(), false, tmp.path());
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_TRUE(j.is_array());
  const std::set<std::string> want = {"calibration_forward", "hessian_accumulation", "activation_amax",
                                      "scale_search", "rotation", "gptq_factor", "gptq_sweep",
                                      "error_stats", "quantized_forward", "activation_fake_quant",
                                      "export", "other", "total"};
  const TinyFlop f = tiny_flop(3, 96);
  for (int threads : {1, 2}) {
    std::set<std::string> seen;
    double sum_flop = 0, sum_s = 0;
    const nlohmann::json* total = nullptr;
    for (const auto& row : j) {
      if (row.at("threads") != threads) continue;
      for (const char* k : {"phase", "threads", "seconds", "flop", "ratio_to_sgemm", "gflops", "sgemm_gflops"})
        ASSERT_TRUE(row.contains(k)) << k;
      const std::string ph = row.at("phase");
      seen.insert(ph);
      const double s = row.at("seconds"), fl = row.at("flop");
      EXPECT_GE(s, 0.0) << ph;
      EXPECT_GT(row.at("sgemm_gflops").get<double>(), 0.0);
      if (fl > 0 && s > 0) {
        EXPECT_NEAR(row.at("gflops").get<double>(), fl / s / 1e9, 1e-9 * fl / s);
        EXPECT_NEAR(row.at("ratio_to_sgemm").get<double>(),
                    row.at("gflops").get<double>() / row.at("sgemm_gflops").get<double>(), 1e-9);
      }
      if (ph == "calibration_forward") EXPECT_DOUBLE_EQ(fl, f.calib);
      if (ph == "hessian_accumulation") EXPECT_DOUBLE_EQ(fl, f.hessian);
      if (ph == "quantized_forward") EXPECT_DOUBLE_EQ(fl, f.quant);
      if (ph == "gptq_factor") EXPECT_DOUBLE_EQ(fl, 3 * 2.0 * 256 * 256 * 256 / 3 + 2.0 * 256 * 256 * 256 / 3 +
                                                    2 * 2.0 * 256 * 256 * 256 / 3 + 2.0 * 768 * 768 * 768 / 3);
      if (ph == "total") {
        total = &row;
      } else {
        sum_flop += fl;
        sum_s += s;
      }
    }
    EXPECT_EQ(seen, want) << "threads " << threads;
    ASSERT_NE(total, nullptr);
    EXPECT_DOUBLE_EQ(total->at("flop").get<double>(), sum_flop);
    EXPECT_NEAR(total->at("seconds").get<double>(), sum_s, 1e-6 + 1e-9 * sum_s);
    EXPECT_GT(total->at("projected_model_seconds").get<double>(), total->at("seconds").get<double>());
    if (threads == 2) EXPECT_TRUE(total->contains("parallel_efficiency"));
  }
  // The temporary synthetic model is removed.
  EXPECT_TRUE(std::filesystem::is_empty(tmp.path()) ||
              !std::filesystem::exists(tmp.path() + "/model"));
}

TEST(BenchCli, BadArgumentsAreUsageErrors) {
  EXPECT_EQ(fp4q_test::run_fp4q("bench --shape llama9 --json").code, 2);
  EXPECT_EQ(fp4q_test::run_fp4q("bench --shape tiny --threads 0").code, 2);
  EXPECT_EQ(fp4q_test::run_fp4q("bench --shape tiny --threads 1,x").code, 2);
  EXPECT_EQ(fp4q_test::run_fp4q("synth /tmp/never --shape nope").code, 2);
}

TEST(BenchCli, DryRunPrintsMemoryAndTimeOfASyntheticModel) {
  fp4q_test::TempDir tmp;
  ASSERT_EQ(fp4q_test::run_fp4q("synth " + tmp / "m" + " --shape tiny --ids 5000").code, 0);
  const fp4q_test::Run r = fp4q_test::run_fp4q("quantize " + tmp / "m" + " " + tmp / "out" +
                                    " --dry-run --samples 8 --seqlen 128", false, tmp.path());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("# planned peak memory"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("# estimated time"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("8 samples x 128 tokens"), std::string::npos) << r.out;
  EXPECT_FALSE(std::filesystem::exists(tmp / "out"));
  // A real run on the synthetic model with its random ids works end to end.
  const fp4q_test::Run q = fp4q_test::run_fp4q("quantize " + tmp / "m" + " " + tmp / "out" + " --samples 4 --seqlen 64 --calib-ids " +
                                    tmp / "m/random-ids.txt", true, tmp.path());
  ASSERT_EQ(q.code, 0) << q.out;
  EXPECT_NE(q.out.find("phases (s):"), std::string::npos);
  EXPECT_TRUE(std::filesystem::exists(tmp / "out/config.json"));
}

}  // namespace
