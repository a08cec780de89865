// --format mxfp4-fit end to end: GPTQ + dequant export + eval work; every runtime layout and W4A4
// are refused with a usage error; in `report`, RTN under MSE scales is never worse than MXFP4's on
// any layer (per-group guarantee of the fitted grid).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "run_util.h"

namespace fs = std::filesystem;

namespace {
const std::string kModel = std::string(FP4Q_DATA_DIR) + "/models/stories260K";
const std::string kCalib = " --samples 4 --seqlen 64 --seed 1";
fp4q_test::Run run(const std::string& args, const std::string& tmp) { return fp4q_test::run_fp4q(args, false, tmp); }
}  // namespace

TEST(Mxfp4FitCli, DequantExportEvaluatesAndOtherLayoutsAreRefused) {
  fp4q_test::TempDir t;
  auto r = run("-q quantize " + kModel + " " + t / "fit --format mxfp4-fit --export dequant --report " + t / "r.json" + kCalib,
               t.path());
  ASSERT_EQ(r.code, 0) << r.err;
  std::ifstream rf(t / "r.json");
  const auto rep = nlohmann::json::parse(rf);
  int quantized = 0;
  for (const auto& x : rep["tensors"])
    if (x["format"] == "mxfp4-fit") {
      ++quantized;
      EXPECT_EQ(x["method"], "mr-gptq");
      EXPECT_EQ(x["hadamard"], 32);
      EXPECT_GT(x["hessian_err"].get<double>(), 0.0);
      EXPECT_LT(x["hessian_err"].get<double>(), x["rtn_hessian_err"].get<double>() * 1.5);
    }
  EXPECT_EQ(quantized, 30);  // q/k/v/o/gate/up of 5 layers (down_proj: 172 inputs, kept)
  std::ifstream cf(t / "fit/config.json");
  const auto cfg = nlohmann::json::parse(cf);
  EXPECT_FALSE(cfg.contains("quantization_config"));
  EXPECT_EQ(cfg["fp4q"]["format"], "mxfp4-fit");
  r = run("-q eval " + t / "fit" + " --seqlen 128 --max-windows 4", t.path());
  ASSERT_EQ(r.code, 0) << r.err;
  const double ppl = std::stod(r.out.substr(r.out.find("ppl=") + 4));
  EXPECT_TRUE(std::isfinite(ppl) && ppl > 1.0 && ppl < 1000.0) << r.out;

  for (const std::string exp : {"compressed-tensors", "fp-quant", "fp-quant-pseudo"}) {
    r = run("-q quantize " + kModel + " " + t / ("x-" + exp) + " --format mxfp4-fit --export " + exp + kCalib, t.path());
    EXPECT_EQ(r.code, 2) << exp << ": " << r.err;
    EXPECT_NE(r.err.find("--export dequant"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(t / ("x-" + exp)));
  }
  r = run("-q quantize " + kModel + " " + t / "w4a4 --format mxfp4-fit --export dequant --activations fp4" + kCalib, t.path());
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("--activations none"), std::string::npos) << r.err;
}

TEST(Mxfp4FitCli, ReportRtnUnderMseScalesNeverWorseThanMxfp4) {
  fp4q_test::TempDir t;
  const auto r = run("-q report " + kModel + " --formats mxfp4,mxfp4-fit --methods mr-gptq --format json" + kCalib, t.path());
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  const auto& arr = j.is_array() ? j : j["tensors"];
  std::map<std::string, double> mx, fit;
  for (const auto& x : arr) {
    if (x["format"] == "mxfp4") mx[x["name"]] = x["rtn_rel_weight_err"].get<double>();
    if (x["format"] == "mxfp4-fit") fit[x["name"]] = x["rtn_rel_weight_err"].get<double>();
  }
  ASSERT_EQ(mx.size(), 30u);
  ASSERT_EQ(fit.size(), 30u);
  for (const auto& [name, e] : fit) EXPECT_LE(e, mx[name]) << name;
}

// The Hessian-weighted ablation scale rules reach choose_scales through solve_group (they would
// be refused without the weights) and change the result; RTN has no Hessian and is refused.
TEST(AblationScalesCli, MseHessAndMseGptqRunWithHessians) {
  fp4q_test::TempDir t;
  std::map<std::string, std::string> models;
  for (const std::string sc : {"mse", "mse-hess", "mse-gptq"}) {
    const auto r = run("-q quantize " + kModel + " " + t / sc + " --scales " + sc + " --export dequant" + kCalib +
                           " --report " + t / (sc + ".json"),
                       t.path());
    ASSERT_EQ(r.code, 0) << sc << ": " << r.err;
    std::ifstream f(t / (sc + "/model.safetensors"), std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    models[sc] = ss.str();
  }
  EXPECT_NE(models["mse"], models["mse-hess"]);
  EXPECT_NE(models["mse"], models["mse-gptq"]);
  EXPECT_NE(models["mse-hess"], models["mse-gptq"]);
  const auto r = run("-q quantize " + kModel + " " + t / "rtn --method rtn --scales mse-hess" + kCalib, t.path());
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("needs per-column weights"), std::string::npos) << r.err;
}
