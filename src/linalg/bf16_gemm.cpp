// src/linalg/bf16_gemm.cpp — AVX512_BF16 GEMM C = bf16(A)·bf16(B)ᵀ, float32 accumulation
// (numerics and threading: include/fp4q/linalg/bf16_gemm.h).
//
// Structure (Goto-style, all sizes fixed constants, none depends on the thread count):
//  1. B [n x k] is packed once per call into panels of kNR = 64 rows (output columns): panel jp
//     holds, for each k pair p, the 64 32-bit words (bf16(B[j][2p]) | bf16(B[j][2p+1]) << 16),
//     j = 64·jp .. 64·jp+63 (rows past n are zero). A [m x k] is packed the same way into panels
//     of kMR = 6 rows. Both in parallel over panels; a panel is built 16 rows x 32 floats at a
//     time (round to bf16, pair, 16x16 word transpose in registers). Extra memory: (m + n)·k·2
//     bytes (rounded up to whole panels and an even k), huge-page backed, freed on return.
//  2. The output is cut into kTileM x kTileN tiles; each tile (one thread) walks k in blocks of
//     kKC elements; for each block and each 6-row A panel (in L1, 6 KiB) it runs the 6x64
//     micro-kernel over the tile's B panels (the tile's B block, 256 KiB, stays in L2).
//     The micro-kernel keeps 24 zmm accumulators (6 rows x 4 vectors of 16 columns) and issues
//     one vdpbf16ps per accumulator and k pair: acc[i][j] += A[i][2p+1]·B[j][2p+1] +
//     A[i][2p]·B[j][2p] (broadcast A pair word, B panel row of 16 pair words per vector).
//     The first k block starts from +0, later ones reload the float32 partial sums from C.
//  Every output element therefore sees the pairs p = 0, 1, ... in order, one fixed sequence of
//  fused multiply-adds, whatever the tile, block or thread: see the header.
#include "fp4q/linalg/bf16_gemm.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

// GCC 12's AVX-512 intrinsics start several shuffles from _mm512_undefined_*(), which
// -Wmaybe-uninitialized reports at every use after inlining (a known false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "fp4q/core/error.h"
#include "fp4q/core/half.h"
#include "fp4q/core/parallel.h"
#include "fp4q/core/parallel_dynamic.h"
#include "fp4q/linalg/buffer.h"

namespace fp4q::linalg {

namespace {

constexpr int kMR = 6;            // rows of the micro-kernel (A panel width)
constexpr int kNR = 64;           // columns of the micro-kernel (B panel width, 4 x 16 lanes)
constexpr int64_t kKC = 512;      // k block (elements; 256 pairs)
constexpr int64_t kTileM = 192;   // output tile rows (32 A panels)
constexpr int64_t kTileN = 256;   // output tile columns (4 B panels)
// Below this many flops the tiles and panels run serially in the calling thread (an OpenMP
// region costs more than it saves). Same calls either way, so the bits do not change.
constexpr double kParallelFlops = 32e6;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <class F>
void run_parallel(int64_t count, bool parallel, F&& f) {
  if (!parallel || count <= 1 || omp_in_parallel()) {
    for (int64_t t = 0; t < count; ++t) f(t);
  } else {
    parallel_for_dynamic(static_cast<long>(count), [&](long t) { f(t); });
  }
}

#define FP4Q_BF16_TARGET __attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl")))

// Each float32 lane rounded to bf16 (RNE) in its high 16 bits, as fp4q::float_to_bf16: NaN keeps
// its sign and payload top with the quiet bit set.
FP4Q_BF16_TARGET inline __m512i round_lanes(__m512i u) {
  const __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                                     _mm512_and_si512(_mm512_maskz_srli_epi32(0xffff, u, 16), _mm512_set1_epi32(1)));
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  return _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x00400000));
}

// 16 pair words of one row: floats src[0 .. min(32, rem)) rounded to bf16 and paired
// (word q = bf16(src[2q]) | bf16(src[2q+1]) << 16; floats past rem read as 0).
FP4Q_BF16_TARGET inline __m512i convert32(const float* src, int64_t rem) {
  // 16-bit slot s of the result takes the high half of float s of (lo, hi): index 2s + 1.
  const __m512i idx = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33,
                                       31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  __m512 lo, hi;
  if (rem >= 32) {
    lo = _mm512_loadu_ps(src);
    hi = _mm512_loadu_ps(src + 16);
  } else {
    const __mmask16 m0 = static_cast<__mmask16>(rem >= 16 ? 0xffff : (1u << rem) - 1);
    const __mmask16 m1 = static_cast<__mmask16>(rem <= 16 ? 0 : (1u << (rem - 16)) - 1);
    lo = _mm512_maskz_loadu_ps(m0, src);
    hi = _mm512_maskz_loadu_ps(m1, src + 16);
  }
  return _mm512_permutex2var_epi16(round_lanes(_mm512_castps_si512(lo)), idx,
                                   round_lanes(_mm512_castps_si512(hi)));
}

// In-place transpose of 16 x 16 32-bit words (v[i] = row i).
FP4Q_BF16_TARGET inline void transpose16(__m512i v[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(v[i], v[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(v[i], v[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    v[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    v[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    v[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    v[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // v[4b + c] now holds, in 128-bit lane L, column 4L + c of rows 4b .. 4b+3.
  for (int c = 0; c < 4; ++c) {
    const __m512i a = _mm512_shuffle_i32x4(v[c], v[4 + c], 0x88);      // lanes 0,2 of each
    const __m512i b = _mm512_shuffle_i32x4(v[c], v[4 + c], 0xdd);      // lanes 1,3
    const __m512i e = _mm512_shuffle_i32x4(v[8 + c], v[12 + c], 0x88);
    const __m512i f = _mm512_shuffle_i32x4(v[8 + c], v[12 + c], 0xdd);
    t[c] = _mm512_shuffle_i32x4(a, e, 0x88);       // column c      (lane 0 of rows 0..15)
    t[8 + c] = _mm512_shuffle_i32x4(a, e, 0xdd);   // column 8 + c  (lane 2)
    t[4 + c] = _mm512_shuffle_i32x4(b, f, 0x88);   // column 4 + c  (lane 1)
    t[12 + c] = _mm512_shuffle_i32x4(b, f, 0xdd);  // column 12 + c (lane 3)
  }
  for (int i = 0; i < 16; ++i) v[i] = t[i];
}

// Packs rows [0, rows) of src (ld floats apart, k columns) into one panel of R rows:
// dst[p * R + r] = pair word p of row r (rows >= `rows` are zero), for p < ceil(k/2).
// Rounding as fp4q::float_to_bf16. Blocks of 16 rows x 16 pairs: convert, transpose, store.
FP4Q_BF16_TARGET void pack_panel(const float* src, int64_t ld, int64_t rows, int R, int64_t k,
                                 uint32_t* dst) {
  const int64_t np = (k + 1) / 2;
  for (int r0 = 0; r0 < R; r0 += 16) {
    const int rb = std::min(16, R - r0);  // rows of this block in the panel
    const __mmask16 store_mask = static_cast<__mmask16>(rb == 16 ? 0xffff : (1u << rb) - 1);
    for (int64_t p0 = 0; p0 < np; p0 += 16) {
      __m512i v[16];
      for (int i = 0; i < 16; ++i)
        v[i] = r0 + i < rows ? convert32(src + (r0 + i) * ld + 2 * p0, k - 2 * p0) : _mm512_setzero_si512();
      transpose16(v);
      const int64_t pn = std::min<int64_t>(16, np - p0);
      for (int64_t q = 0; q < pn; ++q)
        _mm512_mask_storeu_epi32(dst + (p0 + q) * R + r0, store_mask, v[q]);
    }
  }
}

// The 6 x 64 micro-kernel over np pairs: a = A panel words [np x 6], b = B panel words [np x 64],
// C rows [0, mr) x columns [0, nr) (ld ldc). first: start from +0, else from C's float32 values.
FP4Q_BF16_TARGET void kernel_6x64(int64_t np, const uint32_t* a, const uint32_t* b, float* c,
                                  int64_t ldc, int mr, int nr, bool first) {
  __mmask16 mask[4];
  for (int v = 0; v < 4; ++v) {
    const int w = std::clamp(nr - 16 * v, 0, 16);
    mask[v] = static_cast<__mmask16>(w == 16 ? 0xffff : (1u << w) - 1);
  }
  __m512 c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23;
  __m512 c30, c31, c32, c33, c40, c41, c42, c43, c50, c51, c52, c53;
#define FP4Q_LOAD_ROW(i)                                                              \
  if (!first && (i) < mr) {                                                           \
    c##i##0 = _mm512_maskz_loadu_ps(mask[0], c + (i) * ldc);                          \
    c##i##1 = _mm512_maskz_loadu_ps(mask[1], c + (i) * ldc + 16);                     \
    c##i##2 = _mm512_maskz_loadu_ps(mask[2], c + (i) * ldc + 32);                     \
    c##i##3 = _mm512_maskz_loadu_ps(mask[3], c + (i) * ldc + 48);                     \
  } else {                                                                            \
    c##i##0 = c##i##1 = c##i##2 = c##i##3 = _mm512_setzero_ps();                      \
  }
  FP4Q_LOAD_ROW(0) FP4Q_LOAD_ROW(1) FP4Q_LOAD_ROW(2) FP4Q_LOAD_ROW(3) FP4Q_LOAD_ROW(4)
  FP4Q_LOAD_ROW(5)
#undef FP4Q_LOAD_ROW
  for (int64_t p = 0; p < np; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + 16);
    const __m512bh b2 = (__m512bh)_mm512_loadu_si512(b + 32);
    const __m512bh b3 = (__m512bh)_mm512_loadu_si512(b + 48);
#define FP4Q_ROW(i)                                                                   \
  {                                                                                   \
    const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[i]));          \
    c##i##0 = _mm512_dpbf16_ps(c##i##0, av, b0);                                      \
    c##i##1 = _mm512_dpbf16_ps(c##i##1, av, b1);                                      \
    c##i##2 = _mm512_dpbf16_ps(c##i##2, av, b2);                                      \
    c##i##3 = _mm512_dpbf16_ps(c##i##3, av, b3);                                      \
  }
    FP4Q_ROW(0) FP4Q_ROW(1) FP4Q_ROW(2) FP4Q_ROW(3) FP4Q_ROW(4) FP4Q_ROW(5)
#undef FP4Q_ROW
    a += kMR;
    b += kNR;
  }
#define FP4Q_STORE_ROW(i)                                                             \
  if ((i) < mr) {                                                                     \
    _mm512_mask_storeu_ps(c + (i) * ldc, mask[0], c##i##0);                           \
    _mm512_mask_storeu_ps(c + (i) * ldc + 16, mask[1], c##i##1);                      \
    _mm512_mask_storeu_ps(c + (i) * ldc + 32, mask[2], c##i##2);                      \
    _mm512_mask_storeu_ps(c + (i) * ldc + 48, mask[3], c##i##3);                      \
  }
  FP4Q_STORE_ROW(0) FP4Q_STORE_ROW(1) FP4Q_STORE_ROW(2) FP4Q_STORE_ROW(3) FP4Q_STORE_ROW(4)
  FP4Q_STORE_ROW(5)
#undef FP4Q_STORE_ROW
}

#undef FP4Q_BF16_TARGET

bool detect_avx512_bf16() {
  __builtin_cpu_init();
  // libgcc's detection also checks that the OS saves the AVX-512 state (XCR0).
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

// bf16 value of x as float with vdpbf16ps's input rule: bf16 subnormals read as (signed) zero.
float bf16_daz(float x) {
  const float v = bf16_to_float(float_to_bf16(x));
  return std::fabs(v) < FLT_MIN ? std::copysign(0.0f, v) : v;
}

// Float32 result with FTZ: subnormal results become (signed) zero.
float ftz(float x) { return std::fabs(x) < FLT_MIN ? std::copysign(0.0f, x) : x; }

}  // namespace

bool cpu_has_avx512_bf16() {
  static const bool has = detect_avx512_bf16();
  return has;
}

void require_bf16_gemm(const std::string& where) {
  if (!cpu_has_avx512_bf16())
    throw Error(ErrorKind::kUsage,
                "bf16 compute needs the CPU feature AVX512_BF16 (with AVX512F/BW/VL), which this "
                "CPU does not report (no avx512_bf16 in /proc/cpuinfo flags)",
                where, "drop the option to compute in float32 (the reference path)");
}

void gemm_bf16_nt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                  int64_t ldb, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    return;
  }
  require_bf16_gemm("linalg::gemm_bf16_nt");
  const int64_t np = (k + 1) / 2;
  const int64_t pa = ceil_div(m, kMR), pb = ceil_div(n, kNR);
  const bool par = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) >= kParallelFlops;
  // Packed panels: every word is written by the packing (no fill); huge pages make the first
  // touch of these 10-100 MB buffers cheap (linalg/buffer.h).
  HugeBuffer<uint32_t> ap(static_cast<size_t>(pa * np * kMR)), bp(static_cast<size_t>(pb * np * kNR));
  run_parallel(pb, par, [&](int64_t j) {
    pack_panel(b + j * kNR * ldb, ldb, std::min<int64_t>(kNR, n - j * kNR), kNR, k, bp.data() + j * np * kNR);
  });
  run_parallel(pa, par, [&](int64_t i) {
    pack_panel(a + i * kMR * lda, lda, std::min<int64_t>(kMR, m - i * kMR), kMR, k, ap.data() + i * np * kMR);
  });
  const int64_t tm = ceil_div(m, kTileM), tn = ceil_div(n, kTileN);
  constexpr int64_t kPC = kKC / 2;  // pairs per k block
  run_parallel(tm * tn, par, [&](int64_t t) {
    const int64_t i0 = (t / tn) * kTileM, j0 = (t % tn) * kTileN;
    const int64_t i1 = std::min(m, i0 + kTileM), j1 = std::min(n, j0 + kTileN);
    for (int64_t p0 = 0; p0 < np; p0 += kPC) {
      const int64_t pn = std::min(kPC, np - p0);
      for (int64_t i = i0; i < i1; i += kMR) {
        const uint32_t* apan = ap.data() + (i / kMR) * np * kMR + p0 * kMR;
        const int mr = static_cast<int>(std::min<int64_t>(kMR, i1 - i));
        for (int64_t j = j0; j < j1; j += kNR) {
          const uint32_t* bpan = bp.data() + (j / kNR) * np * kNR + p0 * kNR;
          kernel_6x64(pn, apan, bpan, c + i * ldc + j, ldc, mr,
                      static_cast<int>(std::min<int64_t>(kNR, j1 - j)), p0 == 0);
        }
      }
    }
  });
}

void gemm_bf16_nt_emul(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                       const float* b, int64_t ldb, float* c, int64_t ldc) {
  const int64_t np = (k + 1) / 2;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      const float* ar = a + i * lda;
      const float* br = b + j * ldb;
      float acc = 0.0f;
      for (int64_t p = 0; p < np; ++p) {
        const int64_t e = 2 * p, o = 2 * p + 1;
        const float ao = o < k ? bf16_daz(ar[o]) : 0.0f, bo = o < k ? bf16_daz(br[o]) : 0.0f;
        acc = ftz(std::fma(ao, bo, acc));
        acc = ftz(std::fma(bf16_daz(ar[e]), bf16_daz(br[e]), acc));
      }
      c[i * ldc + j] = acc;
    }
}

void gemm_bf16_nt_ref(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                      const float* b, int64_t ldb, double* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0.0;
      for (int64_t p = 0; p < k; ++p)
        s += static_cast<double>(bf16_daz(a[i * lda + p])) * static_cast<double>(bf16_daz(b[j * ldb + p]));
      c[i * ldc + j] = s;
    }
}

}  // namespace fp4q::linalg
