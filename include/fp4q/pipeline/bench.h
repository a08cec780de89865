// fp4q/pipeline/bench.h — `fp4q bench`: the real quantization pipeline on one synthetic decoder
// layer of a real model's shape, timed phase by phase at several thread counts, each compared
// with the SGEMM speed measured on the same threads in the same run, and projected to a whole
// model at the default calibration.
//
// What runs: model::write_synthetic_model writes a 1-layer model of the shape (vocab 1024: the
// embedding and lm_head are not part of a layer's work) and random token ids into a temporary
// directory; then, per thread count, pipeline::run_quantize quantizes it exactly as `fp4q
// quantize` would (calibration forward, Hessians, scale search, GPTQ, export to compressed-
// tensors), plus the quantized forward that a multi-layer run does after each layer
// (QuantizeOptions::forward_last_layer). Phase seconds come from QuantizeResult::phases; FLOP
// from pipeline::estimate_run (estimate.h).
//
// Reference SGEMM: OpenBLAS's own multithreaded sgemm (the machine's best float32 GEMM; not
// thread-count reproducible, which is why fp4q itself goes through linalg's fixed tile grid) on
// a [4096 x hidden]·[hidden x hidden] product, best of 3, measured right before each run on
// the same number of threads. ratio_to_sgemm = phase GFLOP/s / that rate.
//
// Projection: per-token phases (forwards, Hessians, activation work) scale with the calibration
// FLOP of 128 x 2048 tokens over the benchmarked ones; per-weight phases (scales, solve, stats,
// export) do not; the sum is multiplied by the preset's number of layers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fp4q/core/compute_dtype.h"
#include "fp4q/model/synthetic.h"
#include "fp4q/pipeline/plan.h"

namespace fp4q::pipeline {

struct BenchOptions {
  model::ModelShape shape;          // n_layers = the full model's (for the projection)
  int64_t samples = 16, seqlen = 2048;
  std::vector<int> threads;         // empty: all cores
  format::FormatId format = format::FormatId::kNVFP4;
  Method method = Method::kMrGptq;
  exporter::Activations activations = exporter::Activations::kNone;
  std::string work_dir;             // where the synthetic model goes ("" = $TMPDIR or /tmp)
  int64_t project_samples = 128, project_seqlen = 2048;
  ComputeDtype calib_compute = ComputeDtype::kF32;  // --compute (QuantizeOptions::calib_compute)
};

struct BenchRow {
  std::string phase;
  int threads = 0;
  double seconds = 0, flop = 0;
  double gflops = 0, sgemm_gflops = 0, ratio_to_sgemm = 0;
};

struct BenchRun {
  int threads = 0;
  double sgemm_gflops = 0;        // native OpenBLAS sgemm on these threads
  double tiled_gflops = 0;        // linalg::sgemm (fixed tile grid) on these threads
  std::vector<BenchRow> rows;     // phases, then "total"
  double projected_seconds = 0;   // whole model at the default calibration
};

std::vector<BenchRun> run_bench(const BenchOptions& opt);

// Human-readable table (with OpenBLAS's configuration and the projection) / JSON array of row
// objects (keys phase, threads, seconds, flop, gflops, sgemm_gflops, ratio_to_sgemm; the "total"
// row also has projected_model_seconds, speedup and parallel_efficiency against the first run).
std::string bench_text(const BenchOptions& opt, const std::vector<BenchRun>& runs);
std::string bench_json(const BenchOptions& opt, const std::vector<BenchRun>& runs);

}  // namespace fp4q::pipeline
