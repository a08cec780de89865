#include "fp4q/pipeline/quantize.h"

#include <algorithm>
#include <cstdio>

#include <sys/resource.h>
#include <map>
#include <sstream>

#include <spdlog/spdlog.h>

#include "fp4q/core/error.h"
#include "fp4q/exporter/exporter.h"
#include "fp4q/exporter/layout.h"
#include "fp4q/io/writer.h"
#include "fp4q/linalg/bf16_gemm.h"
#include "fp4q/pipeline/estimate.h"
#include "fp4q/pipeline/hessian_file.h"
#include "checkpoint.h"
#include "internal.h"
#include "moe_quant.h"

namespace fp4q::pipeline {

using namespace detail;

namespace {

std::string weight_name(const LinearPlan& lp) { return lp.name + ".weight"; }

// Streams results into the exporter, the report and (when set) the checkpoint of the current
// layer, one progress line per tensor (none for layers restored from a checkpoint).
class Sink {
 public:
  Sink(exporter::Exporter& ex, const Plan& plan) : ex_(ex), total_(static_cast<int>(plan.linears.size())) {}
  void quantized(Solved&& s) {
    ex_.add_quantized(s.ql);
    if (ck_) ck_->add(s.ql, s.rec);
    emit(std::move(s.rec));
  }
  void restored(exporter::QuantizedLinear&& ql, TensorRecord&& rec) {
    ex_.add_quantized(ql);
    records_.push_back(std::move(rec));
  }
  void kept(const LinearPlan& lp, bool quiet = false) {
    if (quiet) records_.push_back(kept_record(lp));
    else emit(kept_record(lp));
  }
  void set_checkpoint(Checkpoint* ck) { ck_ = ck; }
  std::vector<TensorRecord>& records() { return records_; }

 private:
  void emit(TensorRecord r) {
    spdlog::info("{}", progress_line(r, static_cast<int>(records_.size()) + 1, total_));
    records_.push_back(std::move(r));
  }
  exporter::Exporter& ex_;
  int total_;
  std::vector<TensorRecord> records_;
  Checkpoint* ck_ = nullptr;
};

// Passes through every tensor that is not a quantized Linear weight and whose name starts with
// `prefix` (every remaining tensor when prefix is empty), once.
class Passthrough {
 public:
  Passthrough(exporter::Exporter& ex, const io::ModelFiles& files, const Plan& plan) : ex_(ex), files_(files) {
    for (const auto& l : plan.linears)
      if (l.quantize) done_[weight_name(l)] = true;
  }
  void flush(const std::string& prefix) {
    for (const auto& name : files_.names()) {
      if (!prefix.empty() && name.compare(0, prefix.size(), prefix) != 0) continue;
      if (done_.count(name)) continue;
      ex_.add_passthrough(name, files_.info(name), files_.data(name));
      done_[name] = true;
    }
  }

 private:
  exporter::Exporter& ex_;
  const io::ModelFiles& files_;
  std::map<std::string, bool> done_;
};

std::string layer_prefix(int l) { return "model.layers." + std::to_string(l) + "."; }

// Looks for checkpoints of this output next to it (checkpoint.h). Returns the temporary
// directory to resume from ("" = start a new one). Without --resume every checkpoint found is
// left in place with a hint. With --resume and no compatible one, *refusal is set to the error
// to raise once OUT itself has been checked (a finished OUT is reported first).
std::string select_checkpoint(const QuantizeOptions& opt, const nlohmann::json& settings,
                              const nlohmann::json& inputs, std::unique_ptr<Error>* refusal) {
  const auto found = find_checkpoints(opt.out_dir, settings, inputs);
  const FoundCheckpoint* best = nullptr;
  for (const auto& f : found)
    if (f.mismatch.empty() && !f.busy && (!best || f.next_layer > best->next_layer)) best = &f;
  if (!opt.resume) {
    for (const auto& f : found)
      spdlog::warn("{} holds a checkpoint of this output ({} of {} layers done, {}){}; left in place: {}", f.tmp_dir,
                   f.next_layer, f.num_layers, human_bytes(static_cast<int64_t>(f.bytes)),
                   f.busy ? "; another fp4q process is using it" : f.mismatch.empty() ? "" : "; " + f.mismatch,
                   f.mismatch.empty() && !f.busy ? "to continue from it, rerun with --resume (or delete it):\n  " + resume_command()
                                                 : "delete it when it is no longer needed");
    return {};
  }
  if (best) return best->tmp_dir;
  if (found.empty()) {
    spdlog::warn("--resume: no checkpoint of {} found (no {}.tmp-*/{}/manifest.json); starting from layer 1",
                 opt.out_dir, opt.out_dir, kCheckpointDir);
    return {};
  }
  const FoundCheckpoint& f = found.front();
  *refusal = std::make_unique<Error>(
      ErrorKind::kUsage,
      f.busy ? "cannot resume: another fp4q process is using the checkpoint"
             : "cannot resume: the checkpoint does not match this run: " + f.mismatch,
      f.tmp_dir,
      f.busy ? "wait for that run to finish"
             : "rerun with the settings and input files the checkpoint was made with, or without --resume "
               "to start over (then delete " + f.tmp_dir + ")");
  return {};
}

}  // namespace

std::string dry_run_text(const QuantizeOptions& opt) {
  const auto files = io::ModelFiles::open(opt.model_dir);
  const Plan plan = make_plan(files, opt.settings);
  std::string out = plan_text(plan);
  const auto cfg = model::ModelConfig::load(opt.model_dir);
  const QuantSettings& s = opt.settings;
  const bool w4a4 = s.activations == exporter::Activations::kFp4;
  const bool need_hessians = s.method != Method::kRtn;
  const bool calibrate = (need_hessians && opt.hessians_path.empty()) ||
                         (w4a4 && format::spec(s.format).has_global_scale);
  int64_t T = opt.calib.seqlen;
  if (cfg.max_pos > 0) T = std::min<int64_t>(T, cfg.max_pos);
  RunEstimate e = estimate_run(cfg, plan, opt.calib.samples, T, calibrate, need_hessians);
  add_time_estimate(e);
  char b[160];
  std::snprintf(b, sizeof b, "# calibration: %s\n",
                calibrate ? (std::to_string(opt.calib.samples) + " samples x " + std::to_string(T) + " tokens").c_str()
                          : "none (data-free)");
  out += b;
  std::string est = estimate_text(e);
  for (size_t p = 0; p < est.size();) {  // as comment lines
    const size_t nl = est.find('\n', p);
    out += "# " + est.substr(p, nl - p) + "\n";
    p = nl == std::string::npos ? est.size() : nl + 1;
  }
  return out;
}

std::string phase_text(const PhaseTimes& p) {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "phases (s): calibration forward %.2f, Hessians %.2f, activation amax %.2f, scales %.2f, "
                "rotation %.2f, GPTQ factor %.2f, sweep %.2f, stats %.2f, quantized forward %.2f, "
                "activation quant %.2f, export %.2f, total %.2f",
                p.calib_forward, p.hessian, p.act_amax, p.scale_search, p.rotate, p.gptq_factor,
                p.gptq_sweep, p.stats, p.quant_forward, p.act_quant, p.export_, p.total);
  return buf;
}

std::string plan_text(const Plan& plan) {
  std::ostringstream s;
  int64_t before = 0, after = 0;
  for (const auto& l : plan.linears) {
    const int64_t b = l.out * l.in * static_cast<int64_t>(io::dtype_size(l.dtype));
    const int64_t a = l.quantize ? quantized_bytes(plan.settings.format, l.out, l.in) : b;
    before += b;
    after += a;
    s << l.name << "\t" << l.out << "x" << l.in << "\t"
      << (l.quantize ? format::spec(plan.settings.format).name : "keep") << "\t"
      << (l.quantize ? "" : l.skip_reason) << "\n";
  }
  s << "# " << plan.num_quantized() << " of " << plan.linears.size() << " linears quantized; "
    << human_bytes(before) << " -> " << human_bytes(after) << "\n";
  return s.str();
}

QuantizeResult run_quantize(const QuantizeOptions& opt) {
  const auto t0 = Clock::now();
  const QuantSettings& s = opt.settings;
  const auto files = io::ModelFiles::open(opt.model_dir);
  const Plan plan = make_plan(files, s);
  const bool w4a4 = s.activations == exporter::Activations::kFp4;
  spdlog::info("{}: {} {} ({} scales, rotation {}, act-order {}, activations {}); {} of {} linears quantized",
               opt.model_dir, format::spec(s.format).name, method_name(s.method),
               format::scale_method_name(s.scales), s.hadamard ? std::to_string(s.hadamard) : "none",
               s.act_order ? "static" : "none", w4a4 ? "fp4" : "16-bit", plan.num_quantized(),
               plan.linears.size());
  for (const auto& l : plan.linears)
    if (!l.quantize) spdlog::info("keeping {} unquantized: {}", l.name, l.skip_reason);
  QuantizeResult result;
  if (opt.dry_run) return result;

  if (w4a4 && format::spec(s.format).element != format::ElementType::kE2M1)
    throw Error(ErrorKind::kUsage, "--activations fp4 needs an FP4 format (nvfp4 or mxfp4)", "--activations");
  const bool need_hessians = s.method != Method::kRtn;
  const bool need_act_scale = w4a4 && format::spec(s.format).has_global_scale;
  const bool calibrate = (need_hessians && opt.hessians_path.empty()) || need_act_scale;
  std::unique_ptr<HessianFile> hf;
  if (need_hessians && !opt.hessians_path.empty())
    hf = std::make_unique<HessianFile>(HessianFile::open(opt.hessians_path));
  bool has_experts = false;
  for (int l = 0; l < plan.num_layers; ++l) has_experts = has_experts || plan.num_experts(l) > 0;
  if (has_experts && (opt.export_kind == exporter::ExportKind::kFpQuantReal ||
                      opt.export_kind == exporter::ExportKind::kFpQuantPseudo))
    throw Error(ErrorKind::kUsage,
                "the fp-quant layouts cannot hold MoE experts (fp_quant converts nn.Linear modules; "
                "transformers 5 stores experts as fused 3-D parameters)",
                "--export", "use --export compressed-tensors (vLLM's fused-MoE loaders) or --export dequant");
  if (opt.calib_compute == ComputeDtype::kBF16) {  // before any output exists
    linalg::require_bf16_gemm("--compute bf16");
    spdlog::info(calibrate ? "calibration Linear products in bf16 (inputs rounded to bf16, float32 accumulation)"
                           : "--compute bf16 has no effect: this run has no calibration forward");
  }
  if (hf && has_experts)
    throw Error(ErrorKind::kUsage, "Hessian files do not cover MoE experts (their Hessians come from routed tokens)",
                "--hessians", "calibrate instead (--calib / --calib-ids), or use --method rtn");

  // Resumable runs: the calibrated ones (checkpoint.h). A model of one layer has nothing to resume.
  const bool checkpointed = calibrate && plan.num_layers > 1;
  nlohmann::json ck_settings, ck_inputs;
  std::string adopt;
  std::unique_ptr<Error> refusal;
  if (checkpointed) {
    ck_settings = settings_fingerprint(opt, true);
    ck_inputs = input_fingerprint(opt.model_dir);
    adopt = select_checkpoint(opt, ck_settings, ck_inputs, &refusal);
  } else if (opt.resume) {
    spdlog::warn("--resume: {} runs are not checkpointed (no calibration forward to save); starting from the beginning",
                 calibrate ? "single-layer" : "data-free");
  }
  io::AtomicDir out(opt.out_dir, opt.force, adopt);  // fails now, before any work, if OUT exists
  if (refusal) throw *refusal;
  std::unique_ptr<Checkpoint> ck;
  bool resumed = false;
  // On failure: keep a temporary directory holding a valid checkpoint when resuming can help
  // (I/O errors such as a full disk, unexpected exceptions) and the input files are unchanged;
  // never remove a directory adopted for resuming before it was taken over.
  auto on_failure = [&](bool resumable_error) {
    if (!adopt.empty() && !resumed) {
      out.keep();
      return;
    }
    if (!ck || !ck->valid() || !resumable_error) return;
    bool same_inputs = false;
    try {
      same_inputs = input_fingerprint(opt.model_dir) == ck_inputs;
    } catch (...) {
    }
    if (!same_inputs) {
      spdlog::warn("the input files changed during the run: the checkpoint in {} is removed", out.path());
      return;
    }
    ck->drop_partial();
    out.keep();
    spdlog::warn("kept {} with a checkpoint after layer {} of {} ({}): rerun the same command with --resume to "
                 "continue at layer {} (or delete it):\n  {}",
                 out.path(), ck->next_layer(), plan.num_layers, human_bytes(static_cast<int64_t>(ck->bytes_on_disk())),
                 ck->next_layer() + 1, resume_command());
  };
  try {  // the rest of the run (not indented); on_failure above decides about the temp directory
  if (checkpointed) {
    ck = std::make_unique<Checkpoint>(out.path(), ck_settings, ck_inputs, plan.num_layers);
    if (!adopt.empty()) ck->resume();
    resumed = true;
  }
  exporter::QuantizedModelInfo info;
  info.format = s.format;
  info.hadamard = s.hadamard;
  info.activations = s.activations;
  info.method = method_name(s.method);
  info.scales = format::scale_method_name(s.scales);
  info.ignored_linears = plan.ignored_names();
  exporter::ExportOptions eo;
  eo.max_shard_bytes = opt.max_shard_bytes;
  if (!opt.export_dtype.empty()) eo.dtype = exporter::parse_float_dtype(opt.export_dtype);
  exporter::Exporter ex;
  ex.begin(opt.model_dir, info, opt.export_kind, out.path(), eo);
  Sink sink(ex, plan);
  Passthrough pass(ex, files, plan);
  PhaseTimes ph;
  int64_t planned_peak = 0;

  if (!calibrate) {
    // Data-free: RTN, or GPTQ with Hessians from a file. One Linear group in memory at a time.
    for (int l = 0; l < plan.num_layers; ++l) {
      for (int g = 0; g < kNumInputGroups; ++g) {
        auto members = group_members(plan, l, g, true);
        if (members.empty()) continue;
        std::vector<std::vector<float>> W;
        for (auto* m : members) W.push_back(files.read_f32(weight_name(*m)));
        std::vector<float> H;
        int64_t samples = 0;
        if (hf) H = hf->read(members.front()->name, members.front()->in, &samples);
        for (auto& sv : solve_group(s, members, std::move(W), hf ? H.data() : nullptr, samples, &ph)) {
          const auto te = Clock::now();
          sink.quantized(std::move(sv));
          ph.export_ += since(te);
        }
      }
      if (plan.num_experts(l) > 0)  // MoE experts: RTN, unrotated (moe_quant.h)
        quantize_experts_data_free(s, plan, l, files, &ph, [&](Solved&& sv) {
          const auto te = Clock::now();
          sink.quantized(std::move(sv));
          ph.export_ += since(te);
        });
      for (const auto& lp : plan.linears)
        if (lp.layer == l && !lp.quantize) sink.kept(lp);
      pass.flush(layer_prefix(l));
    }
  } else {
    // Sequential calibration: the inputs of layer l+1 are the outputs of the quantized layer l.
    const auto model = [&] {
      auto m = model::Model::open(opt.model_dir);
      m.set_linear_compute(opt.calib_compute);
      return m;
    }();
    const auto& cfg = model.config();
    const auto cs = calibration_set(opt.model_dir, cfg, opt.calib);
    const int64_t n = static_cast<int64_t>(cs.samples.size()), T = cs.seqlen;
    {
      RunEstimate est = estimate_run(cfg, plan, n, T, true, need_hessians && !hf);
      add_time_estimate(est);
      spdlog::info("{}", estimate_text(est));
      check_memory(est.peak, opt.max_memory);
      planned_peak = est.peak;
    }
    CalibActivations acts(model, cs);
    int start = 0;
    if (ck && ck->valid()) {
      // Resumed: re-feed the exporter with the checkpointed layers in their original order
      // (quantized Linears, kept records, the layer's passthrough tensors), then load X.
      const auto tr = Clock::now();
      start = ck->next_layer();
      for (int l = 0; l < start; ++l) {
        ck->replay_layer(l, [&](exporter::QuantizedLinear&& ql, TensorRecord&& rec) {
          sink.restored(std::move(ql), std::move(rec));
        });
        for (const auto& lp : plan.linears)
          if (lp.layer == l && !lp.quantize) sink.kept(lp, /*quiet=*/true);
        pass.flush(layer_prefix(l));
      }
      ck->load_activations(acts.x(), acts.x_count(), n, T, acts.hidden());
      ph.export_ += since(tr);
      spdlog::info("layers 1-{} restored ({} tensors) in {:.2f} s; continuing at layer {}", start,
                   sink.records().size(), since(tr), start + 1);
    }
    for (int l = start; l < plan.num_layers; ++l) {
      const auto tl = Clock::now();
      // Checkpoint after every layer but the last (X is not needed after it).
      Checkpoint* lck = ck && l + 1 < plan.num_layers ? ck.get() : nullptr;
      if (lck) lck->begin_layer(l);
      sink.set_checkpoint(lck);
      model::LayerWeights w = model.load_layer(l);
      // 1) Hessian pass with full-precision weights (inputs of each Linear captured; the layer's
      //    output is not needed, so down_proj is not computed).
      MoeCaptureHook cap(plan, l, opt.moe, need_hessians && !hf, need_act_scale);  // dense: = CaptureHook
      cap.hadamard = s.hadamard;
      cap.want_amax = need_act_scale;
      for (int g = 0; g < kNumInputGroups; ++g) {
        auto m = group_members(plan, l, g, true);
        if (!m.empty() && (need_act_scale || (need_hessians && !hf)))
          cap.acc[g] = std::make_unique<gptq::HessianAccumulator>(m.front()->in, m.front()->name);
      }
      acts.run(l, w, &cap, /*update=*/false);
      test_kill_point("hessian", l);
      const double t_hess = since(tl);
      ph.hessian += cap.seconds_hessian;
      ph.act_amax += cap.seconds_amax;
      ph.calib_forward += t_hess - cap.seconds_hessian - cap.seconds_amax;
      // 2) Solve each input group; the quantized layer is assembled in w itself (each solved
      //    Linear's float32 weight moves into the solver and its dequantized result moves back:
      //    no copy of the layer is made).
      model::LayerWeights& wq = w;
      TransformHook th;
      double herr_sum = 0, damp_max = 0;
      int herr_n = 0;
      for (int g = 0; g < kNumInputGroups; ++g) {
        auto members = group_members(plan, l, g, true);
        if (members.empty()) continue;
        std::vector<std::vector<float>> W;
        for (auto* m : members) W.push_back(std::move(w.lin[static_cast<int>(m->proj)].w));
        const float ags = need_act_scale ? activation_global_scale(cap.amax[g]) : 0.0f;
        th.active[g] = true;
        th.t[g] = InputTransform{s.hadamard, w4a4, s.format, need_act_scale ? ags : 1.0f};
        std::vector<Solved> solved;
        int64_t samples = n;
        if (hf) {
          const std::vector<float> H = hf->read(members.front()->name, members.front()->in, &samples);
          solved = solve_group(s, members, std::move(W), H.data(), samples, &ph);
        } else if (need_hessians) {
          linalg::HugeBuffer<float> H = cap.acc[g]->take_hessian();
          cap.acc[g].reset();
          solved = solve_group_inplace(s, members, std::move(W), H.data(), samples, &ph);
        } else {
          solved = solve_group(s, members, std::move(W), nullptr, samples, &ph);
        }
        for (size_t i = 0; i < solved.size(); ++i) {
          Solved& sv = solved[i];
          wq.lin[static_cast<int>(members[i]->proj)].w = std::move(sv.deq_rot);
          sv.ql.input_global_scale = ags;
          if (sv.rec.hessian_err >= 0) { herr_sum += sv.rec.hessian_err; ++herr_n; }
          damp_max = std::max(damp_max, sv.rec.damp);
          const auto te = Clock::now();
          sink.quantized(std::move(sv));
          ph.export_ += since(te);
        }
        test_kill_point("solve", l);
      }
      if (plan.num_experts(l) > 0) {  // MoE experts (moe_quant.h)
        const ExpertSolveStats est = solve_layer_experts(
            s, plan, l, wq, cap, n, need_hessians && !hf, need_act_scale, th, &ph, [&](Solved&& sv) {
              const auto te = Clock::now();
              sink.quantized(std::move(sv));
              ph.export_ += since(te);
            });
        herr_sum += est.herr_sum;
        herr_n += est.herr_n;
        damp_max = std::max(damp_max, est.damp_max);
        spdlog::info("layer {}/{}: {}", l + 1, plan.num_layers, expert_stats_text(est, opt.moe));
      }
      {
        const auto te = Clock::now();
        for (const auto& lp : plan.linears)
          if (lp.layer == l && !lp.quantize) sink.kept(lp);
        pass.flush(layer_prefix(l));
        ph.export_ += since(te);
      }
      // 3) Inputs of the next layer: this layer with quantized weights (and activations).
      if (l + 1 < plan.num_layers || opt.forward_last_layer) {
        const auto tf = Clock::now();
        acts.run(l, wq, &th, /*update=*/true);
        ph.act_quant += th.seconds;
        ph.quant_forward += since(tf) - th.seconds;
      }
      sink.set_checkpoint(nullptr);
      if (lck) lck->commit_layer(l, acts.x(), acts.x_count(), n, T, acts.hidden());
      spdlog::info("layer {}/{}: {} samples, damp {}, mean h_err {:.3e}, Hessian pass {:.2f} s, layer {:.2f} s, ETA {:.0f} s",
                   l + 1, plan.num_layers, n, damp_max, herr_n ? herr_sum / herr_n : 0.0, t_hess, since(tl),
                   since(t0) / (l + 1 - start) * (plan.num_layers - l - 1));
    }
  }
  {
    const auto te = Clock::now();
    pass.flush("");
    test_kill_point("export");
    ex.finish();
    test_kill_point("commit");
    if (ck) ck->remove();  // not part of the output
    out.commit();
    ph.export_ += since(te);
  }
  result.records = std::move(sink.records());
  result.seconds = since(t0);
  ph.total = result.seconds;
  result.phases = ph;
  spdlog::info("{}", phase_text(ph));
  {
    struct rusage ru {};
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
      result.peak_rss_bytes = static_cast<int64_t>(ru.ru_maxrss) * 1024;
      spdlog::info("peak resident memory {}{}", human_bytes(result.peak_rss_bytes),
                   planned_peak > 0 ? " (planned " + human_bytes(planned_peak) + ")" : std::string());
    }
  }
  spdlog::info("wrote {}\n{}", opt.out_dir, summary_text(result.records, result.seconds));
  if (!opt.report_path.empty()) {
    nlohmann::json run = {{"model", opt.model_dir}, {"output", opt.out_dir},
                          {"format", format::spec(s.format).name}, {"method", method_name(s.method)},
                          {"scales", format::scale_method_name(s.scales)}, {"hadamard", s.hadamard},
                          {"act_order", s.act_order ? "static" : "none"}, {"damp", s.damp},
                          {"activations", w4a4 ? "fp4" : "none"}, {"compute", compute_dtype_name(opt.calib_compute)},
                          {"seconds", result.seconds}};
    io::write_file_atomic(opt.report_path, report_json(result.records, run).dump(2) + "\n");
  }
  return result;
  } catch (const Error& e) {
    on_failure(e.kind() == ErrorKind::kIo);
    throw;
  } catch (const std::exception&) {
    on_failure(true);
    throw;
  }
}

}  // namespace fp4q::pipeline
