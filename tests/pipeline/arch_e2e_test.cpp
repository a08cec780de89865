// End-to-end tests of the issue-12 architectures through the fp4q binary: synthetic tiny
// Qwen3-MoE, Mixtral, Gemma-3 and Phi-3 models (model::write_synthetic_model) are quantized with
// MR-GPTQ, reloaded with the importer and evaluated; MoE specifics (per-expert Hessians from the
// routed tokens, RTN fallback reported, all-tokens mode, unrotated experts, routers kept, gate/up
// global scales shared per expert, one W4A4 input scale per layer and kind), Phi-3's fused
// tensors, and the clear refusals (fp-quant layouts, report/hessians on MoE). With the
// transformers goldens present, the tiny golden models go through the same pipeline.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include <nlohmann/json.hpp>

#include "fp4q/core/half.h"
#include "fp4q/exporter/importer.h"
#include "fp4q/exporter/layout.h"
#include "fp4q/io/io.h"
#include "fp4q/model/model.h"
#include "fp4q/model/synthetic.h"
#include "fp4q/transform/hadamard.h"
#include "run_util.h"

namespace fs = std::filesystem;
using namespace fp4q;
using fp4q_test::Run;
using fp4q_test::TempDir;

namespace {

Run run(const std::string& args) { return fp4q_test::run_fp4q(args); }

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

std::vector<float> original_domain(const exporter::ImportedModel& im, const std::string& module) {
  const auto ql = im.load(module);
  std::vector<float> w(static_cast<size_t>(ql.q.rows * ql.q.cols));
  format::dequantize(ql.q, w.data());
  transform::hadamard_rows(w.data(), ql.q.rows, ql.q.cols, ql.hadamard);
  return w;
}

// A synthetic tiny model of `preset` (+ random ids) in dir.
void synth(const std::string& dir, const std::string& preset) {
  fs::create_directories(dir);
  model::write_synthetic_model(dir, model::model_shape(preset), io::DType::kBF16, 3, 20000);
}

double ppl_of(const std::string& out) {
  static const std::regex kPpl(R"(perplexity ([0-9.]+))");
  std::smatch m;
  if (!std::regex_search(out, m, kPpl)) return -1;
  return std::stod(m[1].str());
}

const char* kCalib = " --samples 8 --seqlen 64 ";

struct ArchCase {
  const char* preset;
  bool moe;
};

class ArchE2E : public ::testing::TestWithParam<ArchCase> {};

TEST_P(ArchE2E, QuantizeReloadEvalDequant) {
  const ArchCase c = GetParam();
  TempDir tmp;
  const std::string src = tmp / "src", out = tmp / "q", dq = tmp / "dq";
  synth(src, c.preset);
  const std::string ids = " --ids " + src + "/random-ids.txt --seqlen 64 --max-windows 8";
  const auto r = run("-q quantize " + src + " " + out + " --calib-ids " + src + "/random-ids.txt" + kCalib +
                     " --report " + (tmp / "report.json"));
  ASSERT_EQ(r.code, 0) << r.out;
  const auto im = exporter::ImportedModel::open(out);
  const auto orig = io::ModelFiles::open(src);
  const auto cfg = nlohmann::json::parse(slurp(out + "/config.json"));
  const auto& qc = cfg["quantization_config"];
  int experts = 0;
  for (const auto& m : im.quantized_modules()) {
    const bool expert = exporter::is_moe_expert_module(m);
    experts += expert;
    const auto ql = im.load(m);
    EXPECT_EQ(ql.hadamard, expert ? 0 : 16) << m;                  // experts are never rotated
    EXPECT_EQ(im.files().has(m + ".v_input.weight"), !expert) << m;
    const double e = rel_err(original_domain(im, m), orig.read_f32(m + ".weight"));
    EXPECT_GT(e, 0.05) << m;
    EXPECT_LT(e, 0.2) << m;
    // gate/up (w1/w3) of one expert / layer share the NVFP4 global scale
    for (const auto& sib : exporter::fused_siblings(m)) {
      if (!im.is_quantized(sib)) continue;
      EXPECT_EQ(ql.q.scales.global_scale, im.load(sib).q.scales.global_scale) << m << " vs " << sib;
    }
  }
  const auto mcfg = model::ModelConfig::load(src);
  if (c.moe) {
    EXPECT_EQ(experts, mcfg.n_layers * mcfg.n_experts * 3);
    // Routers: kept, listed in ignore, passed through byte for byte.
    for (int l = 0; l < mcfg.n_layers; ++l) {
      const std::string router = model::router_path(mcfg, l);
      EXPECT_FALSE(im.is_quantized(router));
      EXPECT_NE(std::find(qc["ignore"].begin(), qc["ignore"].end(), router), qc["ignore"].end()) << router;
      const auto& a = im.files().info(router + ".weight");
      EXPECT_EQ(0, std::memcmp(im.files().data(router + ".weight"), orig.data(router + ".weight"), a.nbytes));
    }
    const auto& tig = qc["transform_config"]["config_groups"]["v"]["apply"][0]["ignore"];
    EXPECT_EQ(tig.back(), exporter::kExpertTransformIgnore);
    // Report: every expert with its routed-token count; together top_k x tokens per layer.
    const auto rep = nlohmann::json::parse(slurp(tmp / "report.json"));
    int64_t tok_sum = 0;
    for (const auto& t : rep["tensors"])
      if (exporter::is_moe_expert_module(t["name"]) && t["name"].get<std::string>().find("layers.0.") != std::string::npos &&
          (t["name"].get<std::string>().find("down_proj") != std::string::npos ||
           t["name"].get<std::string>().find(".w2") != std::string::npos))
        tok_sum += t["tokens"].get<int64_t>();
    EXPECT_EQ(tok_sum, 8 * 64 * mcfg.n_experts_per_tok);
  } else {
    EXPECT_EQ(experts, 0);
  }
  if (mcfg.fused_qkv) {
    EXPECT_TRUE(im.is_quantized("model.layers.0.self_attn.qkv_proj"));
    EXPECT_TRUE(im.is_quantized("model.layers.0.mlp.gate_up_proj"));
    EXPECT_EQ(im.load("model.layers.0.self_attn.qkv_proj").q.rows, mcfg.q_dim() + 2 * mcfg.kv_dim());
  }
  // Reload and evaluate: finite, within a few percent of the original; dequant agrees.
  const auto e0 = run("eval " + src + ids);
  const auto e1 = run("eval " + out + ids);
  ASSERT_EQ(e0.code, 0) << e0.out;
  ASSERT_EQ(e1.code, 0) << e1.out;
  const double p0 = ppl_of(e0.out), p1 = ppl_of(e1.out);
  ASSERT_GT(p0, 1);
  EXPECT_LT(std::fabs(p1 - p0) / p0, 0.05) << p0 << " vs " << p1;
  ASSERT_EQ(run("-q dequant " + out + " " + dq + " --dtype f32").code, 0);
  const auto e2 = run("eval " + dq + ids);
  ASSERT_EQ(e2.code, 0) << e2.out;
  EXPECT_NEAR(ppl_of(e2.out), p1, 1e-4 * p1);
}

INSTANTIATE_TEST_SUITE_P(Synthetic, ArchE2E,
                         ::testing::Values(ArchCase{"tiny-qwen3-moe", true}, ArchCase{"tiny-mixtral", true},
                                           ArchCase{"tiny-gemma3", false}, ArchCase{"tiny-phi3", false}),
                         [](const auto& info) {
                           std::string s = info.param.preset;
                           for (auto& ch : s)
                             if (ch == '-') ch = '_';
                           return s;
                         });

TEST(MoeE2E, FallbackAllTokensAndW4A4Scales) {
  TempDir tmp;
  const std::string src = tmp / "src";
  synth(src, "tiny-mixtral");
  const std::string calib = " --calib-ids " + src + "/random-ids.txt" + kCalib;
  // Every expert below --moe-min-tokens: RTN, said on the progress line and in the report.
  const auto r = run("quantize " + src + " " + (tmp / "fb") + calib + " --moe-min-tokens 100000 --report " +
                     (tmp / "fb.json"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("MoE RTN fallback"), std::string::npos);
  EXPECT_NE(r.out.find("4 RTN fallbacks"), std::string::npos) << r.out;
  // The parsed report must outlive the loop: a range-for over parse(...)["tensors"] keeps only
  // the element reference alive, not the temporary document (heap-use-after-free under ASan).
  const auto fb_report = nlohmann::json::parse(slurp(tmp / "fb.json"));
  for (const auto& t : fb_report["tensors"]) {
    if (!exporter::is_moe_expert_module(t["name"])) continue;
    EXPECT_EQ(t["method"], "rtn") << t["name"];
    EXPECT_NE(t["note"].get<std::string>().find("--moe-min-tokens 100000"), std::string::npos);
  }
  // all-tokens: every expert's Hessians from all 8 x 64 tokens, W4A4 scales shared per layer.
  const auto a = run("quantize " + src + " " + (tmp / "all") + calib +
                     " --moe-calib all-tokens --activations fp4 --report " + (tmp / "all.json"));
  ASSERT_EQ(a.code, 0) << a.out;
  const auto all_report = nlohmann::json::parse(slurp(tmp / "all.json"));
  for (const auto& t : all_report["tensors"])
    if (exporter::is_moe_expert_module(t["name"])) {
      EXPECT_EQ(t["tokens"], 512) << t["name"];
      EXPECT_EQ(t["method"], "mr-gptq") << t["name"];
    }
  const auto im = exporter::ImportedModel::open(tmp / "all");
  for (int l = 0; l < 2; ++l)
    for (const char* leaf : {"w1", "w3", "w2"}) {
      const std::string p = "model.layers." + std::to_string(l) + ".block_sparse_moe.experts.";
      // one scale per layer for every expert's gate/up input (w1, w3), one for the down inputs
      const float want = im.load(p + "0." + (leaf == std::string("w2") ? "w2" : "w1")).input_global_scale;
      EXPECT_GT(want, 0.0f);
      for (int e = 0; e < 4; ++e)
        EXPECT_EQ(im.load(p + std::to_string(e) + "." + leaf).input_global_scale, want) << p << e << "." << leaf;
    }
  const auto ev = run("eval " + (tmp / "all") + " --ids " + src + "/random-ids.txt --seqlen 64 --max-windows 4");
  EXPECT_EQ(ev.code, 0) << ev.out;
  EXPECT_GT(ppl_of(ev.out), 1);
  // Refusals: fp-quant layouts, bad --moe-calib, report/hessians on MoE.
  const auto f = run("quantize " + src + " " + (tmp / "fq") + calib + " --activations fp4 --export fp-quant");
  EXPECT_EQ(f.code, 2) << f.out;
  EXPECT_NE(f.out.find("MoE experts"), std::string::npos) << f.out;
  EXPECT_FALSE(fs::exists(tmp / "fq"));
  EXPECT_EQ(run("quantize " + src + " " + (tmp / "x") + " --moe-calib sometimes").code, 2);
  const auto rp = run("report " + src + " --calib-ids " + src + "/random-ids.txt --samples 2 --seqlen 32");
  EXPECT_EQ(rp.code, 2) << rp.out;
  EXPECT_NE(rp.out.find("MoE"), std::string::npos) << rp.out;
}

// The transformers tiny goldens (tools/golden_models_moe.py) through the pipeline.
class GoldenE2E : public ::testing::TestWithParam<const char*> {};

TEST_P(GoldenE2E, QuantizeAndEval) {
  const std::string src = std::string(FP4Q_TEST_DATA_DIR) + "/tiny_models/" + GetParam();
  if (!fs::exists(src + "/golden.json"))
    GTEST_SKIP() << "golden model missing: " << src << " (run tools/golden_models_moe.py on the GPU machine)";
  TempDir tmp;
  // 64-wide models: NVFP4 (G16), rotation 16; random ids as calibration.
  {
    std::ofstream f(tmp / "ids.txt");
    for (int i = 0; i < 4096; ++i) f << (3 + (i * 7919) % 250) << (i % 32 == 31 ? "\n" : " ");
  }
  const auto r = run("-q quantize " + src + " " + (tmp / "q") + " --calib-ids " + (tmp / "ids.txt") +
                     " --samples 8 --seqlen 64 --moe-min-tokens 16");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto e0 = run("eval " + src + " --ids " + (tmp / "ids.txt") + " --seqlen 64 --max-windows 8");
  const auto e1 = run("eval " + (tmp / "q") + " --ids " + (tmp / "ids.txt") + " --seqlen 64 --max-windows 8");
  ASSERT_EQ(e0.code, 0) << e0.out;
  ASSERT_EQ(e1.code, 0) << e1.out;
  const double p0 = ppl_of(e0.out), p1 = ppl_of(e1.out);
  EXPECT_GT(p0, 1);
  EXPECT_LT(std::fabs(p1 - p0) / p0, 0.2) << p0 << " vs " << p1;
}

INSTANTIATE_TEST_SUITE_P(Models, GoldenE2E,
                         ::testing::Values("qwen3_moe_tiny", "qwen3_moe_nonorm_tiny", "mixtral_tiny", "gemma3_tiny",
                                           "phi3_tiny", "phi3_longrope_tiny"));

}  // namespace
