// Throughput of the format module's whole-matrix kernels and the block Hadamard on a
// 4096 x 4096 float32 matrix (N(0, 0.02) with 1% outliers). Build with -DFP4Q_BUILD_BENCH=ON;
// run e.g. `./bench_format --benchmark_filter=nvfp4`. Items/s counts matrix elements.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "fp4q/format/format.h"
#include "fp4q/transform/hadamard.h"

using namespace fp4q::format;

namespace {

constexpr int64_t kRows = 4096, kCols = 4096;

const std::vector<float>& weights() {
  static const std::vector<float> w = [] {
    std::mt19937 rng(7);
    std::normal_distribution<float> n(0.0f, 0.02f);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    std::vector<float> v(static_cast<size_t>(kRows * kCols));
    for (auto& x : v) x = n(rng) * (u(rng) < 0.01f ? 15.0f : 1.0f);
    return v;
  }();
  return w;
}

// arg0: format id, arg1: scale method, arg2: 1 = fixed NVFP4 global scale (no global search)
void BM_ChooseScales(benchmark::State& st) {
  const auto id = static_cast<FormatId>(st.range(0));
  const auto m = static_cast<ScaleMethod>(st.range(1));
  const auto& w = weights();
  const float gs = st.range(2) ? nvfp4_global_scale(w.data(), kRows * kCols) : 0.0f;
  for (auto _ : st) {
    auto s = choose_scales(id, w.data(), kRows, kCols, m, gs);
    benchmark::DoNotOptimize(s.codes.data());
  }
  st.SetItemsProcessed(st.iterations() * kRows * kCols);
  st.SetLabel(std::string(spec(id).name) + " " + scale_method_name(m) +
              (st.range(2) ? " fixed-gs" : ""));
}

void BM_QuantizeRtn(benchmark::State& st) {
  const auto id = static_cast<FormatId>(st.range(0));
  const auto& w = weights();
  auto s = choose_scales(id, w.data(), kRows, kCols, ScaleMethod::kAbsmax);
  for (auto _ : st) {
    auto q = quantize_rtn(w.data(), kRows, kCols, s);
    benchmark::DoNotOptimize(q.codes.data());
  }
  st.SetItemsProcessed(st.iterations() * kRows * kCols);
  st.SetLabel(spec(id).name);
}

void BM_Hadamard(benchmark::State& st) {
  const int b = static_cast<int>(st.range(0));
  std::vector<float> x = weights();
  for (auto _ : st) {
    fp4q::transform::hadamard_rows(x.data(), kRows, kCols, b);
    benchmark::ClobberMemory();
  }
  st.SetItemsProcessed(st.iterations() * kRows * kCols);
}

}  // namespace

BENCHMARK(BM_ChooseScales)
    ->Args({1, 1, 0})->Args({2, 1, 0})->Args({3, 1, 0})
    ->Args({1, 2, 1})->Args({1, 2, 0})->Args({2, 2, 0})->Args({3, 2, 0})
    ->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_QuantizeRtn)->Arg(1)->Arg(2)->Arg(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Hadamard)->Arg(16)->Arg(32)->Arg(128)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_MAIN();
