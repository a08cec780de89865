// Plan resolution on the bundled stories260K (hidden 64, intermediate 172, 5 layers).
#include "fp4q/pipeline/plan.h"

#include <gtest/gtest.h>

#include "fp4q/core/error.h"

using namespace fp4q;
using pipeline::Method;

namespace {
const std::string kModel = std::string(FP4Q_DATA_DIR) + "/models/stories260K";

pipeline::QuantSettings settings(format::FormatId f, Method m, int had = -1, std::vector<std::string> ignore = {}) {
  return pipeline::resolve_settings(f, m, had, "", true, 0.01, exporter::Activations::kNone, std::move(ignore));
}
}  // namespace

TEST(Plan, MethodDefaults) {
  auto s = settings(format::FormatId::kNVFP4, Method::kMrGptq);
  EXPECT_EQ(s.hadamard, 16);
  EXPECT_EQ(s.scales, format::ScaleMethod::kMse);
  s = settings(format::FormatId::kMXFP4, Method::kMrGptq);
  EXPECT_EQ(s.hadamard, 32);
  s = settings(format::FormatId::kNVFP4, Method::kGptq);
  EXPECT_EQ(s.hadamard, 0);
  EXPECT_EQ(s.scales, format::ScaleMethod::kAbsmax);
  s = settings(format::FormatId::kNVFP4, Method::kRtn, 64);
  EXPECT_EQ(s.hadamard, 64);
  EXPECT_THROW(settings(format::FormatId::kNVFP4, Method::kRtn, 24), Error);
  EXPECT_THROW(pipeline::parse_method("awq"), Error);
}

// NVFP4 with FP4 activations (W4A4): MR-GPTQ's default is no rotation (measured, issue 9); weight-only
// NVFP4 and MXFP4 in both modes keep the paper's blocks; an explicit block always wins.
TEST(Plan, MrGptqRotationDefaultDependsOnActivations) {
  auto w4a4 = [](format::FormatId f, int had) {
    return pipeline::resolve_settings(f, Method::kMrGptq, had, "", true, 0.01, exporter::Activations::kFp4, {});
  };
  EXPECT_EQ(w4a4(format::FormatId::kNVFP4, -1).hadamard, 0);
  EXPECT_EQ(w4a4(format::FormatId::kNVFP4, -1).scales, format::ScaleMethod::kMse);
  EXPECT_EQ(w4a4(format::FormatId::kNVFP4, 16).hadamard, 16);
  EXPECT_EQ(w4a4(format::FormatId::kMXFP4, -1).hadamard, 32);
  EXPECT_EQ(settings(format::FormatId::kNVFP4, Method::kMrGptq).hadamard, 16);  // W4A16
}

TEST(Plan, Stories260KDownProjIsKeptBecause172IsNotDivisible) {
  const auto files = io::ModelFiles::open(kModel);
  const auto plan = pipeline::make_plan(files, settings(format::FormatId::kNVFP4, Method::kMrGptq));
  EXPECT_EQ(plan.num_layers, 5);
  ASSERT_EQ(plan.linears.size(), 35u);
  EXPECT_EQ(plan.num_quantized(), 30);
  for (const auto& l : plan.linears) {
    if (l.proj == pipeline::Proj::kDown) {
      EXPECT_FALSE(l.quantize) << l.name;
      EXPECT_NE(l.skip_reason.find("172"), std::string::npos) << l.skip_reason;
    } else {
      EXPECT_TRUE(l.quantize) << l.name;
    }
  }
  const auto* q = plan.find(2, pipeline::Proj::kQ);
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->name, "model.layers.2.self_attn.q_proj");
  EXPECT_EQ(q->out, 64);
  EXPECT_EQ(q->in, 64);
  const auto* k = plan.find(2, pipeline::Proj::kK);
  EXPECT_EQ(k->out, 32);
}

TEST(Plan, IgnoreRegexAndFusedGroupsShareTheDecision) {
  const auto files = io::ModelFiles::open(kModel);
  const auto plan = pipeline::make_plan(
      files, settings(format::FormatId::kMXFP4, Method::kRtn, -1, {"layers\\.1\\.self_attn\\.k_proj", "layers\\.3\\.mlp\\.up"}));
  for (auto p : {pipeline::Proj::kQ, pipeline::Proj::kK, pipeline::Proj::kV}) {
    const auto* l = plan.find(1, p);
    EXPECT_FALSE(l->quantize) << l->name;
  }
  EXPECT_NE(plan.find(1, pipeline::Proj::kQ)->skip_reason.find("fused with model.layers.1.self_attn.k_proj"), std::string::npos);
  EXPECT_TRUE(plan.find(1, pipeline::Proj::kO)->quantize);
  EXPECT_FALSE(plan.find(3, pipeline::Proj::kGate)->quantize);
  EXPECT_FALSE(plan.find(3, pipeline::Proj::kUp)->quantize);
  EXPECT_TRUE(plan.find(0, pipeline::Proj::kK)->quantize);
  const auto ignored = plan.ignored_names();
  EXPECT_EQ(ignored.size(), 5u + 5u);  // 5 down_proj (172 % 32) + q/k/v of layer 1 + gate/up of layer 3
}

TEST(Plan, RotationMustDivideInFeatures) {
  const auto files = io::ModelFiles::open(kModel);
  const auto plan = pipeline::make_plan(files, settings(format::FormatId::kNVFP4, Method::kRtn, 128));
  EXPECT_EQ(plan.num_quantized(), 0);  // hidden 64 is not divisible by 128
  EXPECT_NE(plan.find(0, pipeline::Proj::kO)->skip_reason.find("rotation block 128"), std::string::npos);
  EXPECT_THROW(pipeline::make_plan(files, settings(format::FormatId::kNVFP4, Method::kRtn, -1, {"("})), Error);
}

TEST(Plan, QuantizedBytes) {
  EXPECT_EQ(pipeline::quantized_bytes(format::FormatId::kNVFP4, 64, 64), 64 * 32 + 64 * 4 + 4);
  EXPECT_EQ(pipeline::quantized_bytes(format::FormatId::kMXFP4, 64, 64), 64 * 32 + 64 * 2);
  EXPECT_EQ(pipeline::quantized_bytes(format::FormatId::kINT4, 64, 64), 64 * 32 + 64 * 2 * 2);
}
