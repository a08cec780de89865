// MR-GPTQ solve speed versus the machine's SGEMM speed, measured in ONE run.
//
// Build with -DFP4Q_BUILD_BENCH=ON; run e.g. `./bench_gptq --benchmark_repetitions=1`.
// All benchmarks use fp4q::set_num_threads(N) (OpenMP and OpenBLAS), N = all cores unless
// `--threads=N` is given. fp4q's own BLAS calls are tiled by fp4q (single-threaded OpenBLAS per
// tile, see linalg/blas.h); the reference SGEMM uses OpenBLAS's own threading.
//
//  * BM_SgemmNative/N  — OpenBLAS's own multithreaded sgemm, N³ (the machine's SGEMM FLOP/s),
//                        measured first and again last; BM_Factor and BM_GptqSolve also time a
//                        native 4096³ SGEMM right before and after each run (untimed) and divide
//                        by that local rate (vs_sgemm), and by the best rate of the run (vs_best).
//  * BM_SgemmTiled/N   — fp4q's thread-count-reproducible tiled linalg::sgemm, same product.
//  * BM_Factor/n       — linalg::inverse_upper_cholesky (U with H⁻¹ = UᵀU) of an n x n SPD matrix.
//  * BM_GptqSolve/rows/cols/stats — gptq::gptq_solve on a Llama-3-8B layer shape with random
//    data (W ~ N(0, 0.02), H = 2/N·XᵀX of 2048 Laplace tokens, NVFP4 absmax scales, act-order,
//    block 128): Hessian preparation + factorisation + sweep, excluding accumulation and scale
//    selection; stats = 1 also computes the error statistics (3 Gram matrices + RTN).
//
// FLOPs counted (the work actually performed, multiply-add = 2):
//   factorisation  n³/3 (Cholesky) + n³/3 (triangular inverse)               = 2n³/3
//   sweep          Σ_blocks 2·rows·nb·(n − c2)   (trailing GEMMs)
//                + Σ_blocks rows·nb·(nb − 1)     (in-block rank-1 updates)
//   statistics     3 · rows·n·(n + 1)            (ssyrk Gram matrices of W, ΔW_gptq, ΔW_rtn)
// O(n²) and O(rows·n) work (copies, permutation, quantization, traces) is not counted.
// Counters: GFLOPs = counted FLOPs / wall time; sgemm_local = native 4096³ SGEMM GFLOP/s measured
// (untimed) right before and right after each solve, averaged — the machine is shared, so the
// ratio must compare like with like; vs_sgemm = GFLOPs / sgemm_local; vs_best = GFLOPs / the best
// SGEMM rate seen in the whole run (conservative); t_factor / t_sweep / t_stats = phase seconds
// reported by the solver (t_factor includes dead-column fix, permutation and damping).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "fp4q/core/parallel.h"
#include "fp4q/format/format.h"
#include "fp4q/gptq/gptq.h"
#include "fp4q/linalg/blas.h"
#include "fp4q/linalg/cholesky.h"

using namespace fp4q;

namespace {

double g_sgemm_flops = 0.0;  // best native SGEMM FLOP/s seen so far

std::vector<float> random_vec(int64_t n, uint64_t seed, float sd) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, sd);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = nd(rng);
  return v;
}

// H = 2/N · XᵀX (full symmetric), X = 2048 Laplace tokens with a few outlier channels.
std::vector<float> random_hessian(int64_t n, uint64_t seed) {
  const int64_t tokens = 2048;
  std::mt19937_64 rng(seed);
  std::exponential_distribution<float> ex(1.0f);
  std::vector<float> x(static_cast<size_t>(tokens * n));
  for (auto& v : x) v = ex(rng) - ex(rng);
  for (int64_t c = 0; c < n; c += 997)
    for (int64_t t = 0; t < tokens; ++t) x[t * n + c] *= 20.0f;
  std::vector<float> h(static_cast<size_t>(n * n));
  linalg::syrk_xtx_lower(n, tokens, 2.0f / 128.0f, x.data(), n, 0.0f, h.data(), n);
  linalg::mirror_lower_to_upper(h.data(), n, n);
  return h;
}

// One native 4096³ SGEMM, timed: GFLOP/s now (used around each solve, outside its timing).
double sgemm_rate_now() {
  constexpr int64_t n = 4096;
  static const auto a = random_vec(n * n, 1, 1.0f), b = random_vec(n * n, 2, 1.0f);
  static std::vector<float> c(static_cast<size_t>(n * n));
  const auto t0 = std::chrono::steady_clock::now();
  linalg::sgemm_native(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double r = 2.0 * n * n * n / s;
  g_sgemm_flops = std::max(g_sgemm_flops, r);
  return r;
}

double sweep_flops(int64_t rows, int64_t n, int64_t bs) {
  double f = 0;
  for (int64_t c1 = 0; c1 < n; c1 += bs) {
    const int64_t c2 = std::min(n, c1 + bs), nb = c2 - c1;
    f += 2.0 * rows * nb * (n - c2) + double(rows) * nb * (nb - 1);
  }
  return f;
}

void set_rate(benchmark::State& st, double flops) {
  st.counters["GFLOPs"] = benchmark::Counter(flops / 1e9 * st.iterations(),
                                             benchmark::Counter::kIsRate);
  // vs_sgemm is computed from the per-iteration time in the report (see main): store FLOPs.
  st.counters["GFLOP"] = flops / 1e9;
}

void BM_SgemmNative(benchmark::State& st) {
  const int64_t n = st.range(0);
  const auto a = random_vec(n * n, 1, 1.0f), b = random_vec(n * n, 2, 1.0f);
  std::vector<float> c(static_cast<size_t>(n * n));
  for (auto _ : st) {
    const auto t0 = std::chrono::steady_clock::now();
    linalg::sgemm_native(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    g_sgemm_flops = std::max(g_sgemm_flops, 2.0 * n * n * n / s);
    benchmark::DoNotOptimize(c.data());
  }
  set_rate(st, 2.0 * n * n * n);
}

void BM_SgemmTiled(benchmark::State& st) {
  const int64_t n = st.range(0);
  const auto a = random_vec(n * n, 1, 1.0f), b = random_vec(n * n, 2, 1.0f);
  std::vector<float> c(static_cast<size_t>(n * n));
  for (auto _ : st) {
    linalg::sgemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    benchmark::DoNotOptimize(c.data());
  }
  set_rate(st, 2.0 * n * n * n);
  st.counters["vs_sgemm"] = 0;  // filled by the reporter
}

void BM_Factor(benchmark::State& st) {
  const int64_t n = st.range(0);
  auto h = random_hessian(n, 3);
  for (int64_t i = 0; i < n; ++i) h[i * n + i] += 0.01f * h[i * n + i];
  std::vector<float> u(h.size());
  double sg = 0;
  for (auto _ : st) {
    st.PauseTiming();
    u = h;
    sg += sgemm_rate_now();
    st.ResumeTiming();
    if (linalg::inverse_upper_cholesky(u.data(), n) != 0) st.SkipWithError("not SPD");
    st.PauseTiming();
    sg += sgemm_rate_now();
    st.ResumeTiming();
  }
  set_rate(st, 2.0 * n * n * n / 3.0);
  st.counters["sgemm_local"] = sg / (2.0 * st.iterations()) / 1e9;
  st.counters["vs_sgemm"] = 0;
}

void BM_GptqSolve(benchmark::State& st) {
  const int64_t rows = st.range(0), cols = st.range(1);
  const bool stats = st.range(2) != 0;
  const auto w = random_vec(rows * cols, 10 + rows + cols, 0.02f);
  static std::map<int64_t, std::vector<float>> hessians;  // shared by the shapes with equal cols
  if (!hessians.count(cols)) {
    hessians.clear();
    hessians[cols] = random_hessian(cols, 4);
  }
  const auto& h = hessians[cols];
  const auto scales = format::choose_scales(format::FormatId::kNVFP4, w.data(), rows, cols,
                                            format::ScaleMethod::kAbsmax);
  gptq::GptqOptions opt;
  opt.compute_stats = stats;
  {  // warm-up (untimed): a 256-row solve with the same Hessian touches the same n x n buffers,
     // thread pools and BLAS buffers, as every layer after the first one does in a real run
    const int64_t wr = std::min<int64_t>(rows, 256);
    const auto ws = format::choose_scales(format::FormatId::kNVFP4, w.data(), wr, cols,
                                          format::ScaleMethod::kAbsmax);
    benchmark::DoNotOptimize(gptq::gptq_solve(w.data(), wr, cols, h.data(), ws, opt, "warm-up"));
  }
  gptq::SolveResult r;
  double tf = 0, ts = 0, tt = 0, sg = 0;
  for (auto _ : st) {
    st.PauseTiming();  // the machine is shared: SGEMM right before and after, untimed
    sg += sgemm_rate_now();
    st.ResumeTiming();
    r = gptq::gptq_solve(w.data(), rows, cols, h.data(), scales, opt, "bench");
    st.PauseTiming();
    sg += sgemm_rate_now();
    st.ResumeTiming();
    tf += r.stats.seconds_factor;
    ts += r.stats.seconds_sweep;
    tt += r.stats.seconds_stats;
  }
  const double n = double(cols);
  double flops = 2.0 * n * n * n / 3.0 + sweep_flops(rows, cols, opt.block_size);
  if (stats) flops += 3.0 * rows * n * (n + 1);
  set_rate(st, flops);
  const double it = double(st.iterations());
  st.counters["t_factor"] = tf / it;
  st.counters["t_sweep"] = ts / it;
  st.counters["t_stats"] = tt / it;
  st.counters["sgemm_local"] = sg / (2.0 * it) / 1e9;  // GFLOP/s around the solve
  st.counters["vs_sgemm"] = 0;
  if (stats) {
    st.counters["h_err"] = r.stats.hessian_err;
    st.counters["rtn_h_err"] = r.stats.rtn_hessian_err;
  }
}

// Console reporter that fills vs_sgemm = achieved GFLOP/s / sgemm_local (when measured, else the
// best native SGEMM rate so far) and vs_best = achieved GFLOP/s / best native SGEMM rate so far.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    std::vector<Run> out = runs;
    for (auto& r : out) {
      auto it = r.counters.find("vs_sgemm");
      if (it == r.counters.end() || g_sgemm_flops <= 0) continue;
      const double secs = r.GetAdjustedRealTime() / benchmark::GetTimeUnitMultiplier(r.time_unit);
      const double rate = r.counters["GFLOP"].value * 1e9 / secs;
      auto local = r.counters.find("sgemm_local");
      const double ref = local != r.counters.end() ? local->second.value * 1e9 : g_sgemm_flops;
      it->second = benchmark::Counter(rate / ref);
      if (local != r.counters.end()) r.counters["vs_best"] = benchmark::Counter(rate / g_sgemm_flops);
    }
    ConsoleReporter::ReportRuns(out);
  }
};

}  // namespace

BENCHMARK(BM_SgemmNative)->Arg(4096)->Iterations(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_SgemmTiled)->Arg(4096)->Iterations(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Factor)->Arg(4096)->Arg(14336)->Iterations(1)->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_GptqSolve)
    ->Args({4096, 4096, 0})
    ->Args({1024, 4096, 0})
    ->Args({14336, 4096, 0})
    ->Args({4096, 14336, 0})
    ->Args({4096, 4096, 1})
    ->Args({4096, 14336, 1})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
// The SGEMM reference once more at the end (the machine is shared; the ratio uses the best).
BENCHMARK(BM_SgemmNative)->Name("BM_SgemmNative_again")->Arg(4096)->Iterations(3)
    ->Unit(benchmark::kMillisecond)->UseRealTime();

int main(int argc, char** argv) {
  // --threads=N (ours, removed before Google Benchmark parses the rest): default all cores.
  int threads = 0;
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      threads = std::atoi(argv[i] + 10);
    } else {
      argv[out++] = argv[i];
    }
  }
  argc = out;
  fp4q::set_num_threads(threads);
  std::fprintf(stderr, "BLAS: %s, threads: %d\n", linalg::blas_config(), fp4q::num_threads());
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  RatioReporter rep;
  benchmark::RunSpecifiedBenchmarks(&rep);
  std::fprintf(stderr, "best native SGEMM: %.1f GFLOP/s\n", g_sgemm_flops / 1e9);
  benchmark::Shutdown();
  return 0;
}
