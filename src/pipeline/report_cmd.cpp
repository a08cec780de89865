#include "fp4q/pipeline/report_cmd.h"

#include <cstdio>
#include <functional>

#include <spdlog/spdlog.h>

#include "fp4q/core/error.h"
#include "fp4q/io/writer.h"
#include "fp4q/pipeline/estimate.h"
#include "fp4q/pipeline/hessian_file.h"
#include "internal.h"

namespace fp4q::pipeline {

using namespace detail;

namespace {

// Hessians of the 4 input groups of one layer (empty vector = that group has no Linear).
struct LayerHessians {
  std::array<std::vector<float>, kNumInputGroups> h;
  std::array<int64_t, kNumInputGroups> dim{};
  int64_t samples = 0;
};

// Runs the full-precision model over the calibration set layer by layer and calls
// fn(layer, weights, hessians) after each layer's Hessian pass.
void for_each_layer_hessians(const std::string& model_dir, const CalibOptions& c, int64_t max_memory,
                             const std::function<void(int, const model::LayerWeights&, LayerHessians&)>& fn) {
  const auto model = model::Model::open(model_dir);
  const auto& cfg = model.config();
  if (cfg.is_moe())
    throw Error(ErrorKind::kUsage,
                std::string(cfg.arch_string) + " has MoE experts, whose Hessians come from routed tokens; "
                "`fp4q report` and `fp4q hessians` handle dense layers only",
                model_dir, "quantize with `fp4q quantize` (per-expert Hessians, --report FILE for the per-tensor table)");
  const auto cs = calibration_set(model_dir, cfg, c);
  const int64_t n = static_cast<int64_t>(cs.samples.size()), T = cs.seqlen;
  {
    // Like a GPTQ run without solves, plus every Hessian kept for the report's plans.
    const Plan plan = make_plan(model.files(), resolve_settings(format::FormatId::kNVFP4, Method::kGptq, -1, "",
                                                                true, 0.01, exporter::Activations::kNone, {}));
    RunEstimate est = estimate_run(cfg, plan, n, T, true, true);
    check_memory(est.peak, max_memory);
  }
  CalibActivations acts(model, cs);
  for (int l = 0; l < cfg.n_layers; ++l) {
    const auto tl = Clock::now();
    const auto w = model.load_layer(l);
    CaptureHook cap;
    const int64_t dims[kNumInputGroups] = {cfg.hidden, cfg.q_dim(), cfg.hidden, cfg.intermediate};
    for (int g = 0; g < kNumInputGroups; ++g)
      cap.acc[g] = std::make_unique<gptq::HessianAccumulator>(dims[g], model::linear_path(l, model::LinearKind::kQ));
    acts.run(l, w, &cap, /*update=*/true);  // full precision, X advanced in place
    LayerHessians lh;
    lh.samples = n;
    for (int g = 0; g < kNumInputGroups; ++g) {
      lh.h[g] = cap.acc[g]->hessian();
      lh.dim[g] = dims[g];
    }
    spdlog::info("layer {}/{}: Hessians of {} samples in {:.2f} s", l + 1, cfg.n_layers, n, since(tl));
    fn(l, w, lh);
  }
}

const char* kGroupModule[kNumInputGroups] = {"self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"};

}  // namespace

void run_hessians(const std::string& model_dir, const std::string& out_path, const CalibOptions& calib, bool force) {
  // Write into a temporary directory next to the output, then move the file into place.
  const std::string tmp_dir = out_path + ".fp4q-tmp";
  {
    std::FILE* f = std::fopen(out_path.c_str(), "rb");
    if (f) {
      std::fclose(f);
      if (!force) throw Error(ErrorKind::kUsage, "output exists", out_path, "pass --force to replace it");
    }
  }
  io::AtomicDir dir(tmp_dir, /*overwrite=*/true);
  {
    io::ShardedWriter w(dir.path(), ~0ull, {{"format", "fp4q-hessians"}, {"version", "1"}});
    for_each_layer_hessians(model_dir, calib, 0, [&](int l, const model::LayerWeights&, LayerHessians& lh) {
      for (int g = 0; g < kNumInputGroups; ++g) {
        const std::string m = "model.layers." + std::to_string(l) + "." + kGroupModule[g];
        w.add(io::make_tensor_from_f32(m + ".hessian", {lh.dim[g], lh.dim[g]}, lh.h[g].data(), io::DType::kF32));
        w.add(io::make_tensor_raw(m + ".hessian_samples", io::DType::kI64, {1}, &lh.samples, 8));
      }
    });
    w.finish();
  }
  if (std::rename((dir.path() + "/model.safetensors").c_str(), out_path.c_str()) != 0)
    throw Error(ErrorKind::kIo, "cannot move the Hessian file into place", out_path);
  spdlog::info("wrote {}", out_path);
}

std::vector<TensorRecord> run_report(const ReportOptions& opt) {
  if (opt.formats.empty() || opt.methods.empty())
    throw Error(ErrorKind::kUsage, "need at least one format and one method", "--formats/--methods");
  const auto files = io::ModelFiles::open(opt.model_dir);
  std::vector<Plan> plans;  // one per format × method, in output order
  for (auto fmt : opt.formats)
    for (auto m : opt.methods)
      plans.push_back(make_plan(files, resolve_settings(fmt, m, -1, "", true, 0.01, exporter::Activations::kNone, {})));
  std::vector<TensorRecord> records;
  auto solve_layer = [&](int l, const std::function<std::vector<float>(const LinearPlan&)>& weight_of,
                         const std::function<const float*(int g, int64_t* samples)>& hessian_of) {
    for (const Plan& plan : plans) {
      const QuantSettings& s = plan.settings;
      for (int g = 0; g < kNumInputGroups; ++g) {
        for (const auto* lp : group_members(plan, l, g, false)) {
          auto r = kept_record(*lp);
          r.method = method_name(s.method);
          records.push_back(r);
        }
        auto members = group_members(plan, l, g, true);
        if (members.empty()) continue;
        std::vector<std::vector<float>> W;
        for (auto* mp : members) W.push_back(weight_of(*mp));
        int64_t samples = 0;
        const float* H = hessian_of(g, &samples);
        for (auto& sv : solve_group(s, members, std::move(W), H, samples)) {
          sv.rec.method = method_name(s.method);  // RTN is reported as rtn even with a Hessian
          records.push_back(std::move(sv.rec));
        }
      }
    }
  };
  if (!opt.hessians_path.empty()) {
    const auto hf = HessianFile::open(opt.hessians_path);
    const Plan& any = plans.front();  // any plan lists every Linear (quantized or kept)
    for (int l = 0; l < any.num_layers; ++l) {
      std::array<std::vector<float>, kNumInputGroups> H;
      std::array<int64_t, kNumInputGroups> ns{};
      solve_layer(
          l, [&](const LinearPlan& lp) { return files.read_f32(lp.name + ".weight"); },
          [&](int g, int64_t* samples) -> const float* {
            if (H[g].empty()) {
              const auto members = group_members(any, l, g, true);
              const auto kept = group_members(any, l, g, false);
              const LinearPlan* lp = !members.empty() ? members.front() : kept.front();
              H[g] = hf.read(lp->name, lp->in, &ns[g]);
            }
            *samples = ns[g];
            return H[g].data();
          });
    }
  } else {
    for_each_layer_hessians(opt.model_dir, opt.calib, 0, [&](int l, const model::LayerWeights& w, LayerHessians& lh) {
      solve_layer(
          l, [&](const LinearPlan& lp) { return w.lin[static_cast<int>(lp.proj)].w; },
          [&](int g, int64_t* samples) -> const float* {
            *samples = lh.samples;
            return lh.h[g].data();
          });
    });
  }
  return records;
}

}  // namespace fp4q::pipeline
