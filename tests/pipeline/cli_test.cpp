// CLI-level tests of report, hessians, formats, dry-run and the memory guard.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "fp4q/io/io.h"
#include "run_util.h"

namespace fs = std::filesystem;

namespace {

const std::string kModel = std::string(FP4Q_DATA_DIR) + "/models/stories260K";

using fp4q_test::Run;

// stdout and stderr separately (machine output must be on stdout only).
Run run(const std::string& args, const std::string& tmp) { return fp4q_test::run_fp4q(args, false, tmp); }

struct TempDir {
  fp4q_test::TempDir dir;
  std::string path = dir.path();
};

std::vector<std::vector<std::string>> parse_tsv(const std::string& s) {
  std::vector<std::vector<std::string>> rows;
  std::stringstream ss(s);
  for (std::string line; std::getline(ss, line);) {
    std::vector<std::string> cells;
    std::stringstream ls(line);
    for (std::string c; std::getline(ls, c, '\t');) cells.push_back(c);
    rows.push_back(cells);
  }
  return rows;
}

}  // namespace

TEST(Cli, FormatsJsonComesFromTheTable) {
  TempDir t;
  const auto r = run("formats --json", t.path);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.size(), 4u);
  EXPECT_EQ(j[0]["name"], "nvfp4");
  EXPECT_EQ(j[0]["group_size"], 16);
  EXPECT_DOUBLE_EQ(j[0]["bits_per_weight"].get<double>(), 4.5);
  EXPECT_EQ(j[1]["name"], "mxfp4");
  EXPECT_EQ(j[1]["group_size"], 32);
  EXPECT_DOUBLE_EQ(j[1]["bits_per_weight"].get<double>(), 4.25);
  EXPECT_EQ(j[3]["name"], "mxfp4-fit");
  EXPECT_EQ(j[3]["scale"], "log8");
  EXPECT_DOUBLE_EQ(j[3]["bits_per_weight"].get<double>(), 4.25);
}

TEST(Cli, DryRunPrintsThePlanAndWritesNothing) {
  TempDir t;
  const auto r = run("quantize " + kModel + " " + t.path + "/o --dry-run --format mxfp4 --ignore 'layers\\.0\\.'", t.path);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(fs::exists(t.path + "/o"));
  EXPECT_NE(r.out.find("model.layers.0.self_attn.q_proj\t64x64\tkeep\tmatches --ignore"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("model.layers.1.self_attn.q_proj\t64x64\tmxfp4"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("# 24 of 35 linears quantized"), std::string::npos) << r.out;
}

TEST(Cli, MemoryGuardRefusesBeforeAnyWork) {
  TempDir t;
  const auto r = run("quantize " + kModel + " " + t.path + "/o --max-memory 64K --samples 4 --seqlen 64", t.path);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--max-memory"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("exceeds the limit 64.0 KiB"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(t.path + "/o"));
}

// `report` with calibration and `report --hessians` from `fp4q hessians` see identical Hessians,
// so every number must agree; GPTQ beats RTN on the Hessian-weighted error it minimises.
TEST(Cli, ReportFromCalibrationEqualsReportFromHessianFile) {
  TempDir t;
  const std::string calib = " --samples 8 --seqlen 128 --seed 3";
  auto h = run("-q hessians " + kModel + " " + t.path + "/h.safetensors" + calib, t.path);
  ASSERT_EQ(h.code, 0) << h.err;
  const auto hf = fp4q::io::SafetensorsFile::open(t.path + "/h.safetensors");
  EXPECT_NE(hf.find("model.layers.4.mlp.down_proj.hessian"), nullptr);
  EXPECT_NE(hf.find("model.layers.0.self_attn.q_proj.hessian_samples"), nullptr);
  EXPECT_EQ(hf.find("model.layers.0.self_attn.k_proj.hessian"), nullptr);  // shared with q_proj
  const std::string args = " --formats nvfp4,mxfp4 --methods rtn,gptq,mr-gptq --format tsv";
  const auto a = run("-q report " + kModel + args + calib, t.path);
  const auto b = run("-q report " + kModel + args + " --hessians " + t.path + "/h.safetensors", t.path);
  ASSERT_EQ(a.code, 0) << a.err;
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_EQ(a.out, b.out);
  const auto rows = parse_tsv(a.out);
  ASSERT_EQ(rows.size(), 1u + 2 * 3 * 35);
  ASSERT_EQ(rows[0][0], "name");
  int better = 0, total = 0;
  std::map<std::string, double> rtn;  // key: format + name
  for (size_t i = 1; i < rows.size(); ++i) {
    const auto& r = rows[i];
    if (r[2] == "keep") continue;
    if (r[3] == "rtn") rtn[r[2] + r[0]] = std::stod(r[6]);
  }
  for (size_t i = 1; i < rows.size(); ++i) {
    const auto& r = rows[i];
    if (r[2] == "keep" || r[3] != "gptq") continue;
    ++total;
    better += std::stod(r[6]) < rtn[r[2] + r[0]];
  }
  EXPECT_EQ(total, 60);
  EXPECT_GE(better, 57) << "GPTQ should lower the Hessian-weighted error on (nearly) every layer";
  // GPTQ with the Hessian file works without calibration data and writes a loadable model.
  const auto q = run("-q quantize " + kModel + " " + t.path + "/q --method gptq --hessians " + t.path + "/h.safetensors", t.path);
  ASSERT_EQ(q.code, 0) << q.err;
  EXPECT_TRUE(fs::exists(t.path + "/q/model.safetensors"));
}
