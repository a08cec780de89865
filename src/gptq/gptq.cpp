// src/gptq/gptq.cpp — the MR-GPTQ solver (see gptq.h for the algorithm and its rules).
#include "fp4q/gptq/gptq.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <string>

#include <spdlog/spdlog.h>

#include "fp4q/core/error.h"
#include "fp4q/core/parallel.h"
#include "fp4q/core/parallel_dynamic.h"
#include "fp4q/linalg/blas.h"
#include "fp4q/linalg/buffer.h"
#include "fp4q/linalg/cholesky.h"
#include "fp4q/transform/hadamard.h"

namespace fp4q::gptq {

namespace {

std::string dims(int64_t r, int64_t c) {
  return "[" + std::to_string(r) + " x " + std::to_string(c) + "]";
}

// First non-finite entry of x [rows x cols] (only columns [0, row+1) of each row when
// lower_only), as (row, col), or (-1, -1). Independent of the thread count.
std::pair<int64_t, int64_t> find_non_finite(const float* x, int64_t rows, int64_t cols,
                                            bool lower_only) {
  std::vector<int64_t> bad(static_cast<size_t>(rows), -1);
  parallel_for_dynamic(rows, [&](long r) {
    const float* row = x + r * cols;
    const int64_t end = lower_only ? std::min<int64_t>(cols, r + 1) : cols;
    for (int64_t c = 0; c < end; ++c)
      if (!std::isfinite(row[c])) {
        bad[r] = c;
        return;
      }
  });
  for (int64_t r = 0; r < rows; ++r)
    if (bad[r] >= 0) return {r, bad[r]};
  return {-1, -1};
}

// Shapes, scales and finiteness of the solver inputs (h may be nullptr).
void validate(const float* w, int64_t rows, int64_t cols, const float* h,
              const format::GroupScales& scales, const std::string& where) {
  const auto& sp = format::spec(scales.format);
  if (rows < 0 || cols < 0 || cols % sp.group_size != 0)
    throw Error(ErrorKind::kInput,
                "weight " + dims(rows, cols) + ": the column count must be a multiple of the " +
                    sp.name + " group size " + std::to_string(sp.group_size),
                where, "this tensor cannot be quantized with this format; exclude it");
  const int64_t groups = cols / sp.group_size;
  if (scales.rows != rows || scales.groups != groups ||
      static_cast<int64_t>(scales.values.size()) != rows * groups)
    throw Error(ErrorKind::kInternal,
                "scales are " + dims(scales.rows, scales.groups) + " (" +
                    std::to_string(scales.values.size()) + " values), the weight " +
                    dims(rows, cols) + " needs " + dims(rows, groups),
                where);
  if (auto b = find_non_finite(w, rows, cols, false); b.first >= 0)
    throw Error(ErrorKind::kNumeric,
                "weight has a non-finite value at row " + std::to_string(b.first) + ", column " +
                    std::to_string(b.second),
                where, "the checkpoint contains NaN/Inf");
  if (h) {
    if (auto b = find_non_finite(h, cols, cols, true); b.first >= 0)
      throw Error(ErrorKind::kNumeric,
                  "Hessian has a non-finite value at (" + std::to_string(b.first) + ", " +
                      std::to_string(b.second) + ")",
                  where, "the calibration data produced NaN/Inf activations");
  }
}

// Full symmetric copy of the lower triangle of h [n x n].
linalg::HugeBuffer<float> symmetric_copy(const float* h, int64_t n) {
  linalg::HugeBuffer<float> s(static_cast<size_t>(n * n));
  parallel_for_dynamic(n, [&](long i) { std::copy(h + i * n, h + i * n + i + 1, s.data() + i * n); });
  linalg::mirror_lower_to_upper(s.data(), n, n);
  return s;
}

// tr(A·H·Aᵀ) = Σ_ij H_ij (AᵀA)_ij for a [rows x cols], h lower triangle read; g is scratch
// [cols x cols]. Float32 ssyrk Gram, float64 combination (per-row partials summed in order).
// When max|a| is outside [2^-40, 2^40] (e.g. bf16-subnormal weights ~1e-39, whose float32
// products underflow to 0, or values whose squares overflow), the Gram is formed from a copy
// scaled by an exact power of two 2^e and the trace rescaled by 2^-2e in float64.
double hessian_trace(const float* a, int64_t rows, int64_t cols, const float* h, float* g) {
  if (rows == 0 || cols == 0) return 0.0;
  std::vector<float> row_max(static_cast<size_t>(rows), 0.0f);
  parallel_for_dynamic(rows, [&](long r) {
    float m = 0.0f;
    for (int64_t c = 0; c < cols; ++c) m = std::max(m, std::fabs(a[r * cols + c]));
    row_max[r] = m;
  });
  const float amax = *std::max_element(row_max.begin(), row_max.end());
  if (!(amax > 0.0f)) return 0.0;  // A = 0 (or NaN, which validate() has excluded)
  int e = 0;
  linalg::HugeBuffer<float> scaled;
  if (amax < 0x1p-40f || amax > 0x1p40f) {
    e = -std::ilogb(amax);
    scaled = linalg::HugeBuffer<float>(static_cast<size_t>(rows * cols));
    parallel_for_dynamic(rows, [&](long r) {
      for (int64_t c = 0; c < cols; ++c)
        scaled.data()[r * cols + c] = std::ldexp(a[r * cols + c], e);
    });
    a = scaled.data();
  }
  linalg::syrk_xtx_lower(cols, rows, 1.0f, a, cols, 0.0f, g, cols);
  std::vector<double> part(static_cast<size_t>(cols));
  parallel_for_dynamic(cols, [&](long i) {
    const float* hi = h + i * cols;
    const float* gi = g + i * cols;
    double s = 0.0;
    for (int64_t j = 0; j < i; ++j) s += static_cast<double>(hi[j]) * gi[j];
    part[i] = 2.0 * s + static_cast<double>(hi[i]) * gi[i];
  });
  double t = 0.0;
  for (double v : part) t += v;
  return std::ldexp(t, -2 * e);
}

double squared_norm(const float* a, int64_t rows, int64_t cols) {
  std::vector<double> part(static_cast<size_t>(rows));
  parallel_for_dynamic(rows, [&](long r) {
    double s = 0.0;
    for (int64_t c = 0; c < cols; ++c) s += static_cast<double>(a[r * cols + c]) * a[r * cols + c];
    part[r] = s;
  });
  double t = 0.0;
  for (double v : part) t += v;
  return t;
}

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double ratio(double num, double den) {
  if (den > 0.0) return num / den;
  return num == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
}

// dst[j] = src[idx[j]] for j < n (a row permutation). AVX2 clone uses hardware gathers.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void gather_row(float* dst, const float* src, const int32_t* idx, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = src[idx[j]];
}

// The in-block column loop of one sub-block for a panel of pr rows, in a TRANSPOSED scratch
// layout so that the inner update runs over rows (contiguous, vectorised, no remainder work per
// column) and consecutive quantizations of a column are independent (no dependency chain).
// Per row r and sub-block column i = 0..ns-1 it computes exactly, in the same order, what the
// textbook row loop computes:
//   q = Q(w[r,i], s[r,i]); code = its code; e = (w[r,i] - q)/ud[i]; err[r,i] = e; w[r,i] = q;
//   w[r,k] -= e·ub[i,k] for k = i+1..ns-1.
// w: panel block at w (ld ldw); err (ld lde); code (ld ldc); scales s[r·groups + gidx[i]];
// ud[i] = U[j,j], ub = &U[j0, j0] (ld ldu) for the sub-block's first column j0.
// t, sc (ns·(pr+16) floats), cb (ns·(pr+16) bytes), e (pr floats) are caller scratch.
// Returns -1, or r·ns + i of the first (row, column) (column-major search order) whose input
// was not finite. Compiled for AVX2 and baseline x86-64 (ifunc dispatch); without FMA
// contraction (ISO C++ mode) both clones compute the same bits.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
int64_t sweep_subblock(format::FormatId fmt, float* w, int64_t ldw, float* err, int64_t lde,
                       uint8_t* code, int64_t ldc, const float* s, int64_t groups,
                       const int64_t* gidx, const float* ud, const float* ub, int64_t ldu,
                       int64_t pr, int64_t ns, float* t, float* sc, uint8_t* cb, float* e) {
  const int64_t ldt = pr + 16;  // padded: a 2^k stride would put all columns in a few cache sets
  for (int64_t r = 0; r < pr; ++r) {  // transpose in (values and their scales)
    const float* wr = w + r * ldw;
    const float* sr = s + r * groups;
    for (int64_t i = 0; i < ns; ++i) {
      t[i * ldt + r] = wr[i];
      sc[i * ldt + r] = sr[gidx[i]];
    }
  }
  for (int64_t i = 0; i < ns; ++i) {
    float* ti = t + i * ldt;
    const float* si = sc + i * ldt;
    uint8_t* ci = cb + i * ldt;
    for (int64_t r = 0; r < pr; ++r) {
      const float x = ti[r];
      if (!std::isfinite(x)) return r * ns + i;
      float q;
      ci[r] = format::quantize_value(fmt, x, si[r], &q);
      ti[r] = q;
      e[r] = (x - q) / ud[i];
    }
    const float* ui = ub + i * ldu;
    for (int64_t k = i + 1; k < ns; ++k) {
      float* tk = t + k * ldt;
      const float uk = ui[k];
      for (int64_t r = 0; r < pr; ++r) tk[r] -= e[r] * uk;
    }
    for (int64_t r = 0; r < pr; ++r) err[r * lde + i] = e[r];
  }
  for (int64_t r = 0; r < pr; ++r) {  // transpose out
    float* wr = w + r * ldw;
    uint8_t* cr = code + r * ldc;
    for (int64_t i = 0; i < ns; ++i) {
      wr[i] = t[i * ldt + r];
      cr[i] = cb[i * ldt + r];
    }
  }
  return -1;
}

constexpr int64_t kPanel = 256;   // rows per sweep work item (fixed: part of the arithmetic)
constexpr int64_t kSub = 32;      // in-block sub-block: the column loop updates only its own
                                  // sub-block, the rest of the block gets a small GEMM

// d = b - a, elementwise over n values.
void difference(const float* a, const float* b, float* d, int64_t rows, int64_t cols) {
  parallel_for_dynamic(rows, [&](long r) {
    for (int64_t c = 0; c < cols; ++c) d[r * cols + c] = b[r * cols + c] - a[r * cols + c];
  });
}

}  // namespace

// ---------------------------------------------------------------------------------------------

void rotate_weight(float* w, int64_t rows, int64_t cols, int block) {
  transform::hadamard_rows(w, rows, cols, block);
}

void rotate_hessian(float* h, int64_t n, int block) {
  if (!transform::check_hadamard_block(n, block)) return;
  transform::hadamard_rows(h, n, n, block);  // H·B
  transform::hadamard_cols(h, n, n, block);  // B·H·B (the transpose of what a second
                                             // hadamard_rows of (H·B)ᵀ gives; symmetrised below)
  constexpr int64_t kT = 64;                 // exact symmetrisation, tile by tile
  const int64_t tiles = (n + kT - 1) / kT;
  parallel_for_dynamic(tiles, [&](long ti) {
    const int64_t i0 = ti * kT, i1 = std::min(n, i0 + kT);
    for (int64_t j0 = i0; j0 < n; j0 += kT) {
      const int64_t j1 = std::min(n, j0 + kT);
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = std::max(j0, i + 1); j < j1; ++j) {
          const float m = 0.5f * (h[i * n + j] + h[j * n + i]);
          h[i * n + j] = h[j * n + i] = m;
        }
    }
  });
}

std::vector<int64_t> act_order_permutation(const float* h, int64_t n) {
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), int64_t{0});
  std::stable_sort(perm.begin(), perm.end(),
                   [&](int64_t a, int64_t b) { return h[a * n + a] > h[b * n + b]; });
  return perm;
}

ErrorPair quantization_error(const float* w, const float* w_hat, int64_t rows, int64_t cols,
                             const float* h) {
  ErrorPair e;
  linalg::HugeBuffer<float> d(static_cast<size_t>(rows * cols));
  difference(w, w_hat, d.data(), rows, cols);
  e.rel_weight_err = std::sqrt(ratio(squared_norm(d.data(), rows, cols),
                                     squared_norm(w, rows, cols)));
  if (h) {
    linalg::HugeBuffer<float> g(static_cast<size_t>(cols * cols));
    const double num = hessian_trace(d.data(), rows, cols, h, g.data());
    const double den = hessian_trace(w, rows, cols, h, g.data());
    e.hessian_err = ratio(num, den);
  }
  return e;
}

ErrorPair quantization_error_ref(const double* w, const double* w_hat, int64_t rows, int64_t cols,
                                 const double* h) {
  ErrorPair e;
  double nd = 0.0, nw = 0.0, td = 0.0, tw = 0.0;
  std::vector<double> d(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      d[c] = w_hat[r * cols + c] - w[r * cols + c];
      nd += d[c] * d[c];
      nw += w[r * cols + c] * w[r * cols + c];
    }
    if (h)
      for (int64_t i = 0; i < cols; ++i)
        for (int64_t j = 0; j < cols; ++j) {
          td += d[i] * h[i * cols + j] * d[j];
          tw += w[r * cols + i] * h[i * cols + j] * w[r * cols + j];
        }
  }
  e.rel_weight_err = std::sqrt(ratio(nd, nw));
  if (h) e.hessian_err = ratio(td, tw);
  return e;
}

// ---------------------------------------------------------------------------------------------

SolveResult rtn_solve(const float* w, int64_t rows, int64_t cols, const float* h,
                      const format::GroupScales& scales, const std::string& where) {
  validate(w, rows, cols, h, scales, where);
  SolveResult res;
  res.q = format::quantize_rtn(w, rows, cols, scales, where);
  if (h)
    for (int64_t i = 0; i < cols; ++i) res.stats.dead_columns += (h[i * cols + i] == 0.0f);
  linalg::HugeBuffer<float> deq(static_cast<size_t>(rows * cols));
  format::dequantize(res.q, deq.data());
  const ErrorPair e = quantization_error(w, deq.data(), rows, cols, h);
  res.stats.rel_weight_err = res.stats.rtn_rel_weight_err = e.rel_weight_err;
  res.stats.hessian_err = res.stats.rtn_hessian_err = e.hessian_err;
  return res;
}

SolveResult gptq_solve(const float* w, int64_t rows, int64_t cols, const float* h,
                       const format::GroupScales& scales, const GptqOptions& opt,
                       const std::string& where) {
  if (!h) throw Error(ErrorKind::kInternal, "gptq_solve needs a Hessian", where);
  if (opt.block_size < 1 || !(opt.damp > 0.0) || !std::isfinite(opt.damp) ||
      opt.max_damp_tries < 1)
    throw Error(ErrorKind::kUsage,
                "GPTQ options: block_size " + std::to_string(opt.block_size) + ", damp " +
                    std::to_string(opt.damp) + ", max_damp_tries " +
                    std::to_string(opt.max_damp_tries) + " (need >= 1, > 0, >= 1)",
                where, "use e.g. --damp 0.01");
  validate(w, rows, cols, h, scales, where);
  const format::FormatId fmt = scales.format;
  const int64_t n = cols;
  const int64_t gsize = format::spec(fmt).group_size;
  const int64_t groups = n / gsize;

  SolveResult res;
  res.q.format = fmt;
  res.q.rows = rows;
  res.q.cols = cols;
  res.q.codes.reserve(static_cast<size_t>(rows * cols));  // huge pages before first touch
  linalg::advise_huge(res.q.codes.data(), res.q.codes.capacity());
  res.q.codes.resize(static_cast<size_t>(rows * cols));
  res.q.scales = scales;
  ErrorStats& st = res.stats;

  auto t0 = Clock::now();
  // 1. Dead inputs (unpermuted coordinates) and the act-order permutation (original diagonal).
  std::vector<char> dead(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < n; ++i) {
    dead[i] = (h[i * n + i] == 0.0f);
    st.dead_columns += dead[i];
  }
  std::vector<int64_t> perm(static_cast<size_t>(n));
  if (opt.act_order) {
    perm = act_order_permutation(h, n);
  } else {
    std::iota(perm.begin(), perm.end(), int64_t{0});
  }
  double mean_diag = 0.0;
  for (int64_t i = 0; i < n; ++i) mean_diag += dead[i] ? 1.0 : static_cast<double>(h[i * n + i]);
  mean_diag /= std::max<int64_t>(n, 1);
  if (n > 0 && !(mean_diag > 0.0))
    throw Error(ErrorKind::kNumeric,
                "the Hessian's mean diagonal is " + std::to_string(mean_diag) +
                    " (a Hessian 2/N·XᵀX has a positive diagonal)",
                where, "the Hessian is not positive semi-definite; recompute it");

  std::vector<int32_t> perm32(perm.begin(), perm.end());
  std::vector<int64_t> dead_pos;  // permuted positions of dead columns
  for (int64_t j = 0; j < n; ++j)
    if (dead[perm[j]]) dead_pos.push_back(j);

  // 2. Damped, permuted H and its inverse upper Cholesky factor U, escalating the damping.
  linalg::HugeBuffer<float> hs_copy;
  if (!opt.h_full_symmetric) hs_copy = symmetric_copy(h, n);
  const float* hs = opt.h_full_symmetric ? h : hs_copy.data();
  linalg::HugeBuffer<float> u(static_cast<size_t>(n * n));
  double lambda = opt.damp;
  int64_t info = -1;
  float add = 0.0f;  // the absolute damping of the successful factorisation
  for (int t = 0; t < opt.max_damp_tries; ++t, lambda *= 10.0) {
    add = static_cast<float>(lambda * mean_diag);
    parallel_for_dynamic(n, [&](long i) {
      const int64_t a = perm[i];
      float* ui = u.data() + i * n;
      std::fill(ui, ui + i, 0.0f);  // lower part: not read, keep it defined
      if (dead[a]) {
        std::fill(ui + i, ui + n, 0.0f);
      } else {
        gather_row(ui + i, hs + a * n, perm32.data() + i, n - i);
        for (int64_t j : dead_pos)
          if (j >= i) ui[j] = 0.0f;
      }
      ui[i] = (dead[a] ? 1.0f : ui[i]) + add;
    });
    info = linalg::inverse_upper_cholesky(u.data(), n);
    if (info == 0) {
      // A float32 factor of a nearly singular matrix may still overflow; demand finite U.
      if (auto b = find_non_finite(u.data(), n, n, false); b.first >= 0) info = b.first + 1;
    }
    st.damp_tries = t + 1;
    if (info == 0) break;
    const int64_t col = perm[std::min<int64_t>(n - 1, std::max<int64_t>(0, info - 1))];
    spdlog::warn("{}: Cholesky of the damped Hessian failed (input column {}) with damp {:g}{}",
                 where, col, lambda,
                 t + 1 < opt.max_damp_tries ? fmt::format("; retrying with {:g}", lambda * 10.0)
                                            : std::string());
  }
  if (info != 0)
    throw Error(ErrorKind::kNumeric,
                "Cholesky factorisation of the damped Hessian failed at every damping tried (" +
                    std::to_string(opt.damp) + " .. " + std::to_string(lambda / 10.0) + ", " +
                    std::to_string(opt.max_damp_tries) + " tries)",
                where,
                "the Hessian is not positive semi-definite; recompute it or raise --damp");
  st.damp_used = lambda;
  hs_copy = linalg::HugeBuffer<float>();
  st.seconds_factor = seconds_since(t0);
  t0 = Clock::now();

  // 3. Permuted working copy of W (dead columns zeroed) and the per-column group index.
  linalg::HugeBuffer<float> wp(static_cast<size_t>(rows * n));
  parallel_for_dynamic(rows, [&](long r) {
    float* dst = wp.data() + r * n;
    gather_row(dst, w + r * n, perm32.data(), n);
    for (int64_t j : dead_pos) dst[j] = 0.0f;
  });
  std::vector<int64_t> gidx(static_cast<size_t>(n));
  std::vector<float> udiag(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    gidx[j] = perm[j] / gsize;
    udiag[j] = u[j * n + j];
  }

  // 4. The sweep. Rows are independent given U, so each work item is a PANEL of kPanel rows
  // that runs the whole sweep on its own: per block of B columns, in sub-blocks of kSub columns,
  // the column loop of every row (sweep_subblock) plus a small GEMM for the rest of the block,
  // then one GEMM for the panel's trailing columns
  // W[p, c2:] -= Err[p, :]·U[c1:c2, c2:] (lazy batch update). One parallel region for the whole
  // sweep (panels handed out dynamically), panel-local data stays in cache between the GEMM
  // and the next block, and the fixed panel size keeps every BLAS call — hence every bit —
  // independent of the thread count. Codes are written in the permuted order (sequentially)
  // and un-permuted at the end.
  const int64_t bs = std::min<int64_t>(opt.block_size, std::max<int64_t>(n, 1));
  linalg::HugeBuffer<uint8_t> cp(static_cast<size_t>(rows * n));  // codes, permuted order
  const float* svals = scales.values.data();
  const int64_t npanels = (rows + kPanel - 1) / kPanel;
  std::vector<double> panel_e2(static_cast<size_t>(npanels), 0.0);  // Σ e² per panel
  parallel_for_dynamic(npanels, [&](long p) {
    const int64_t r0 = p * kPanel, pr = std::min<int64_t>(kPanel, rows - r0);
    std::vector<float> err(static_cast<size_t>(pr * bs));
    std::vector<float> tbuf(static_cast<size_t>(kSub * (pr + 16))), sbuf(tbuf.size()), ebuf(pr);
    std::vector<uint8_t> cbuf(tbuf.size());
    for (int64_t c1 = 0; c1 < n; c1 += bs) {
      const int64_t c2 = std::min(n, c1 + bs), nb = c2 - c1;
      for (int64_t s1 = c1; s1 < c2; s1 += kSub) {
        const int64_t s2 = std::min(c2, s1 + kSub), ns = s2 - s1;
        const int64_t bad =
            sweep_subblock(fmt, wp.data() + r0 * n + s1, n, err.data() + (s1 - c1), bs,
                           cp.data() + r0 * n + s1, n, svals + r0 * groups, groups,
                           gidx.data() + s1, udiag.data() + s1, u.data() + s1 * n + s1, n, pr, ns,
                           tbuf.data(), sbuf.data(), cbuf.data(), ebuf.data());
        if (bad >= 0)
          throw Error(ErrorKind::kNumeric,
                      "GPTQ update produced a non-finite weight at row " +
                          std::to_string(r0 + bad / ns) + ", column " +
                          std::to_string(perm[s1 + bad % ns]),
                      where, "the Hessian is badly conditioned; raise --damp");
        if (s2 < c2)  // rest of the block: W[p, s2:c2] -= Err[p, s1:s2]·U[s1:s2, s2:c2]
          linalg::sgemm(false, false, pr, c2 - s2, ns, -1.0f, err.data() + (s1 - c1), bs,
                        u.data() + s1 * n + s2, n, 1.0f, wp.data() + r0 * n + s2, n);
      }
      if (c2 < n)  // trailing columns of this panel (serial inside the parallel region)
        linalg::sgemm(false, false, pr, n - c2, nb, -1.0f, err.data(), bs,
                      u.data() + c1 * n + c2, n, 1.0f, wp.data() + r0 * n + c2, n);
      if (opt.compute_stats) {  // ‖E‖² of this block, fixed order (rows, then columns)
        double e2 = 0.0;
        for (int64_t r = 0; r < pr; ++r)
          for (int64_t j = 0; j < nb; ++j) {
            const double e = err[r * bs + j];
            e2 += e * e;
          }
        panel_e2[p] += e2;
      }
    }
  });
  {
    uint8_t* codes = res.q.codes.data();
    parallel_for_dynamic(rows, [&](long r) {
      const uint8_t* src = cp.data() + r * n;
      uint8_t* dst = codes + r * n;
      for (int64_t j = 0; j < n; ++j) dst[perm[j]] = src[j];
    });
  }

  st.seconds_sweep = seconds_since(t0);
  t0 = Clock::now();

  // 5. Statistics in the (rotated) input domain, undamped input H.
  if (opt.compute_stats) {
    linalg::HugeBuffer<float> d(static_cast<size_t>(rows * n));
    std::vector<double> dead_part(static_cast<size_t>(rows), 0.0);
    parallel_for_dynamic(rows, [&](long r) {  // ΔW = Ŵ − W in the original column order
      const float* src = w + r * n;
      const float* q = wp.data() + r * n;
      float* dr = d.data() + r * n;
      for (int64_t j = 0; j < n; ++j) dr[perm[j]] = q[j] - src[perm[j]];
      double sd = 0.0;  // Σ over dead columns of ΔW² (= w², as Ŵ is 0 there)
      for (int64_t j : dead_pos) sd += static_cast<double>(dr[perm[j]]) * dr[perm[j]];
      dead_part[r] = sd;
    });
    float* g = u.data();  // U is no longer needed: Gram scratch
    const double wn = squared_norm(w, rows, n);
    const double tw = hessian_trace(w, rows, n, h, g);
    const double dn = squared_norm(d.data(), rows, n);
    double dead_sum = 0.0, e2 = 0.0;
    for (double v : dead_part) dead_sum += v;
    for (double v : panel_e2) e2 += v;
    st.rel_weight_err = std::sqrt(ratio(dn, wn));
    // tr(ΔW·H·ΔWᵀ) = ‖E‖² − δ·‖ΔW_z‖² (see gptq.h); clamp the rounding of a tiny difference.
    st.hessian_err = ratio(std::max(0.0, e2 - static_cast<double>(add) * (dn - dead_sum)), tw);
    const format::QuantizedMatrix rq = format::quantize_rtn(w, rows, cols, scales, where);
    format::dequantize(rq, wp.data());
    difference(w, wp.data(), d.data(), rows, n);
    st.rtn_rel_weight_err = std::sqrt(ratio(squared_norm(d.data(), rows, n), wn));
    st.rtn_hessian_err = ratio(hessian_trace(d.data(), rows, n, h, g), tw);
  }
  st.seconds_stats = seconds_since(t0);
  return res;
}

}  // namespace fp4q::gptq
