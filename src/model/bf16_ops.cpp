// src/model/bf16_ops.cpp — bfloat16-runtime variants of the layer building blocks (bf16_ops.h).
#include "fp4q/model/bf16_ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "fp4q/core/compute_dtype.h"
#include "fp4q/core/parallel.h"

namespace fp4q::model {

void rms_norm_bf16(const float* x, int64_t rows, int64_t n, int64_t ld, const float* w, double eps, float* y) {
  parallel_for(static_cast<long>(rows), [&](long r) {
    const float* xr = x + r * ld;
    float* yr = y + r * ld;
    double ss = 0.0;
    for (int64_t j = 0; j < n; ++j) ss += static_cast<double>(xr[j]) * xr[j];
    const float var = static_cast<float>(ss / static_cast<double>(n));
    const float inv = 1.0f / std::sqrt(var + static_cast<float>(eps));
    for (int64_t j = 0; j < n; ++j) yr[j] = round_bf16(w[j] * round_bf16(xr[j] * inv));
  });
}

void apply_rope_bf16(float* x, int64_t rows, int64_t seq_len, int n_heads, int head_dim, int64_t ld,
                     const RopeTable& table) {
  const int half = head_dim / 2;
  parallel_for(static_cast<long>(rows), [&](long r) {
    const int64_t t = r % seq_len;
    const float* cs = table.cos.data() + t * table.half;
    const float* sn = table.sin.data() + t * table.half;
    for (int h = 0; h < n_heads; ++h) {
      float* p = x + r * ld + static_cast<int64_t>(h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const float c = round_bf16(cs[i]), s = round_bf16(sn[i]);
        const float a = p[i], b = p[i + half];
        p[i] = round_bf16(round_bf16(a * c) - round_bf16(b * s));
        p[i + half] = round_bf16(round_bf16(b * c) + round_bf16(a * s));
      }
    }
  });
}

void attention_bf16(const float* q, const float* k, const float* v, int64_t n_seq, int64_t T, int n_heads,
                    int n_kv_heads, int head_dim, float* out) {
  const int group = n_heads / n_kv_heads;
  const int64_t qld = static_cast<int64_t>(n_heads) * head_dim, kld = static_cast<int64_t>(n_kv_heads) * head_dim;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
  const long items = static_cast<long>(n_seq * n_heads);
  parallel_for(items, [&](long it) {
    const int64_t s0 = (it / n_heads) * T;
    const int h = static_cast<int>(it % n_heads), kh = h / group;
    std::vector<float> p(static_cast<size_t>(T));
    std::vector<float> acc(static_cast<size_t>(head_dim));
    for (int64_t t = 0; t < T; ++t) {
      const float* qt = q + (s0 + t) * qld + static_cast<int64_t>(h) * head_dim;
      float m = -INFINITY;
      for (int64_t s = 0; s <= t; ++s) {
        const float* ks = k + (s0 + s) * kld + static_cast<int64_t>(kh) * head_dim;
        float d = 0.0f;
        for (int j = 0; j < head_dim; ++j) d += qt[j] * ks[j];
        p[s] = round_bf16(round_bf16(d) * scale);
        m = std::max(m, p[s]);
      }
      float sum = 0.0f;
      for (int64_t s = 0; s <= t; ++s) {
        p[s] = std::exp(p[s] - m);
        sum += p[s];
      }
      for (int64_t s = 0; s <= t; ++s) p[s] = round_bf16(p[s] / sum);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t s = 0; s <= t; ++s) {
        const float* vs = v + (s0 + s) * kld + static_cast<int64_t>(kh) * head_dim;
        for (int j = 0; j < head_dim; ++j) acc[j] += p[s] * vs[j];
      }
      float* o = out + (s0 + t) * qld + static_cast<int64_t>(h) * head_dim;
      for (int j = 0; j < head_dim; ++j) o[j] = round_bf16(acc[j]);
    }
  });
}

void swiglu_bf16(float* gate, const float* up, int64_t n) {
  parallel_for(static_cast<long>((n + 4095) / 4096), [&](long b) {
    const int64_t e = std::min<int64_t>(n, (b + 1) * 4096);
    for (int64_t i = b * 4096; i < e; ++i) {
      const float g = gate[i];
      gate[i] = round_bf16(round_bf16(g / (1.0f + std::exp(-g))) * up[i]);
    }
  });
}

}  // namespace fp4q::model
