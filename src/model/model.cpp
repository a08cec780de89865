#include "fp4q/model/model.h"

#include <algorithm>
#include <cmath>
#include <mutex>

#include "fp4q/core/error.h"
#include "fp4q/model/bf16_ops.h"
#include "fp4q/core/log.h"
#include "fp4q/core/parallel.h"
#include "fp4q/linalg/buffer.h"
#include "par.h"

namespace fp4q::model {

// ---- Linear kinds ---------------------------------------------------------------------------

namespace {
const char* const kLinearNames[kNumLinear] = {"self_attn.q_proj", "self_attn.k_proj",
                                              "self_attn.v_proj", "self_attn.o_proj",
                                              "mlp.gate_proj",    "mlp.up_proj",
                                              "mlp.down_proj"};
const LinearKind kAllKinds[kNumLinear] = {LinearKind::kQ,    LinearKind::kK,  LinearKind::kV,
                                          LinearKind::kO,    LinearKind::kGate, LinearKind::kUp,
                                          LinearKind::kDown};

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

std::string layer_prefix(int l) { return "model.layers." + std::to_string(l) + "."; }
}  // namespace

const char* linear_name(LinearKind k) { return kLinearNames[static_cast<int>(k)]; }
const LinearKind* all_linear_kinds() { return kAllKinds; }
std::string linear_path(int layer, LinearKind k) { return layer_prefix(layer) + linear_name(k); }

LinearKind input_group(LinearKind k) {
  switch (k) {
    case LinearKind::kQ:
    case LinearKind::kK:
    case LinearKind::kV: return LinearKind::kQ;
    case LinearKind::kGate:
    case LinearKind::kUp: return LinearKind::kGate;
    default: return k;
  }
}

// ---- Model ----------------------------------------------------------------------------------

struct ForwardScratch::Impl {
  linalg::HugeBuffer<float> buf[kSlots];
};
ForwardScratch::ForwardScratch() : impl_(std::make_unique<Impl>()) {}
ForwardScratch::~ForwardScratch() = default;
ForwardScratch::ForwardScratch(ForwardScratch&&) noexcept = default;
ForwardScratch& ForwardScratch::operator=(ForwardScratch&&) noexcept = default;

float* ForwardScratch::get(int slot, size_t n) {
  FP4Q_ASSERT(slot >= 0 && slot < kSlots);
  linalg::HugeBuffer<float>& b = impl_->buf[slot];
  if (b.size() < n) {
    b = linalg::HugeBuffer<float>();  // free first: peak = one copy
    b = linalg::HugeBuffer<float>(n);
  }
  return b.data();
}

size_t ForwardScratch::bytes() const {
  size_t t = 0;
  for (const auto& b : impl_->buf) t += b.size() * sizeof(float);
  return t;
}

struct Model::RopeCache {
  std::mutex mu;
  std::shared_ptr<const RopeTable> table;
};

Model::Model() : rope_(std::make_unique<RopeCache>()) {}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

namespace {

// Out/in of each linear for the config.
void linear_shape(const ModelConfig& c, LinearKind k, int64_t* out, int64_t* in) {
  *out = 0;
  *in = 0;
  switch (k) {
    case LinearKind::kQ: *out = c.q_dim(); *in = c.hidden; break;
    case LinearKind::kK:
    case LinearKind::kV: *out = c.kv_dim(); *in = c.hidden; break;
    case LinearKind::kO: *out = c.hidden; *in = c.q_dim(); break;
    case LinearKind::kGate:
    case LinearKind::kUp: *out = c.intermediate; *in = c.hidden; break;
    case LinearKind::kDown: *out = c.hidden; *in = c.intermediate; break;
  }
}

bool has_bias(const ModelConfig& c, LinearKind k) {
  return c.qkv_bias && (k == LinearKind::kQ || k == LinearKind::kK || k == LinearKind::kV);
}

void check_tensor(const io::ModelFiles& f, const std::string& name,
                  const std::vector<int64_t>& shape, const std::string& dir) {
  if (!f.has(name))
    throw Error(ErrorKind::kInput, "tensor \"" + name + "\" is missing (expected shape " +
                                       shape_str(shape) + ")",
                dir, "the checkpoint does not match config.json");
  const io::TensorInfo& info = f.info(name);
  if (info.shape != shape)
    throw Error(ErrorKind::kInput,
                "tensor \"" + name + "\" has shape " + shape_str(info.shape) + ", expected " +
                    shape_str(shape) + " from config.json",
                dir);
  if (!io::is_float_dtype(info.dtype))
    throw Error(ErrorKind::kInput,
                "tensor \"" + name + "\" has dtype " + io::dtype_tag(info.dtype) +
                    ", expected F32, F16 or BF16",
                dir, "already-quantized checkpoints cannot be used as input");
}

void check_absent(const io::ModelFiles& f, const std::string& name, const std::string& dir,
                  const std::string& why) {
  if (f.has(name))
    throw Error(ErrorKind::kInput, "unexpected tensor \"" + name + "\": " + why, dir,
                "the checkpoint does not match config.json");
}

void check_weights(const ModelConfig& c, const LayerWeights& w, int l) {
  auto fail = [&](const std::string& what) {
    throw Error(ErrorKind::kInternal, "LayerWeights passed to layer_forward: " + what,
                "layer " + std::to_string(l));
  };
  for (LinearKind k : kAllKinds) {
    int64_t out, in;
    linear_shape(c, k, &out, &in);
    const LinearWeights& lw = w[k];
    if (lw.out != out || lw.in != in || static_cast<int64_t>(lw.w.size()) != out * in)
      fail(std::string(linear_name(k)) + " has out=" + std::to_string(lw.out) + " in=" +
           std::to_string(lw.in) + " size=" + std::to_string(lw.w.size()) + ", expected " +
           std::to_string(out) + " x " + std::to_string(in));
    if (!lw.bias.empty() && static_cast<int64_t>(lw.bias.size()) != out)
      fail(std::string(linear_name(k)) + " bias size " + std::to_string(lw.bias.size()));
  }
  if (static_cast<int64_t>(w.input_norm.size()) != c.hidden ||
      static_cast<int64_t>(w.post_norm.size()) != c.hidden)
    fail("norm weights must have hidden_size elements");
  if (c.qk_norm && (static_cast<int>(w.q_norm.size()) != c.head_dim ||
                    static_cast<int>(w.k_norm.size()) != c.head_dim))
    fail("q_norm/k_norm must have head_dim elements");
}

}  // namespace

Model Model::open(const std::string& dir, bool quantized_linears) {
  Model m;
  m.dir_ = dir;
  m.cfg_ = ModelConfig::load(dir, quantized_linears);
  m.files_ = std::make_unique<io::ModelFiles>(io::ModelFiles::open(dir));
  const ModelConfig& c = m.cfg_;
  const io::ModelFiles& f = *m.files_;

  check_tensor(f, "model.embed_tokens.weight", {c.vocab, c.hidden}, dir);
  check_tensor(f, "model.norm.weight", {c.hidden}, dir);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = layer_prefix(l);
    check_tensor(f, p + "input_layernorm.weight", {c.hidden}, dir);
    check_tensor(f, p + "post_attention_layernorm.weight", {c.hidden}, dir);
    for (LinearKind k : kAllKinds) {
      int64_t out, in;
      linear_shape(c, k, &out, &in);
      const std::string base = linear_path(l, k);
      if (!quantized_linears) check_tensor(f, base + ".weight", {out, in}, dir);
      if (has_bias(c, k))
        check_tensor(f, base + ".bias", {out}, dir);
      else
        check_absent(f, base + ".bias", dir,
                     std::string("config.json (") + c.arch_string + ", attention_bias/mlp_bias) "
                     "implies no bias for this linear");
    }
    if (c.qk_norm) {
      check_tensor(f, p + "self_attn.q_norm.weight", {c.head_dim}, dir);
      check_tensor(f, p + "self_attn.k_norm.weight", {c.head_dim}, dir);
    } else {
      check_absent(f, p + "self_attn.q_norm.weight", dir,
                   std::string("q/k norms are only used by Qwen3ForCausalLM, config.json says ") +
                       c.arch_string);
    }
  }
  m.embed_ = f.read_f32("model.embed_tokens.weight");
  m.norm_ = f.read_f32("model.norm.weight");
  if (!c.tie_embeddings) {
    if (!f.has("lm_head.weight"))
      throw Error(ErrorKind::kInput,
                  "tensor \"lm_head.weight\" is missing and config.json has tie_word_embeddings "
                  "false/absent",
                  dir, "set \"tie_word_embeddings\": true in config.json if the model ties them");
    check_tensor(f, "lm_head.weight", {c.vocab, c.hidden}, dir);
    m.lm_head_ = f.read_f32("lm_head.weight");
  }
  m.inv_freq_ = rope_inv_freq(c);
  spdlog::debug("model {}: {} layers, hidden {}, heads {}/{} x {}, vocab {}, {}", dir, c.n_layers,
                c.hidden, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab, c.arch_string);
  return m;
}

LayerWeights Model::load_layer(int l) const {
  const ModelConfig& c = cfg_;
  if (l < 0 || l >= c.n_layers)
    throw Error(ErrorKind::kInternal, "layer index " + std::to_string(l) + " out of range [0, " +
                                          std::to_string(c.n_layers) + ")",
                dir_);
  const io::ModelFiles& f = *files_;
  const std::string p = layer_prefix(l);
  LayerWeights w;
  for (LinearKind k : kAllKinds) {
    LinearWeights& lw = w[k];
    linear_shape(c, k, &lw.out, &lw.in);
    const std::string base = linear_path(l, k);
    lw.w = f.read_f32(base + ".weight");
    if (has_bias(c, k)) lw.bias = f.read_f32(base + ".bias");
  }
  w.input_norm = f.read_f32(p + "input_layernorm.weight");
  w.post_norm = f.read_f32(p + "post_attention_layernorm.weight");
  if (c.qk_norm) {
    w.q_norm = f.read_f32(p + "self_attn.q_norm.weight");
    w.k_norm = f.read_f32(p + "self_attn.k_norm.weight");
  }
  return w;
}

std::vector<float> Model::embed(const std::vector<int32_t>& ids) const {
  const int64_t H = cfg_.hidden;
  std::vector<float> out(ids.size() * static_cast<size_t>(H));
  for (size_t t = 0; t < ids.size(); ++t) {
    const int32_t id = ids[t];
    if (id < 0 || id >= cfg_.vocab)
      throw Error(ErrorKind::kInput,
                  "token id " + std::to_string(id) + " at position " + std::to_string(t) +
                      " is outside [0, vocab_size = " + std::to_string(cfg_.vocab) + ")",
                  dir_, "the token ids do not belong to this model's tokenizer");
    std::copy(embed_.begin() + id * H, embed_.begin() + (id + 1) * H, out.begin() + t * H);
  }
  return out;
}

std::shared_ptr<const RopeTable> Model::rope_table(int64_t T) const {
  std::lock_guard<std::mutex> lock(rope_->mu);
  if (!rope_->table || rope_->table->T < T) {
    const int64_t n = std::max<int64_t>((T + 255) / 256 * 256, std::min<int64_t>(cfg_.max_pos, 4096));
    rope_->table = std::make_shared<const RopeTable>(make_rope_table(inv_freq_, std::max(n, T)));
  }
  return rope_->table;
}

void Model::layer_forward(int l, const LayerWeights& w, float* hidden, int64_t T,
                          LinearHook* hook) const {
  layer_forward(l, w, hidden, 1, T, hook, nullptr, true);
}

void Model::layer_forward(int l, const LayerWeights& w, float* hidden, int64_t n_seq, int64_t T,
                          LinearHook* hook, ForwardScratch* scratch, bool need_output) const {
  const ModelConfig& c = cfg_;
  if (l < 0 || l >= c.n_layers)
    throw Error(ErrorKind::kInternal, "layer index " + std::to_string(l) + " out of range", dir_);
  if (T <= 0 || n_seq <= 0) return;
  const int64_t window = c.layer_sliding_window[l];
  if (window > 0 && T > window)
    throw Error(ErrorKind::kInput,
                "sliding-window attention (window " + std::to_string(window) +
                    " tokens) would be in effect for layer " + std::to_string(l) +
                    " at sequence length " + std::to_string(T),
                dir_ + "/config.json: sliding_window",
                "fp4q implements full causal attention only; use a sequence length <= " +
                    std::to_string(window));
  check_weights(c, w, l);
  ForwardScratch local;
  ForwardScratch& ws = scratch ? *scratch : local;
  const int64_t N = n_seq * T;  // rows of every activation matrix
  const int64_t H = c.hidden, QD = c.q_dim(), KVD = c.kv_dim(), I = c.intermediate;
  const size_t n = static_cast<size_t>(N);
  auto bias_of = [&](LinearKind k) {
    return w[k].bias.empty() ? nullptr : w[k].bias.data();
  };
  const bool bf = dtype_ == ComputeDtype::kBF16;  // bf16 emulation (set_compute_dtype)
  auto add_into_hidden = [&](const float* y) {
    detail::par_for(static_cast<long>(N), static_cast<double>(H), [&](long t) {
      for (int64_t j = 0; j < H; ++j) hidden[t * H + j] += y[t * H + j];
      if (bf)
        for (int64_t j = 0; j < H; ++j) hidden[t * H + j] = round_bf16(hidden[t * H + j]);
    });
  };
  auto norm = [&](const float* x, int64_t rows, int64_t cols, const float* wn, float* y) {
    if (bf) rms_norm_bf16(x, rows, cols, cols, wn, c.rms_eps, y);
    else rms_norm(x, rows, cols, cols, wn, c.rms_eps, y);
  };
  // A Linear's output as the runtime stores it (float32 accumulation, bias added, then rounded).
  auto out = [&](float* y, int64_t cols) { round_to(dtype_, y, N * cols); };
  enum { kXn = 0, kQb, kKb, kVb, kCtx, kGb, kUb };

  // ---- attention block: hidden += o_proj(attn(rope(q), rope(k), v)) of rms_norm(hidden).
  float* xn = ws.get(kXn, n * H);
  norm(hidden, N, H, w.input_norm.data(), xn);
  if (hook) hook->on_input_batch(l, LinearKind::kQ, xn, n_seq, N, H);
  float* q = ws.get(kQb, n * QD);
  float* k = ws.get(kKb, n * KVD);
  float* v = ws.get(kVb, n * KVD);
  linear(xn, N, H, w[LinearKind::kQ].w.data(), QD, bias_of(LinearKind::kQ), q);
  linear(xn, N, H, w[LinearKind::kK].w.data(), KVD, bias_of(LinearKind::kK), k);
  linear(xn, N, H, w[LinearKind::kV].w.data(), KVD, bias_of(LinearKind::kV), v);
  out(q, QD);
  out(k, KVD);
  out(v, KVD);
  if (c.qk_norm) {  // Qwen3: RMSNorm over each head's head_dim values ([N*heads x head_dim] view)
    if (bf) {
      rms_norm_bf16(q, N * c.n_heads, c.head_dim, c.head_dim, w.q_norm.data(), c.rms_eps, q);
      rms_norm_bf16(k, N * c.n_kv_heads, c.head_dim, c.head_dim, w.k_norm.data(), c.rms_eps, k);
    } else {
      rms_norm(q, N * c.n_heads, c.head_dim, c.head_dim, w.q_norm.data(), c.rms_eps, q);
      rms_norm(k, N * c.n_kv_heads, c.head_dim, c.head_dim, w.k_norm.data(), c.rms_eps, k);
    }
  }
  {
    std::shared_ptr<const RopeTable> tab = rope_table(T);
    if (bf) {
      apply_rope_bf16(q, N, T, c.n_heads, c.head_dim, QD, *tab);
      apply_rope_bf16(k, N, T, c.n_kv_heads, c.head_dim, KVD, *tab);
    } else {
      apply_rope_batched(q, N, T, c.n_heads, c.head_dim, QD, *tab);
      apply_rope_batched(k, N, T, c.n_kv_heads, c.head_dim, KVD, *tab);
    }
  }
  float* ctx = ws.get(kCtx, n * QD);
  if (bf) attention_bf16(q, k, v, n_seq, T, c.n_heads, c.n_kv_heads, c.head_dim, ctx);
  else attention_batched(q, k, v, n_seq, T, c.n_heads, c.n_kv_heads, c.head_dim, ctx);
  if (hook) hook->on_input_batch(l, LinearKind::kO, ctx, n_seq, N, QD);
  linear(ctx, N, QD, w[LinearKind::kO].w.data(), H, bias_of(LinearKind::kO), xn);
  out(xn, H);
  add_into_hidden(xn);

  // ---- MLP block: hidden += down(silu(gate(x)) * up(x)), x = rms_norm(hidden).
  norm(hidden, N, H, w.post_norm.data(), xn);
  if (hook) hook->on_input_batch(l, LinearKind::kGate, xn, n_seq, N, H);
  float* g = ws.get(kGb, n * I);
  float* u = ws.get(kUb, n * I);
  linear(xn, N, H, w[LinearKind::kGate].w.data(), I, bias_of(LinearKind::kGate), g);
  linear(xn, N, H, w[LinearKind::kUp].w.data(), I, bias_of(LinearKind::kUp), u);
  out(g, I);
  out(u, I);
  if (bf) swiglu_bf16(g, u, N * I);
  else swiglu(g, u, N * I);
  if (hook) hook->on_input_batch(l, LinearKind::kDown, g, n_seq, N, I);
  if (!need_output) return;
  linear(g, N, I, w[LinearKind::kDown].w.data(), H, bias_of(LinearKind::kDown), xn);
  out(xn, H);
  add_into_hidden(xn);
}

void Model::final_norm_logits(const float* hidden, int64_t T, float* logits) const {
  const int64_t H = cfg_.hidden;
  std::vector<float> xn(static_cast<size_t>(T * H));
  if (dtype_ == ComputeDtype::kBF16) rms_norm_bf16(hidden, T, H, H, norm_.data(), cfg_.rms_eps, xn.data());
  else rms_norm(hidden, T, H, H, norm_.data(), cfg_.rms_eps, xn.data());
  linear(xn.data(), T, H, lm_head(), cfg_.vocab, nullptr, logits);
  round_to(dtype_, logits, T * cfg_.vocab);
}

void Model::set_compute_dtype(ComputeDtype d) {
  if (d == dtype_) return;
  if (d == ComputeDtype::kF32)
    throw Error(ErrorKind::kInternal, "Model::set_compute_dtype: cannot go back to f32 after bf16", dir_);
  for (auto* t : {&embed_, &norm_, &lm_head_}) round_to(d, t->data(), static_cast<int64_t>(t->size()));
  dtype_ = d;
}

std::vector<float> Model::forward_hidden(const std::vector<int32_t>& ids,
                                         const LayerWeightsFn& weights_of_layer,
                                         LinearHook* hook) const {
  const int64_t T = static_cast<int64_t>(ids.size());
  std::vector<float> hidden = embed(ids);
  for (int l = 0; l < cfg_.n_layers; ++l) {
    if (weights_of_layer) {
      layer_forward(l, weights_of_layer(l), hidden.data(), T, hook);
    } else {
      LayerWeights w = load_layer(l);
      layer_forward(l, w, hidden.data(), T, hook);
    }
  }
  return hidden;
}

std::vector<float> Model::forward(const std::vector<int32_t>& ids,
                                  const LayerWeightsFn& weights_of_layer, LinearHook* hook) const {
  const int64_t T = static_cast<int64_t>(ids.size());
  std::vector<float> hidden = forward_hidden(ids, weights_of_layer, hook);
  std::vector<float> logits(static_cast<size_t>(T * cfg_.vocab));
  final_norm_logits(hidden.data(), T, logits.data());
  return logits;
}

double Model::nll_sum(const float* hidden, const int32_t* ids, int64_t T) const {
  const int64_t V = cfg_.vocab, H = cfg_.hidden;
  const int64_t n = T - 1;  // predicted positions
  if (n <= 0) return 0.0;
  for (int64_t t = 1; t < T; ++t)
    if (ids[t] < 0 || ids[t] >= V)
      throw Error(ErrorKind::kInput, "token id " + std::to_string(ids[t]) + " at position " +
                                         std::to_string(t) + " is outside [0, vocab_size)",
                  dir_);
  const int64_t kBlock = std::max<int64_t>(1, std::min<int64_t>(256, (int64_t{1} << 24) / V));
  std::vector<double> nll(static_cast<size_t>(n));
  std::vector<float> logits;
  for (int64_t r0 = 0; r0 < n; r0 += kBlock) {
    const int64_t rows = std::min(kBlock, n - r0);
    logits.resize(static_cast<size_t>(rows * V));
    final_norm_logits(hidden + r0 * H, rows, logits.data());
    detail::par_for(static_cast<long>(rows), 20.0 * V, [&](long i) {
      const float* lg = logits.data() + i * V;
      float m = -INFINITY;
      for (int64_t j = 0; j < V; ++j) m = std::max(m, lg[j]);
      double s = 0.0;
      for (int64_t j = 0; j < V; ++j) s += std::exp(static_cast<double>(lg[j]) - m);
      const int32_t target = ids[r0 + i + 1];
      nll[r0 + i] = std::log(s) + m - static_cast<double>(lg[target]);
    });
  }
  double total = 0.0;
  for (double x : nll) total += x;  // fixed order: independent of the thread count
  return total;
}

// ---- Perplexity -----------------------------------------------------------------------------

PplResult perplexity(const Model& model, const std::vector<int32_t>& ids, int seqlen,
                     const LayerWeightsFn& weights_of_layer, LinearHook* hook) {
  if (seqlen < 2)
    throw Error(ErrorKind::kInput, "sequence length must be >= 2, got " + std::to_string(seqlen),
                "perplexity");
  const int64_t windows = static_cast<int64_t>(ids.size()) / seqlen;
  if (windows == 0)
    throw Error(ErrorKind::kInput,
                "need at least one window of " + std::to_string(seqlen) + " tokens, have " +
                    std::to_string(ids.size()),
                "perplexity", "use a longer text or a smaller sequence length");
  LayerWeightsFn fn = weights_of_layer;
  std::vector<LayerWeights> all;
  if (!fn) {
    all.reserve(model.config().n_layers);
    for (int l = 0; l < model.config().n_layers; ++l) all.push_back(model.load_layer(l));
    fn = [&all](int l) -> const LayerWeights& { return all[l]; };
  }
  PplResult r;
  r.windows = windows;
  r.tokens = windows * (seqlen - 1);
  double total = 0.0;
  // Windows go through the layers in batches (one product per Linear for the whole batch).
  const int64_t per_batch = batch_sequences(seqlen);
  const int64_t H = model.config().hidden;
  ForwardScratch scratch;
  for (int64_t w0 = 0; w0 < windows; w0 += per_batch) {
    const int64_t nb = std::min(per_batch, windows - w0);
    const std::vector<int32_t> batch(ids.begin() + w0 * seqlen, ids.begin() + (w0 + nb) * seqlen);
    std::vector<float> hidden = model.embed(batch);
    for (int l = 0; l < model.config().n_layers; ++l)
      model.layer_forward(l, fn(l), hidden.data(), nb, seqlen, hook, &scratch);
    for (int64_t b = 0; b < nb; ++b) {
      const double s = model.nll_sum(hidden.data() + b * seqlen * H, batch.data() + b * seqlen, seqlen);
      r.window_nll_sum.push_back(s);
      total += s;
      spdlog::debug("perplexity window {}/{}: mean nll {:.6f}", w0 + b + 1, windows, s / (seqlen - 1));
    }
  }
  r.mean_nll = total / static_cast<double>(r.tokens);
  r.ppl = std::exp(r.mean_nll);
  return r;
}

}  // namespace fp4q::model
