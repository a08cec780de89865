// src/linalg/buffer.cpp — huge-page-backed allocations (see buffer.h).
#include "fp4q/linalg/buffer.h"

#include <cstdint>
#include <cstdlib>
#include <new>

#include <sys/mman.h>

namespace fp4q::linalg {

namespace {
constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kHugeThreshold = size_t{1} << 20;
}  // namespace

void* huge_alloc(size_t bytes) {
  void* p = nullptr;
  if (bytes >= kHugeThreshold) {
    const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    p = std::aligned_alloc(kHugePage, rounded);
    if (p) madvise(p, rounded, MADV_HUGEPAGE);  // advisory; failure just means 4 KiB pages
  } else {
    p = std::malloc(bytes ? bytes : 1);
  }
  if (!p) throw std::bad_alloc();
  return p;
}

void huge_free(void* p) noexcept { std::free(p); }

void advise_huge(void* p, size_t bytes) noexcept {
  if (!p || bytes < 2 * kHugePage) return;
  const uintptr_t b = reinterpret_cast<uintptr_t>(p), e = b + bytes;
  const uintptr_t ab = (b + kHugePage - 1) / kHugePage * kHugePage, ae = e / kHugePage * kHugePage;
  if (ae > ab) madvise(reinterpret_cast<void*>(ab), ae - ab, MADV_HUGEPAGE);
}

}  // namespace fp4q::linalg
