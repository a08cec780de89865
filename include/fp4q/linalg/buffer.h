// fp4q/linalg/buffer.h — uninitialised scratch buffers backed by transparent huge pages.
//
// Why: on the VMs fp4q runs on, the first touch of a fresh 4 KiB page costs ~10 µs (measured:
// 0.69 s to touch 256 MiB), so every large std::vector the solver allocated cost more than the
// arithmetic done in it. Buffers of >= 1 MiB are allocated 2 MiB-aligned and marked
// MADV_HUGEPAGE (THP mode "madvise"), which makes first touch ~25x cheaper (0.03 s / 256 MiB).
// Smaller buffers use plain malloc. Contents are uninitialised unless a fill value is given.
// Move-only; T must be trivially copyable (float, double, uint8_t, ...).
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace fp4q::linalg {

// Raw allocation as described above; never returns nullptr (throws std::bad_alloc).
void* huge_alloc(size_t bytes);
void huge_free(void* p) noexcept;
// Marks the 2 MiB-aligned interior of [p, p + bytes) MADV_HUGEPAGE (no-op below 4 MiB). Call it
// on memory that is allocated but not yet touched, e.g. std::vector::reserve()d storage, before
// the first write.
void advise_huge(void* p, size_t bytes) noexcept;

template <class T>
class HugeBuffer {
  static_assert(std::is_trivially_copyable_v<T>, "HugeBuffer holds plain data only");

 public:
  HugeBuffer() = default;
  explicit HugeBuffer(size_t n) : n_(n), p_(n ? static_cast<T*>(huge_alloc(n * sizeof(T))) : nullptr) {}
  HugeBuffer(size_t n, T value) : HugeBuffer(n) {
    for (size_t i = 0; i < n; ++i) p_[i] = value;
  }
  ~HugeBuffer() { huge_free(p_); }
  HugeBuffer(HugeBuffer&& o) noexcept : n_(std::exchange(o.n_, 0)), p_(std::exchange(o.p_, nullptr)) {}
  HugeBuffer& operator=(HugeBuffer&& o) noexcept {
    if (this != &o) {
      huge_free(p_);
      n_ = std::exchange(o.n_, 0);
      p_ = std::exchange(o.p_, nullptr);
    }
    return *this;
  }
  HugeBuffer(const HugeBuffer&) = delete;
  HugeBuffer& operator=(const HugeBuffer&) = delete;

  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }
  T& operator[](size_t i) { return p_[i]; }
  const T& operator[](size_t i) const { return p_[i]; }
  T* begin() { return p_; }
  T* end() { return p_ + n_; }
  const T* begin() const { return p_; }
  const T* end() const { return p_ + n_; }

 private:
  size_t n_ = 0;
  T* p_ = nullptr;
};

}  // namespace fp4q::linalg
