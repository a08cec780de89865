// src/pipeline/bench.cpp — `fp4q bench` (see bench.h).
#include "fp4q/pipeline/bench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "fp4q/core/error.h"
#include "fp4q/core/parallel.h"
#include "fp4q/io/writer.h"
#include "fp4q/linalg/blas.h"
#include "fp4q/linalg/buffer.h"
#include "fp4q/model/model.h"
#include "fp4q/pipeline/estimate.h"
#include "fp4q/pipeline/quantize.h"

namespace fp4q::pipeline {

namespace {

double seconds_of(const std::function<void()>& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Best of 3 GFLOP/s of C [m x n] = A [m x k]·B [n x k]ᵀ, native (OpenBLAS threads) or tiled.
double sgemm_rate(int64_t m, int64_t n, int64_t k, bool native) {
  linalg::HugeBuffer<float> a(static_cast<size_t>(m * k)), b(static_cast<size_t>(n * k)),
      c(static_cast<size_t>(m * n));
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (auto& v : a) v = u(rng);
  for (auto& v : b) v = u(rng);
  auto run = [&] {
    if (native)
      linalg::sgemm_native(false, true, m, n, k, 1.0f, a.data(), k, b.data(), k, 0.0f, c.data(), n);
    else
      linalg::sgemm(false, true, m, n, k, 1.0f, a.data(), k, b.data(), k, 0.0f, c.data(), n);
  };
  run();  // warm-up (page faults, OpenBLAS thread start)
  double best = 0;
  for (int r = 0; r < 3; ++r) best = std::max(best, 2.0 * m * n * k / seconds_of(run) / 1e9);
  return best;
}

std::string make_work_dir(const std::string& base) {
  std::string root = base;
  if (root.empty()) {
    const char* t = std::getenv("TMPDIR");
    root = t && *t ? t : "/tmp";
  }
  std::string tmpl = root + "/fp4q-bench-XXXXXX";
  if (!mkdtemp(tmpl.data()))
    throw Error(ErrorKind::kIo, "cannot create a temporary directory", root, "set TMPDIR or --work-dir");
  return tmpl;
}

// Removes the work directory on every exit path.
struct DirGuard {
  std::string path;
  ~DirGuard() {
    std::error_code ec;
    if (!path.empty()) std::filesystem::remove_all(path, ec);
  }
};

}  // namespace

std::vector<BenchRun> run_bench(const BenchOptions& opt) {
  if (opt.samples < 1 || opt.seqlen < 2)
    throw Error(ErrorKind::kUsage, "--samples must be >= 1 and --seqlen >= 2", "bench");
  DirGuard dir{make_work_dir(opt.work_dir)};
  model::ModelShape layer = opt.shape;
  layer.n_layers = 1;
  layer.vocab = 1024;
  layer.max_pos = std::max<int64_t>(layer.max_pos, opt.seqlen);
  const std::string mdir = dir.path + "/model";
  std::filesystem::create_directory(mdir);
  const int64_t ids = std::max<int64_t>(opt.samples * opt.seqlen, 4 * opt.seqlen) + opt.seqlen;
  spdlog::info("bench: writing a synthetic {} layer to {}", opt.shape.name, mdir);
  model::write_synthetic_model(mdir, layer, io::DType::kBF16, 1, ids);

  QuantizeOptions q;
  q.model_dir = mdir;
  q.settings = resolve_settings(opt.format, opt.method, -1, "", true, 0.01, opt.activations, {});
  q.calib.ids_path = mdir + "/random-ids.txt";
  q.calib.samples = opt.samples;
  q.calib.seqlen = opt.seqlen;
  q.forward_last_layer = true;
  q.calib_compute = opt.calib_compute;
  q.force = true;

  const auto cfg = model::ModelConfig::load(mdir);
  const auto files = io::ModelFiles::open(mdir);
  const Plan plan = make_plan(files, q.settings);
  const bool gptq = opt.method != Method::kRtn;
  const RunEstimate e = estimate_run(cfg, plan, opt.samples, opt.seqlen, true, gptq);
  const RunEstimate full = estimate_run(cfg, plan, opt.project_samples, opt.project_seqlen, true, gptq);
  const double per_token_scale =
      (full.calib_forward + full.hessian + full.quant_forward) /
      std::max(1.0, e.calib_forward + e.hessian + e.quant_forward);

  std::vector<int> threads = opt.threads;
  if (threads.empty()) threads.push_back(0);
  const int saved = num_threads();
  const auto level = spdlog::get_level();
  std::vector<BenchRun> runs;
  for (int t : threads) {
    set_num_threads(t);
    BenchRun run;
    run.threads = num_threads();
    const int64_t m = model::kBatchTokens, h = layer.hidden;
    run.sgemm_gflops = sgemm_rate(m, h, h, true);
    run.tiled_gflops = sgemm_rate(m, h, h, false);
    q.out_dir = dir.path + "/out";
    spdlog::info("bench: {} threads: native SGEMM {:.1f} GFLOP/s, tiled {:.1f}; quantizing ...",
                 run.threads, run.sgemm_gflops, run.tiled_gflops);
    spdlog::set_level(spdlog::level::warn);
    QuantizeResult r;
    try {
      r = run_quantize(q);
    } catch (...) {
      spdlog::set_level(level);
      set_num_threads(saved);
      throw;
    }
    spdlog::set_level(level);
    const PhaseTimes& p = r.phases;
    struct P { const char* name; double s, flop; bool per_token; };
    const P phases[] = {
        {"calibration_forward", p.calib_forward, e.calib_forward, true},
        {"hessian_accumulation", p.hessian, e.hessian, true},
        {"activation_amax", p.act_amax, 0, true},
        {"scale_search", p.scale_search, 0, false},
        {"rotation", p.rotate, 0, false},
        {"gptq_factor", p.gptq_factor, e.gptq_factor, false},
        {"gptq_sweep", p.gptq_sweep, e.gptq_sweep, false},
        {"error_stats", p.stats, e.stats, false},
        {"quantized_forward", p.quant_forward, e.quant_forward, true},
        {"activation_fake_quant", p.act_quant, 0, true},
        {"export", p.export_, 0, false},
    };
    double flop_total = 0, projected = 0, accounted = 0;
    for (const P& ph : phases) {
      BenchRow row;
      row.phase = ph.name;
      row.threads = run.threads;
      row.seconds = ph.s;
      row.flop = ph.flop;
      row.gflops = ph.s > 0 ? ph.flop / ph.s / 1e9 : 0;
      row.sgemm_gflops = run.sgemm_gflops;
      row.ratio_to_sgemm = run.sgemm_gflops > 0 ? row.gflops / run.sgemm_gflops : 0;
      run.rows.push_back(row);
      flop_total += ph.flop;
      accounted += ph.s;
      projected += ph.per_token ? ph.s * per_token_scale : ph.s;
    }
    BenchRow other;  // what the phases do not cover (model open, calibration sampling, ...)
    other.phase = "other";
    other.threads = run.threads;
    other.seconds = std::max(0.0, p.total - accounted);
    other.sgemm_gflops = run.sgemm_gflops;
    run.rows.push_back(other);
    projected += other.seconds;
    BenchRow tot;
    tot.phase = "total";
    tot.threads = run.threads;
    tot.seconds = p.total;
    tot.flop = flop_total;
    tot.gflops = p.total > 0 ? flop_total / p.total / 1e9 : 0;
    tot.sgemm_gflops = run.sgemm_gflops;
    tot.ratio_to_sgemm = run.sgemm_gflops > 0 ? tot.gflops / run.sgemm_gflops : 0;
    run.rows.push_back(tot);
    run.projected_seconds = projected * opt.shape.n_layers;
    runs.push_back(run);
  }
  set_num_threads(saved);
  return runs;
}

namespace {

const BenchRow* find_row(const BenchRun& r, const std::string& phase) {
  for (const auto& row : r.rows)
    if (row.phase == phase) return &row;
  return nullptr;
}

}  // namespace

std::string bench_text(const BenchOptions& opt, const std::vector<BenchRun>& runs) {
  std::string s;
  char b[512];
  const auto& sh = opt.shape;
  std::snprintf(b, sizeof b,
                "fp4q bench: one %s decoder layer (hidden %lld, intermediate %lld, heads %d/%d x %d), "
                "%s %s, activations %s, calibration %lld x %lld tokens, Linear products %s\n%s\n",
                sh.name.c_str(), static_cast<long long>(sh.hidden),
                static_cast<long long>(sh.intermediate), sh.n_heads, sh.n_kv_heads, sh.head_dim,
                format::spec(opt.format).name, method_name(opt.method),
                opt.activations == exporter::Activations::kFp4 ? "fp4" : "none",
                static_cast<long long>(opt.samples), static_cast<long long>(opt.seqlen),
                compute_dtype_name(opt.calib_compute), linalg::blas_config());
  s += b;
  for (const auto& r : runs) {
    std::snprintf(b, sizeof b,
                  "\nthreads %d: SGEMM %.1f GFLOP/s (OpenBLAS native), %.1f (fp4q tiled)\n"
                  "%-22s %9s %10s %9s %8s\n",
                  r.threads, r.sgemm_gflops, r.tiled_gflops, "phase", "seconds", "GFLOP", "GFLOP/s",
                  "/SGEMM");
    s += b;
    for (const auto& row : r.rows) {
      if (row.flop > 0)
        std::snprintf(b, sizeof b, "%-22s %9.2f %10.1f %9.1f %8.2f\n", row.phase.c_str(),
                      row.seconds, row.flop / 1e9, row.gflops, row.ratio_to_sgemm);
      else
        std::snprintf(b, sizeof b, "%-22s %9.2f %10s %9s %8s\n", row.phase.c_str(), row.seconds,
                      "-", "-", "-");
      s += b;
    }
    std::snprintf(b, sizeof b,
                  "projected: %s, %d layers, %lld x %lld calibration tokens: %.0f s (%.2f h) on %d "
                  "threads\n",
                  sh.name.c_str(), sh.n_layers, static_cast<long long>(opt.project_samples),
                  static_cast<long long>(opt.project_seqlen), r.projected_seconds,
                  r.projected_seconds / 3600.0, r.threads);
    s += b;
    const BenchRow* tot = find_row(r, "total");
    const BenchRow* tot0 = find_row(runs.front(), "total");
    if (&r != &runs.front() && tot && tot0 && tot->seconds > 0) {
      const double sp = tot0->seconds / tot->seconds;
      const double eff = sp * runs.front().threads / r.threads;
      const double sg = r.sgemm_gflops / runs.front().sgemm_gflops;
      std::snprintf(b, sizeof b,
                    "speed-up over %d thread(s): %.2fx (parallel efficiency %.2f); native SGEMM's own "
                    "speed-up %.2fx\n",
                    runs.front().threads, sp, eff, sg);
      s += b;
    }
  }
  return s;
}

std::string bench_json(const BenchOptions& opt, const std::vector<BenchRun>& runs) {
  nlohmann::json a = nlohmann::json::array();
  const BenchRow* tot0 = runs.empty() ? nullptr : find_row(runs.front(), "total");
  for (const auto& r : runs)
    for (const auto& row : r.rows) {
      nlohmann::json o = {{"phase", row.phase},       {"threads", row.threads},
                          {"seconds", row.seconds},   {"flop", row.flop},
                          {"gflops", row.gflops},     {"sgemm_gflops", row.sgemm_gflops},
                          {"ratio_to_sgemm", row.ratio_to_sgemm},
                          {"shape", opt.shape.name},  {"samples", opt.samples},
                          {"seqlen", opt.seqlen},     {"format", format::spec(opt.format).name}};
      if (row.phase == "total") {
        o["projected_model_seconds"] = r.projected_seconds;
        o["tiled_sgemm_gflops"] = r.tiled_gflops;
        o["blas"] = linalg::blas_config();
        if (tot0 && row.seconds > 0) {
          const double sp = tot0->seconds / row.seconds;
          o["speedup"] = sp;
          o["parallel_efficiency"] = sp * runs.front().threads / r.threads;
        }
      }
      a.push_back(o);
    }
  return a.dump(2) + "\n";
}

}  // namespace fp4q::pipeline
