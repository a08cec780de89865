#include "fp4q/model/layers.h"

#include <algorithm>
#include <cmath>

#include "fp4q/linalg/blas.h"

#include "fp4q/core/error.h"
#include "fp4q/core/parallel.h"
#include "par.h"

namespace fp4q::model {

// ---- Linear ---------------------------------------------------------------------------------

void linear(const float* x, int64_t T, int64_t in, const float* W, int64_t out, const float* bias,
            float* y) {
  if (T <= 0 || out <= 0) return;
  if (in <= 0) {
    std::fill(y, y + T * out, 0.0f);
  } else {
    // Y [T x out] = X [T x in] · Wᵀ (W is [out x in]); linalg tiles the product on a fixed grid,
    // so the bits do not depend on the thread count.
    linalg::sgemm(false, true, T, out, in, 1.0f, x, in, W, in, 0.0f, y, out);
  }
  if (bias)
    detail::par_for(static_cast<long>(T), static_cast<double>(out), [&](long t) {
      float* yr = y + t * out;
      for (int64_t c = 0; c < out; ++c) yr[c] += bias[c];
    });
}

void linear_ref(const float* x, int64_t T, int64_t in, const float* W, int64_t out,
                const float* bias, float* y) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < out; ++o) {
      double s = bias ? bias[o] : 0.0;
      for (int64_t i = 0; i < in; ++i) s += static_cast<double>(x[t * in + i]) * W[o * in + i];
      y[t * out + o] = static_cast<float>(s);
    }
}

// ---- RMSNorm --------------------------------------------------------------------------------

void rms_norm(const float* x, int64_t rows, int64_t n, int64_t ld, const float* w, double eps,
              float* y) {
  const float feps = static_cast<float>(eps);
  detail::par_for(static_cast<long>(rows), 3.0 * n, [&](long r) {
    const float* xr = x + r * ld;
    float* yr = y + r * ld;
    double s = 0.0;
    for (int64_t j = 0; j < n; ++j) s += static_cast<double>(xr[j]) * xr[j];
    const float var = static_cast<float>(s / static_cast<double>(n));
    const float inv = 1.0f / std::sqrt(var + feps);
    for (int64_t j = 0; j < n; ++j) yr[j] = w[j] * (xr[j] * inv);
  });
}

void rms_norm_ref(const float* x, int64_t rows, int64_t n, int64_t ld, const float* w, double eps,
                  float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0.0;
    for (int64_t j = 0; j < n; ++j) s += static_cast<double>(x[r * ld + j]) * x[r * ld + j];
    double inv = 1.0 / std::sqrt(s / static_cast<double>(n) + eps);
    for (int64_t j = 0; j < n; ++j)
      y[r * ld + j] = static_cast<float>(static_cast<double>(w[j]) * x[r * ld + j] * inv);
  }
}

// ---- RoPE -----------------------------------------------------------------------------------

std::vector<float> rope_inv_freq(const ModelConfig& c) {
  const int half = c.head_dim / 2;
  std::vector<float> inv(half);
  // transformers: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), float32 tensors.
  const float base = static_cast<float>(c.rope_theta);
  for (int i = 0; i < half; ++i) {
    float e = static_cast<float>(2 * i) / static_cast<float>(c.head_dim);
    float p = static_cast<float>(std::pow(static_cast<double>(base), static_cast<double>(e)));
    inv[i] = 1.0f / p;
  }
  if (c.rope_type == RopeType::kLlama3) {
    // transformers _compute_llama3_parameters, float32 tensor arithmetic with python scalars.
    const float factor = static_cast<float>(c.rope_factor);
    const float low = static_cast<float>(c.rope_low_freq_factor);
    const float high = static_cast<float>(c.rope_high_freq_factor);
    const float old_ctx = static_cast<float>(c.rope_original_max_pos);
    const double low_wavelen = static_cast<double>(c.rope_original_max_pos) / c.rope_low_freq_factor;
    const double high_wavelen = static_cast<double>(c.rope_original_max_pos) / c.rope_high_freq_factor;
    const float two_pi = static_cast<float>(2.0 * M_PI);
    for (int i = 0; i < half; ++i) {
      const float f = inv[i];
      const float wavelen = two_pi / f;
      float g = (static_cast<double>(wavelen) > low_wavelen) ? f / factor : f;
      const bool medium = !(static_cast<double>(wavelen) < high_wavelen) &&
                          !(static_cast<double>(wavelen) > low_wavelen);
      if (medium) {
        const float smooth = (old_ctx / wavelen - low) / (high - low);
        g = (1.0f - smooth) * g / factor + smooth * g;
      }
      inv[i] = g;
    }
  }
  return inv;
}

std::vector<double> rope_inv_freq_ref(const ModelConfig& c) {
  const int half = c.head_dim / 2;
  std::vector<double> inv(half);
  for (int i = 0; i < half; ++i) {
    double f = std::pow(c.rope_theta, -2.0 * i / c.head_dim);
    if (c.rope_type == RopeType::kLlama3) {
      const double wavelen = 2.0 * M_PI / f;
      const double lo_w = c.rope_original_max_pos / c.rope_low_freq_factor;   // longest unscaled-ish
      const double hi_w = c.rope_original_max_pos / c.rope_high_freq_factor;  // shortest scaled
      if (wavelen < hi_w) {
        // high frequency: unchanged
      } else if (wavelen > lo_w) {
        f = f / c.rope_factor;
      } else {
        const double s = (c.rope_original_max_pos / wavelen - c.rope_low_freq_factor) /
                         (c.rope_high_freq_factor - c.rope_low_freq_factor);
        f = (1.0 - s) * f / c.rope_factor + s * f;
      }
    }
    inv[i] = f;
  }
  return inv;
}

RopeTable make_rope_table(const std::vector<float>& inv_freq, int64_t T) {
  RopeTable tab;
  tab.T = T;
  tab.half = static_cast<int>(inv_freq.size());
  const int half = tab.half;
  tab.cos.resize(static_cast<size_t>(T) * half);
  tab.sin.resize(static_cast<size_t>(T) * half);
  detail::par_for(static_cast<long>(T), 50.0 * half, [&](long t) {
    for (int i = 0; i < half; ++i) {
      const float angle = static_cast<float>(t) * inv_freq[i];  // float32 product, like HF
      tab.cos[t * half + i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      tab.sin[t * half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  });
  return tab;
}

void apply_rope(float* x, int64_t T, int n_heads, int head_dim, int64_t ld, const RopeTable& table) {
  apply_rope_batched(x, T, T, n_heads, head_dim, ld, table);
}

void apply_rope_batched(float* x, int64_t rows, int64_t seq_len, int n_heads, int head_dim,
                        int64_t ld, const RopeTable& table) {
  const int half = head_dim / 2;
  FP4Q_ASSERT(seq_len > 0 && table.T >= std::min(rows, seq_len) && table.half == half);
  detail::par_for(static_cast<long>(rows), 6.0 * n_heads * half, [&](long t) {
    const int64_t pos = t % seq_len;
    const float* c = table.cos.data() + pos * half;
    const float* s = table.sin.data() + pos * half;
    for (int h = 0; h < n_heads; ++h) {
      float* xh = x + t * ld + static_cast<int64_t>(h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const float a = xh[i], b = xh[i + half];
        xh[i] = a * c[i] - b * s[i];
        xh[i + half] = b * c[i] + a * s[i];
      }
    }
  });
}

void apply_rope_ref(float* x, int64_t T, int n_heads, int head_dim, int64_t ld,
                    const std::vector<double>& inv_freq) {
  const int half = head_dim / 2;
  for (int64_t t = 0; t < T; ++t)
    for (int h = 0; h < n_heads; ++h) {
      float* xh = x + t * ld + static_cast<int64_t>(h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const double ang = static_cast<double>(t) * inv_freq[i];
        const double c = std::cos(ang), s = std::sin(ang);
        const double a = xh[i], b = xh[i + half];
        xh[i] = static_cast<float>(a * c - b * s);
        xh[i + half] = static_cast<float>(b * c + a * s);
      }
    }
}

// ---- Attention ------------------------------------------------------------------------------

namespace {
constexpr int64_t kQueryBlock = 64;
}  // namespace

void attention(const float* q, const float* k, const float* v, int64_t T, int n_heads,
               int n_kv_heads, int head_dim, float* out) {
  attention_batched(q, k, v, 1, T, n_heads, n_kv_heads, head_dim, out);
}

void attention_batched(const float* q, const float* k, const float* v, int64_t n_seq, int64_t T,
                       int n_heads, int n_kv_heads, int head_dim, float* out) {
  if (T <= 0 || n_seq <= 0) return;
  FP4Q_ASSERT(n_kv_heads > 0 && n_heads % n_kv_heads == 0);
  const int64_t qd = static_cast<int64_t>(n_heads) * head_dim;
  const int64_t kvd = static_cast<int64_t>(n_kv_heads) * head_dim;
  const int group = n_heads / n_kv_heads;
  // transformers: scaling = head_dim ** -0.5 (python double), applied to a float32 tensor.
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
  const int64_t nblocks = (T + kQueryBlock - 1) / kQueryBlock;
  const long per_seq = static_cast<long>(nblocks * n_heads);
  const long items = per_seq * static_cast<long>(n_seq);
  const double work = 2.0 * static_cast<double>(T) * T * head_dim * n_heads * n_seq;  // ~causal
  // Every item (query block, head) is computed by one thread with single-threaded sgemm calls in
  // a fixed order, so the result does not depend on the thread count or the schedule; dynamic
  // scheduling only balances the triangular work. Items are issued largest (last block) first.
  detail::BlasSingleThread single;
  // Items are ordered (query block descending, sequence, head) so the largest come first.
  detail::par_for_dynamic(items, work, [&](long it) {
    thread_local std::vector<float> S;
    const int64_t b = nblocks - 1 - it / (n_heads * n_seq);
    const int64_t sq = (it / n_heads) % n_seq;
    const int h = static_cast<int>(it % n_heads);
    const int kvh = h / group;
    const int64_t r0 = b * kQueryBlock, r1 = std::min(T, r0 + kQueryBlock);
    const int64_t rows = r1 - r0, keys = r1;  // causal: rows r0..r1-1 see keys 0..r1-1
    const int64_t base = sq * T;              // first row of this sequence
    const float* Q = q + (base + r0) * qd + static_cast<int64_t>(h) * head_dim;  // [rows x hd]
    const float* K = k + base * kvd + static_cast<int64_t>(kvh) * head_dim;      // [keys x hd]
    const float* Vp = v + base * kvd + static_cast<int64_t>(kvh) * head_dim;     // [keys x hd]
    float* O = out + (base + r0) * qd + static_cast<int64_t>(h) * head_dim;      // [rows x hd]
    S.resize(static_cast<size_t>(rows * keys));
    // S[rows x keys] = Q K^T
    linalg::sgemm(false, true, rows, keys, head_dim, 1.0f, Q, qd, K, kvd, 0.0f, S.data(), keys);
    for (int64_t i = 0; i < rows; ++i) {
      float* s = S.data() + i * keys;
      const int64_t valid = r0 + i + 1;
      float m = -INFINITY;
      for (int64_t j = 0; j < valid; ++j) {
        s[j] *= scale;
        m = std::max(m, s[j]);
      }
      double sum = 0.0;
      for (int64_t j = 0; j < valid; ++j) {
        s[j] = std::exp(s[j] - m);
        sum += s[j];
      }
      const float inv = static_cast<float>(1.0 / sum);
      for (int64_t j = 0; j < valid; ++j) s[j] *= inv;
      for (int64_t j = valid; j < keys; ++j) s[j] = 0.0f;
    }
    // O[rows x hd] = P[rows x keys] V[keys x hd]
    linalg::sgemm(false, false, rows, head_dim, keys, 1.0f, S.data(), keys, Vp, kvd, 0.0f, O, qd);
  });
}

void attention_ref(const float* q, const float* k, const float* v, int64_t T, int n_heads,
                   int n_kv_heads, int head_dim, float* out) {
  const int64_t qd = static_cast<int64_t>(n_heads) * head_dim;
  const int64_t kvd = static_cast<int64_t>(n_kv_heads) * head_dim;
  const int group = n_heads / n_kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  std::vector<double> p(static_cast<size_t>(T));
  for (int h = 0; h < n_heads; ++h) {
    const int kvh = h / group;
    for (int64_t t = 0; t < T; ++t) {
      const float* qt = q + t * qd + static_cast<int64_t>(h) * head_dim;
      double m = -INFINITY;
      for (int64_t s = 0; s <= t; ++s) {
        const float* ks = k + s * kvd + static_cast<int64_t>(kvh) * head_dim;
        double d = 0.0;
        for (int e = 0; e < head_dim; ++e) d += static_cast<double>(qt[e]) * ks[e];
        p[s] = d * scale;
        m = std::max(m, p[s]);
      }
      double sum = 0.0;
      for (int64_t s = 0; s <= t; ++s) {
        p[s] = std::exp(p[s] - m);
        sum += p[s];
      }
      float* ot = out + t * qd + static_cast<int64_t>(h) * head_dim;
      for (int e = 0; e < head_dim; ++e) {
        double acc = 0.0;
        for (int64_t s = 0; s <= t; ++s)
          acc += p[s] * v[s * kvd + static_cast<int64_t>(kvh) * head_dim + e];
        ot[e] = static_cast<float>(acc / sum);
      }
    }
  }
}

// ---- MLP ------------------------------------------------------------------------------------

void swiglu(float* gate, const float* up, int64_t n) {
  const int64_t kChunk = 4096;
  detail::par_for(static_cast<long>((n + kChunk - 1) / kChunk), 20.0 * kChunk, [&](long c) {
    const int64_t e = std::min(n, (c + 1) * kChunk);
    for (int64_t i = c * kChunk; i < e; ++i) {
      const float g = gate[i];
      gate[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
  });
}

}  // namespace fp4q::model
