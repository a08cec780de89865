// fp4q/core/parallel_dynamic.h — dynamically scheduled exception-safe OpenMP loop.
//
// parallel_for_dynamic(n, f): f(i) for i in [0, n), handed out one index at a time to whichever
// thread is free. Use it for loops whose iterations are independent and individually
// deterministic (each f(i) computes the same bits whichever thread runs it): the result then
// does not depend on the thread count or on scheduling, and a thread that the OS deschedules
// (shared machines) does not hold the others up the way a static split does.
// Runs serially when called inside an active parallel region.
#pragma once

#include "fp4q/core/parallel.h"

namespace fp4q {

template <class F>
void parallel_for_dynamic(long n, F&& f) {
  if (n <= 0) return;
  if (n == 1 || omp_in_parallel()) {
    for (long i = 0; i < n; ++i) f(i);
    return;
  }
  ParallelErrors errs;
#pragma omp parallel for schedule(dynamic, 1)
  for (long i = 0; i < n; ++i) errs.run([&] { f(i); });
  errs.rethrow();
}

}  // namespace fp4q
