#include "fp4q/model/layers.h"

#include <algorithm>
#include <cmath>

#include "fp4q/linalg/bf16_gemm.h"
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

void linear_bf16(const float* x, int64_t T, int64_t in, const float* W, int64_t out,
                 const float* bias, float* y) {
  if (T <= 0 || out <= 0) return;
  linalg::gemm_bf16_nt(T, out, in, x, in, W, in, y, out);  // in == 0 gives zeros
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

std::vector<float> rope_inv_freq(const ModelConfig& c, bool long_context) {
  const int dim = c.rotary_dim();
  const int half = dim / 2;
  std::vector<float> inv(half);
  // transformers: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), float32 tensors.
  const float base = static_cast<float>(c.rope_theta);
  for (int i = 0; i < half; ++i) {
    float e = static_cast<float>(2 * i) / static_cast<float>(dim);
    float p = static_cast<float>(std::pow(static_cast<double>(base), static_cast<double>(e)));
    if (c.rope_type == RopeType::kLongRope) {
      // _compute_longrope_parameters: 1.0 / (ext_factors * base**inv_freq_shape), float32.
      const std::vector<double>& ext = long_context ? c.rope_long_factor : c.rope_short_factor;
      FP4Q_ASSERT(static_cast<int>(ext.size()) == half);
      p = static_cast<float>(ext[i]) * p;
    }
    inv[i] = 1.0f / p;
  }
  if (c.rope_type == RopeType::kLinear) {
    // _compute_linear_scaling_rope_parameters: inv_freq /= factor (float32).
    const float factor = static_cast<float>(c.rope_factor);
    for (float& f : inv) f /= factor;
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

std::vector<double> rope_inv_freq_ref(const ModelConfig& c, bool long_context) {
  const int dim = c.rotary_dim();
  const int half = dim / 2;
  std::vector<double> inv(half);
  for (int i = 0; i < half; ++i) {
    double f = std::pow(c.rope_theta, -2.0 * i / dim);
    if (c.rope_type == RopeType::kLinear) f /= c.rope_factor;
    if (c.rope_type == RopeType::kLongRope)
      f /= (long_context ? c.rope_long_factor : c.rope_short_factor)[i];
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

RopeTable make_rope_table(const std::vector<float>& inv_freq, int64_t T, float scale) {
  RopeTable tab;
  tab.T = T;
  tab.half = static_cast<int>(inv_freq.size());
  const int half = tab.half;
  tab.cos.resize(static_cast<size_t>(T) * half);
  tab.sin.resize(static_cast<size_t>(T) * half);
  detail::par_for(static_cast<long>(T), 50.0 * half, [&](long t) {
    for (int i = 0; i < half; ++i) {
      const float angle = static_cast<float>(t) * inv_freq[i];  // float32 product, like HF
      // emb.cos() * attention_scaling: float32 cos, then a float32 product (skipped for 1.0,
      // which is exact anyway).
      tab.cos[t * half + i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      tab.sin[t * half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
      if (scale != 1.0f) {
        tab.cos[t * half + i] *= scale;
        tab.sin[t * half + i] *= scale;
      }
    }
  });
  return tab;
}

void apply_rope(float* x, int64_t T, int n_heads, int head_dim, int64_t ld, const RopeTable& table) {
  apply_rope_batched(x, T, T, n_heads, head_dim, ld, table);
}

void apply_rope_batched(float* x, int64_t rows, int64_t seq_len, int n_heads, int head_dim,
                        int64_t ld, const RopeTable& table) {
  const int half = table.half;  // rotary_dim / 2 (<= head_dim / 2: partial rotary)
  FP4Q_ASSERT(seq_len > 0 && table.T >= std::min(rows, seq_len) && 2 * half <= head_dim);
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
                    const std::vector<double>& inv_freq, double scale) {
  const int half = static_cast<int>(inv_freq.size());
  FP4Q_ASSERT(2 * half <= head_dim);
  for (int64_t t = 0; t < T; ++t)
    for (int h = 0; h < n_heads; ++h) {
      float* xh = x + t * ld + static_cast<int64_t>(h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const double ang = static_cast<double>(t) * inv_freq[i];
        const double c = std::cos(ang) * scale, s = std::sin(ang) * scale;
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
  attention_batched(q, k, v, 1, T, n_heads, n_kv_heads, head_dim, out, AttentionOptions());
}

void attention_batched(const float* q, const float* k, const float* v, int64_t n_seq, int64_t T,
                       int n_heads, int n_kv_heads, int head_dim, float* out) {
  attention_batched(q, k, v, n_seq, T, n_heads, n_kv_heads, head_dim, out, AttentionOptions());
}

void attention_batched(const float* q, const float* k, const float* v, int64_t n_seq, int64_t T,
                       int n_heads, int n_kv_heads, int head_dim, float* out,
                       const AttentionOptions& opt) {
  if (T <= 0 || n_seq <= 0) return;
  FP4Q_ASSERT(n_kv_heads > 0 && n_heads % n_kv_heads == 0);
  const int64_t qd = static_cast<int64_t>(n_heads) * head_dim;
  const int64_t kvd = static_cast<int64_t>(n_kv_heads) * head_dim;
  const int group = n_heads / n_kv_heads;
  // transformers: scaling = head_dim ** -0.5 (python double), applied to a float32 tensor.
  const float scale = static_cast<float>(
      opt.scale > 0 ? opt.scale : 1.0 / std::sqrt(static_cast<double>(head_dim)));
  const float cap = static_cast<float>(opt.softcap);
  const int64_t window = opt.window > 0 && opt.window < T ? opt.window : 0;  // 0: plain causal
  const int64_t nblocks = (T + kQueryBlock - 1) / kQueryBlock;
  const long per_seq = static_cast<long>(nblocks * n_heads);
  const long items = per_seq * static_cast<long>(n_seq);
  const double keys_per_row = window ? static_cast<double>(std::min<int64_t>(T, window + kQueryBlock))
                                     : static_cast<double>(T);
  const double work = 2.0 * static_cast<double>(T) * keys_per_row * head_dim * n_heads * n_seq;
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
    // causal: rows r0..r1-1 see keys k0..r1-1 (sliding window: row t sees (t - window, t])
    const int64_t k0 = window ? std::max<int64_t>(0, r0 - window + 1) : 0;
    const int64_t rows = r1 - r0, keys = r1 - k0;
    const int64_t base = sq * T;              // first row of this sequence
    const float* Q = q + (base + r0) * qd + static_cast<int64_t>(h) * head_dim;  // [rows x hd]
    const float* K = k + (base + k0) * kvd + static_cast<int64_t>(kvh) * head_dim;  // [keys x hd]
    const float* Vp = v + (base + k0) * kvd + static_cast<int64_t>(kvh) * head_dim;  // [keys x hd]
    float* O = out + (base + r0) * qd + static_cast<int64_t>(h) * head_dim;      // [rows x hd]
    S.resize(static_cast<size_t>(rows * keys));
    // S[rows x keys] = Q K^T
    linalg::sgemm(false, true, rows, keys, head_dim, 1.0f, Q, qd, K, kvd, 0.0f, S.data(), keys);
    for (int64_t i = 0; i < rows; ++i) {
      float* s = S.data() + i * keys;
      const int64_t t = r0 + i;
      const int64_t lo = window ? std::max<int64_t>(0, t - window + 1) - k0 : 0;  // first valid
      const int64_t hi = t + 1 - k0;                                               // one past last
      float m = -INFINITY;
      for (int64_t j = lo; j < hi; ++j) {
        s[j] *= scale;
        if (cap > 0) s[j] = std::tanh(s[j] / cap) * cap;
        m = std::max(m, s[j]);
      }
      double sum = 0.0;
      for (int64_t j = lo; j < hi; ++j) {
        s[j] = std::exp(s[j] - m);
        sum += s[j];
      }
      const float inv = static_cast<float>(1.0 / sum);
      for (int64_t j = 0; j < lo; ++j) s[j] = 0.0f;
      for (int64_t j = lo; j < hi; ++j) s[j] *= inv;
      for (int64_t j = hi; j < keys; ++j) s[j] = 0.0f;
    }
    // O[rows x hd] = P[rows x keys] V[keys x hd]
    linalg::sgemm(false, false, rows, head_dim, keys, 1.0f, S.data(), keys, Vp, kvd, 0.0f, O, qd);
  });
}

void attention_ref(const float* q, const float* k, const float* v, int64_t T, int n_heads,
                   int n_kv_heads, int head_dim, float* out, const AttentionOptions& opt) {
  const int64_t qd = static_cast<int64_t>(n_heads) * head_dim;
  const int64_t kvd = static_cast<int64_t>(n_kv_heads) * head_dim;
  const int group = n_heads / n_kv_heads;
  const double scale = opt.scale > 0 ? opt.scale : 1.0 / std::sqrt(static_cast<double>(head_dim));
  std::vector<double> p(static_cast<size_t>(T));
  for (int h = 0; h < n_heads; ++h) {
    const int kvh = h / group;
    for (int64_t t = 0; t < T; ++t) {
      const float* qt = q + t * qd + static_cast<int64_t>(h) * head_dim;
      const int64_t s0 = opt.window > 0 ? std::max<int64_t>(0, t - opt.window + 1) : 0;
      double m = -INFINITY;
      for (int64_t s = s0; s <= t; ++s) {
        const float* ks = k + s * kvd + static_cast<int64_t>(kvh) * head_dim;
        double d = 0.0;
        for (int e = 0; e < head_dim; ++e) d += static_cast<double>(qt[e]) * ks[e];
        p[s] = d * scale;
        if (opt.softcap > 0) p[s] = std::tanh(p[s] / opt.softcap) * opt.softcap;
        m = std::max(m, p[s]);
      }
      double sum = 0.0;
      for (int64_t s = s0; s <= t; ++s) {
        p[s] = std::exp(p[s] - m);
        sum += p[s];
      }
      float* ot = out + t * qd + static_cast<int64_t>(h) * head_dim;
      for (int e = 0; e < head_dim; ++e) {
        double acc = 0.0;
        for (int64_t s = s0; s <= t; ++s)
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

namespace fp4q::model {

// ---- GELU-tanh GLU, soft-capping -----------------------------------------------------------------

namespace {
inline float gelu_tanh_f(float x) {
  // PyTorch GeluKernel (approximate="tanh"): kBeta = sqrt(2) * (2/sqrt(pi)) * 0.5, kKappa =
  // 0.044715, y = 0.5 * x * (1 + tanh(kBeta * (x + kKappa * x^3))), float32.
  constexpr float kBeta = static_cast<float>(M_SQRT2 * M_2_SQRTPI * 0.5);
  constexpr float kKappa = 0.044715f;
  const float x_cube = x * x * x;
  const float inner = kBeta * (x + kKappa * x_cube);
  return 0.5f * x * (1.0f + std::tanh(inner));
}
}  // namespace

void geglu_tanh(float* gate, const float* up, int64_t n) {
  const int64_t kChunk = 4096;
  detail::par_for(static_cast<long>((n + kChunk - 1) / kChunk), 30.0 * kChunk, [&](long c) {
    const int64_t e = std::min(n, (c + 1) * kChunk);
    for (int64_t i = c * kChunk; i < e; ++i) gate[i] = gelu_tanh_f(gate[i]) * up[i];
  });
}

void glu(float* gate, const float* up, int64_t n, Activation act) {
  if (act == Activation::kGeluTanh) geglu_tanh(gate, up, n);
  else swiglu(gate, up, n);
}

void glu_ref(float* gate, const float* up, int64_t n, Activation act) {
  for (int64_t i = 0; i < n; ++i) {
    const double x = gate[i];
    double a;
    if (act == Activation::kGeluTanh)
      a = 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    else
      a = x / (1.0 + std::exp(-x));
    gate[i] = static_cast<float>(a * up[i]);
  }
}

void softcap(float* x, int64_t n, double cap) {
  const float c = static_cast<float>(cap);
  detail::par_for(static_cast<long>((n + 4095) / 4096), 30.0 * 4096, [&](long b) {
    const int64_t e = std::min<int64_t>(n, (b + 1) * 4096);
    for (int64_t i = b * 4096; i < e; ++i) x[i] = std::tanh(x[i] / c) * c;
  });
}

}  // namespace fp4q::model
