// bf16 calibration GEMM (linalg::gemm_bf16_nt, AVX512_BF16) versus float32 SGEMM, measured in ONE
// run, interleaved so that a busy shared machine slows both sides alike.
//
// Build with -DFP4Q_BUILD_BENCH=ON; run `./bench_bf16_gemm` (all cores) or with `--threads=N`.
// Every benchmark is one product C [m x n] = X [m x k] · Wᵀ (W [n x k], the nn.Linear layout of
// the calibration forward): m = tokens of one batched layer_forward (model::kBatchTokens = 4096),
// n x k = a Linear's shape. Each iteration runs, in this order and each timed on its own:
//   sgemm_native — OpenBLAS's own multithreaded cblas_sgemm (not thread-count reproducible):
//                  the machine's SGEMM speed;
//   sgemm_tiled  — linalg::sgemm, fp4q's reproducible fixed-tile SGEMM (what the float32
//                  calibration forward runs);
//   bf16         — linalg::gemm_bf16_nt, packing (fp32 -> bf16 RNE) included.
// Counters (GFLOP/s, FLOPs = 2·m·n·k, the sum of each side's seconds over all iterations):
//   bf16, sgemm_native, sgemm_tiled, and the ratios vs_native = bf16 / sgemm_native,
//   vs_tiled = bf16 / sgemm_tiled. The benchmark's own time is the bf16 kernel's (manual time).
// Skipped (error message) on a CPU without AVX512_BF16.
#include <benchmark/benchmark.h>

#include <chrono>
#include <random>
#include <vector>

#include "fp4q/core/parallel.h"
#include "fp4q/linalg/bf16_gemm.h"
#include "fp4q/linalg/blas.h"

using namespace fp4q;

namespace {

std::vector<float> random_vec(int64_t n, uint64_t seed, float sd) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, sd);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = nd(rng);
  return v;
}

template <class F>
double seconds(F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void BM_Bf16VsSgemm(benchmark::State& st) {
  if (!linalg::cpu_has_avx512_bf16()) {
    st.SkipWithError("CPU lacks AVX512_BF16");
    return;
  }
  const int64_t m = st.range(0), n = st.range(1), k = st.range(2);
  const auto x = random_vec(m * k, 1, 1.0f), w = random_vec(n * k, 2, 0.02f);
  std::vector<float> c(static_cast<size_t>(m * n));
  // Warm-up (page faults, OpenBLAS buffers, packing buffers).
  linalg::gemm_bf16_nt(m, n, k, x.data(), k, w.data(), k, c.data(), n);
  linalg::sgemm_native(false, true, m, n, k, 1.0f, x.data(), k, w.data(), k, 0.0f, c.data(), n);
  double t_native = 0, t_tiled = 0, t_bf16 = 0;
  for (auto _ : st) {
    t_native += seconds([&] {
      linalg::sgemm_native(false, true, m, n, k, 1.0f, x.data(), k, w.data(), k, 0.0f, c.data(), n);
    });
    t_tiled += seconds([&] {
      linalg::sgemm(false, true, m, n, k, 1.0f, x.data(), k, w.data(), k, 0.0f, c.data(), n);
    });
    const double tb = seconds([&] { linalg::gemm_bf16_nt(m, n, k, x.data(), k, w.data(), k, c.data(), n); });
    t_bf16 += tb;
    st.SetIterationTime(tb);
    benchmark::DoNotOptimize(c.data());
  }
  const double gflop = 2.0 * m * n * k * st.iterations() / 1e9;
  st.counters["bf16"] = gflop / t_bf16;
  st.counters["sgemm_native"] = gflop / t_native;
  st.counters["sgemm_tiled"] = gflop / t_tiled;
  st.counters["vs_native"] = t_native / t_bf16;
  st.counters["vs_tiled"] = t_tiled / t_bf16;
}

// m = 4096 tokens; Linear shapes: square 4096 (Llama-2-7B q/o), 4096 -> 14336 (Llama-3-8B
// gate/up), 14336 -> 4096 (down), 4096 -> 1024 (GQA k/v), and a small 512-token batch.
BENCHMARK(BM_Bf16VsSgemm)
    ->Args({4096, 4096, 4096})
    ->Args({4096, 14336, 4096})
    ->Args({4096, 4096, 14336})
    ->Args({4096, 1024, 4096})
    ->Args({512, 4096, 4096})
    ->Iterations(3)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  int threads = 0;
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--threads=", 0) == 0) threads = std::stoi(a.substr(10));
    else rest.push_back(argv[i]);
  }
  set_num_threads(threads);
  int rc = static_cast<int>(rest.size());
  benchmark::Initialize(&rc, rest.data());
  benchmark::AddCustomContext("blas", linalg::blas_config());
  benchmark::AddCustomContext("threads", std::to_string(num_threads()));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
