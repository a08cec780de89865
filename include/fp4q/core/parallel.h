// fp4q/core/parallel.h — thread count and exception-safe OpenMP loops.
//
// set_num_threads(n) is called once (from the CLI's --threads) and sets both OpenMP and
// OpenBLAS. Results of every fp4q computation are independent of the thread count: parallel
// loops split work over independent rows/columns and never reduce floats across threads in a
// thread-count-dependent order.
#pragma once

#include <exception>
#include <mutex>

#include <omp.h>

namespace fp4q {

// Sets OpenMP and BLAS threads. n <= 0 means "all cores".
void set_num_threads(int n);
int num_threads();

// Captures the first exception thrown inside an OpenMP region; rethrow() after the region.
class ParallelErrors {
 public:
  template <class F>
  void run(F&& f) noexcept {
    try {
      f();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!first_) first_ = std::current_exception();
    }
  }
  void rethrow() {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  std::mutex mu_;
  std::exception_ptr first_;
};

// parallel_for(n, f): f(i) for i in [0, n) with static scheduling; exceptions propagate.
template <class F>
void parallel_for(long n, F&& f) {
  ParallelErrors errs;
#pragma omp parallel for schedule(static)
  for (long i = 0; i < n; ++i) errs.run([&] { f(i); });
  errs.rethrow();
}

}  // namespace fp4q
