// src/model/par.h — private helpers of the model module for deterministic parallel loops and
// BLAS calls.
//
// OpenBLAS's multi-threaded sgemm is NOT thread-count independent (measured: OpenBLAS 0.3.21
// Haswell kernels give different low bits for 1 vs 2 threads, because the M/N split changes
// which elements go through edge micro-kernels). The model module therefore never lets BLAS
// thread: it splits every product into fixed blocks (independent of the thread count), computes
// each block with a single-threaded sgemm, and runs the blocks over OpenMP threads.
#pragma once

#include <cblas.h>

#include "fp4q/core/parallel.h"

namespace fp4q::model::detail {

// Below this many (rough) flops a loop runs on the calling thread: parallel regions cost
// microseconds, and much more on an oversubscribed machine.
constexpr double kMinParallelWork = 4e6;

// f(i) for i in [0, n); parallel (static schedule) when n * work_per_item >= kMinParallelWork.
// Each i must be computed independently, so the result never depends on the thread count.
template <class F>
void par_for(long n, double work_per_item, F&& f) {
  if (n <= 0) return;
  const bool par = static_cast<double>(n) * work_per_item >= kMinParallelWork && n > 1;
  ParallelErrors errs;
#pragma omp parallel for schedule(static) if (par)
  for (long i = 0; i < n; ++i) errs.run([&] { f(i); });
  errs.rethrow();
}

// Same with dynamic scheduling (uneven items, e.g. causal attention blocks).
template <class F>
void par_for_dynamic(long n, double total_work, F&& f) {
  if (n <= 0) return;
  const bool par = total_work >= kMinParallelWork && n > 1;
  ParallelErrors errs;
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (long i = 0; i < n; ++i) errs.run([&] { f(i); });
  errs.rethrow();
}

// RAII: OpenBLAS runs single-threaded (on the calling thread) while alive; restores the previous
// thread count. Use around OpenMP regions that call cblas_* from several threads.
class BlasSingleThread {
 public:
  BlasSingleThread() : saved_(openblas_get_num_threads()) {
    if (saved_ != 1) openblas_set_num_threads(1);
  }
  ~BlasSingleThread() {
    if (saved_ != 1) openblas_set_num_threads(saved_);
  }
  BlasSingleThread(const BlasSingleThread&) = delete;
  BlasSingleThread& operator=(const BlasSingleThread&) = delete;

 private:
  int saved_;
};

}  // namespace fp4q::model::detail
