// tests/io/inspect_test.cpp — inspect() JSON for the bundled model and for a written quantized-style
// directory with a quantization_config; inspect_text() alignment.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "fp4q/io/inspect.h"
#include "fp4q/io/writer.h"
#include "io_test_util.h"

namespace fp4q::io {
namespace {

using nlohmann::json;
using testing::ScratchDir;

const std::string kModelDir = std::string(FP4Q_DATA_DIR) + "/models/stories260K";

TEST(Inspect, BundledModel) {
  const json j = inspect(kModelDir);
  EXPECT_EQ(j["dir"], kModelDir);
  EXPECT_TRUE(j["index"].is_null());
  EXPECT_EQ(j["num_tensors"], 47);
  EXPECT_EQ(j["total_tensor_bytes"], 1044992 - 8 - 4856);
  EXPECT_EQ(j["dtypes"], (json{{"F32", {{"tensors", 47}, {"bytes", 1044992 - 8 - 4856}}}}));
  ASSERT_EQ(j["files"].size(), 1u);
  EXPECT_EQ(j["files"][0]["file"], "model.safetensors");
  EXPECT_EQ(j["files"][0]["bytes"], 1044992);
  EXPECT_EQ(j["files"][0]["tensors"], 47);
  EXPECT_EQ(j["files"][0]["metadata"], (json{{"format", "pt"}}));
  EXPECT_EQ(j["config"]["model_type"], "llama");
  EXPECT_EQ(j["config"]["torch_dtype"], "float32");
  EXPECT_TRUE(j["quantization_config"].is_null());
  ASSERT_EQ(j["tensors"].size(), 47u);
  const json& t0 = j["tensors"][0];
  EXPECT_EQ(t0["name"], "model.embed_tokens.weight");
  EXPECT_EQ(t0["dtype"], "F32");
  EXPECT_EQ(t0["shape"], (json{512, 64}));
  EXPECT_EQ(t0["numel"], 32768);
  EXPECT_EQ(t0["bytes"], 131072);
  EXPECT_EQ(t0["file"], "model.safetensors");
  // Sum of per-tensor bytes is consistent.
  int64_t sum = 0;
  for (const auto& t : j["tensors"]) sum += t["bytes"].get<int64_t>();
  EXPECT_EQ(sum, j["total_tensor_bytes"].get<int64_t>());
  // The file path gives the same tensors.
  const json jf = inspect(kModelDir + "/model.safetensors");
  EXPECT_EQ(jf["tensors"], j["tensors"]);
}

TEST(Inspect, TextTableIsAligned) {
  const std::string s = inspect_text(inspect(kModelDir));
  EXPECT_NE(s.find("Tensors: 47"), std::string::npos) << s;
  EXPECT_NE(s.find("Quantization config: none"), std::string::npos) << s;
  // In the tensor table every row has the DTYPE column at the same offset.
  std::istringstream in(s.substr(s.find("\nTensors:\n") + 10));
  std::string line;
  size_t col = std::string::npos;
  int rows = 0;
  while (std::getline(in, line)) {
    if (line.empty()) break;
    const size_t pos = rows == 0 ? line.find("DTYPE") : line.find("F32");
    ASSERT_NE(pos, std::string::npos) << line;
    if (col == std::string::npos) col = pos;
    EXPECT_EQ(pos, col) << line;
    ++rows;
  }
  EXPECT_EQ(rows, 48);
  EXPECT_EQ(s.back(), '\n');
}

TEST(Inspect, QuantizedDirectoryWithConfig) {
  ScratchDir d;
  {
    ShardedWriter w(d.path(), 20, json{{"format", "pt"}});
    const uint8_t packed[16] = {0x21, 0x43};
    w.add_raw("layer.weight_packed", DType::kU8, {2, 8}, packed, 16);
    const uint8_t scale[2] = {0x38, 0x40};
    w.add_raw("layer.weight_scale", DType::kF8_E4M3, {2, 1}, scale, 2);
    const float g = 448.0f * 6.0f;
    w.add(make_tensor_from_f32("layer.weight_global_scale", {1}, &g, DType::kF32));
    w.finish();
  }
  const json qc = {{"quant_method", "compressed-tensors"}, {"format", "nvfp4-pack-quantized"}};
  std::ofstream(d / "config.json") << json{{"model_type", "llama"}, {"quantization_config", qc}}.dump();
  const json j = inspect(d.path());
  EXPECT_EQ(j["quantization_config"], qc);
  EXPECT_TRUE(j["index"].is_string());
  EXPECT_EQ(j["files"].size(), 2u);
  EXPECT_EQ(j["dtypes"]["U8"]["bytes"], 16);
  EXPECT_EQ(j["dtypes"]["F8_E4M3"]["tensors"], 1);
  EXPECT_EQ(j["tensors"][1]["name"], "layer.weight_packed");
  EXPECT_EQ(j["tensors"][1]["file"], "model-00001-of-00002.safetensors");
  EXPECT_EQ(j["tensors"][2]["file"], "model-00001-of-00002.safetensors");
  EXPECT_EQ(j["tensors"][0]["file"], "model-00002-of-00002.safetensors");
  const std::string s = inspect_text(j);
  EXPECT_NE(s.find("nvfp4-pack-quantized"), std::string::npos) << s;
  EXPECT_NE(s.find("F8_E4M3"), std::string::npos) << s;
}

}  // namespace
}  // namespace fp4q::io
