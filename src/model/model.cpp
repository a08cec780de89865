#include "fp4q/model/model.h"

#include <algorithm>
#include <cmath>
#include <mutex>

#include "fp4q/core/error.h"
#include "fp4q/model/bf16_ops.h"
#include "fp4q/core/log.h"
#include "fp4q/core/parallel.h"
#include "fp4q/linalg/bf16_gemm.h"
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

namespace {

bool has_bias(const ModelConfig& c, LinearKind k) {
  return c.qkv_bias && (k == LinearKind::kQ || k == LinearKind::kK || k == LinearKind::kV);
}

// Shape of the dense slot `k` of layer l; false when the slot is empty there (fused partners,
// the dense MLP of an MoE layer).
bool dense_shape(const ModelConfig& c, int l, LinearKind k, int64_t* out, int64_t* in) {
  const bool moe = c.is_moe_layer(l);
  *out = 0;
  *in = c.hidden;
  switch (k) {
    case LinearKind::kQ: *out = c.fused_qkv ? c.q_dim() + 2 * c.kv_dim() : c.q_dim(); return true;
    case LinearKind::kK:
    case LinearKind::kV: *out = c.kv_dim(); return !c.fused_qkv;
    case LinearKind::kO: *out = c.hidden; *in = c.q_dim(); return true;
    case LinearKind::kGate: *out = c.fused_gate_up ? 2 * c.intermediate : c.intermediate; return !moe;
    case LinearKind::kUp: *out = c.intermediate; return !moe && !c.fused_gate_up;
    case LinearKind::kDown: *out = c.hidden; *in = c.intermediate; return !moe;
  }
  return false;
}

std::string dense_module(const ModelConfig& c, int l, LinearKind k) {
  if (k == LinearKind::kQ && c.fused_qkv) return layer_prefix(l) + "self_attn.qkv_proj";
  if (k == LinearKind::kGate && c.fused_gate_up) return layer_prefix(l) + "mlp.gate_up_proj";
  return linear_path(l, k);
}

}  // namespace

std::string expert_linear_path(const ModelConfig& c, int l, int e, LinearKind kind) {
  const bool mixtral = c.arch == Arch::kMixtral;
  const char* leaf = kind == LinearKind::kGate ? (mixtral ? "w1" : "gate_proj")
                     : kind == LinearKind::kUp ? (mixtral ? "w3" : "up_proj")
                                               : (mixtral ? "w2" : "down_proj");
  return layer_prefix(l) + (mixtral ? "block_sparse_moe.experts." : "mlp.experts.") +
         std::to_string(e) + "." + leaf;
}

std::string router_path(const ModelConfig& c, int l) {
  return layer_prefix(l) + (c.arch == Arch::kMixtral ? "block_sparse_moe.gate" : "mlp.gate");
}

std::vector<LayerLinear> layer_linears(const ModelConfig& c, int l) {
  std::vector<LayerLinear> v;
  for (LinearKind k : kAllKinds) {
    LayerLinear ll;
    if (!dense_shape(c, l, k, &ll.out, &ll.in)) continue;
    ll.module = dense_module(c, l, k);
    ll.kind = k;
    ll.bias = has_bias(c, k);
    v.push_back(ll);
  }
  if (c.is_moe_layer(l))
    for (int e = 0; e < c.n_experts; ++e)
      for (LinearKind k : {LinearKind::kGate, LinearKind::kUp, LinearKind::kDown}) {
        LayerLinear ll;
        ll.module = expert_linear_path(c, l, e, k);
        ll.kind = k;
        ll.expert = e;
        ll.out = k == LinearKind::kDown ? c.hidden : c.moe_intermediate;
        ll.in = k == LinearKind::kDown ? c.moe_intermediate : c.hidden;
        v.push_back(ll);
      }
  return v;
}

std::vector<std::vector<float>*> LayerWeights::all_arrays() {
  std::vector<std::vector<float>*> v;
  for (auto& lw : lin) {
    v.push_back(&lw.w);
    v.push_back(&lw.bias);
  }
  for (auto* n : {&input_norm, &post_norm, &q_norm, &k_norm, &pre_ff_norm, &post_ff_norm}) v.push_back(n);
  v.push_back(&router.w);
  v.push_back(&router.bias);
  for (auto& e : experts)
    for (auto* lw : {&e.gate, &e.up, &e.down}) {
      v.push_back(&lw->w);
      v.push_back(&lw->bias);
    }
  return v;
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
  std::shared_ptr<const RopeTable> table[3];  // kRopeMain, kRopeLong, kRopeSliding
};

Model::Model() : rope_(std::make_unique<RopeCache>()) {}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

namespace {

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
  auto check = [&](const LinearWeights& lw, int64_t out, int64_t in, const std::string& name) {
    if (lw.out != out || lw.in != in || static_cast<int64_t>(lw.w.size()) != out * in)
      fail(name + " has out=" + std::to_string(lw.out) + " in=" + std::to_string(lw.in) + " size=" +
           std::to_string(lw.w.size()) + ", expected " + std::to_string(out) + " x " + std::to_string(in));
    if (!lw.bias.empty() && static_cast<int64_t>(lw.bias.size()) != out)
      fail(name + " bias size " + std::to_string(lw.bias.size()));
  };
  const bool moe = c.is_moe_layer(l);
  if (moe && static_cast<int>(w.experts.size()) != c.n_experts)
    fail(std::to_string(w.experts.size()) + " experts, expected " + std::to_string(c.n_experts));
  for (const LayerLinear& ll : layer_linears(c, l)) check(w.at(ll), ll.out, ll.in, ll.module);
  if (moe) check(w.router, c.n_experts, c.hidden, router_path(c, l));
  if (static_cast<int64_t>(w.input_norm.size()) != c.hidden ||
      static_cast<int64_t>(w.post_norm.size()) != c.hidden)
    fail("norm weights must have hidden_size elements");
  if (c.sandwich_norms && (static_cast<int64_t>(w.pre_ff_norm.size()) != c.hidden ||
                           static_cast<int64_t>(w.post_ff_norm.size()) != c.hidden))
    fail("pre/post_feedforward_layernorm must have hidden_size elements");
  if (c.qk_norm && (static_cast<int>(w.q_norm.size()) != c.head_dim ||
                    static_cast<int>(w.k_norm.size()) != c.head_dim))
    fail("q_norm/k_norm must have head_dim elements");
}

// Clear errors for checkpoint layouts fp4q does not read (checked before the per-tensor checks).
void check_layout(const io::ModelFiles& f, const ModelConfig& c, int l, const std::string& dir) {
  const std::string p = layer_prefix(l);
  for (const char* fused : {"mlp.experts.gate_up_proj", "mlp.experts.down_proj",
                            "block_sparse_moe.experts.gate_up_proj"})
    for (const char* suf : {"", ".weight"})
      if (f.has(p + fused + suf))
        throw Error(ErrorKind::kInput,
                    "tensor \"" + p + fused + suf + "\" holds fused 3-D experts [experts x ...], "
                    "a layout fp4q does not read",
                    dir,
                    "fp4q reads the per-expert 2-D tensors of published checkpoints (e.g. " +
                        expert_linear_path(c, l, 0, LinearKind::kGate) +
                        ".weight), which transformers' save_pretrained also writes; re-save the "
                        "model with transformers >= 5 or use the original checkpoint");
  if (c.arch == Arch::kMixtral && !f.has(router_path(c, l) + ".weight") && f.has(p + "mlp.gate.weight"))
    throw Error(ErrorKind::kInput,
                "tensor \"" + p + "mlp.gate.weight\" uses transformers-5 in-memory Mixtral names; "
                "the checkpoint layout is block_sparse_moe.gate / block_sparse_moe.experts.E.w1|w2|w3",
                dir, "re-save the model with save_pretrained (which writes the checkpoint names)");
  if (c.fused_qkv && f.has(p + "self_attn.q_proj.weight"))
    throw Error(ErrorKind::kInput,
                "tensor \"" + p + "self_attn.q_proj.weight\" is split, but " + c.arch_string +
                    " checkpoints hold one fused self_attn.qkv_proj",
                dir, "use the original Phi-3 checkpoint layout (qkv_proj, gate_up_proj)");
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
    check_layout(f, c, l, dir);
    check_tensor(f, p + "input_layernorm.weight", {c.hidden}, dir);
    check_tensor(f, p + "post_attention_layernorm.weight", {c.hidden}, dir);
    if (c.sandwich_norms) {
      check_tensor(f, p + "pre_feedforward_layernorm.weight", {c.hidden}, dir);
      check_tensor(f, p + "post_feedforward_layernorm.weight", {c.hidden}, dir);
    }
    for (const LayerLinear& ll : layer_linears(c, l)) {
      if (!quantized_linears) check_tensor(f, ll.module + ".weight", {ll.out, ll.in}, dir);
      if (ll.bias)
        check_tensor(f, ll.module + ".bias", {ll.out}, dir);
      else
        check_absent(f, ll.module + ".bias", dir,
                     std::string("config.json (") + c.arch_string + ", attention_bias/mlp_bias) "
                     "implies no bias for this linear");
    }
    if (c.is_moe_layer(l)) {
      // The router stays in 16 bit in every output (vLLM keeps it unquantized), so it is always
      // a plain float tensor.
      check_tensor(f, router_path(c, l) + ".weight", {c.n_experts, c.hidden}, dir);
      check_absent(f, p + "mlp.gate_proj.weight", dir,
                   "config.json makes layer " + std::to_string(l) + " a sparse MoE layer (no dense MLP)");
    } else if (c.is_moe()) {
      check_absent(f, router_path(c, l) + ".weight", dir,
                   "config.json makes layer " + std::to_string(l) +
                       " a dense MLP layer (mlp_only_layers / decoder_sparse_step)");
    }
    if (c.qk_norm) {
      check_tensor(f, p + "self_attn.q_norm.weight", {c.head_dim}, dir);
      check_tensor(f, p + "self_attn.k_norm.weight", {c.head_dim}, dir);
    } else {
      check_absent(f, p + "self_attn.q_norm.weight", dir,
                   std::string("q/k norms are only used by Qwen3, Qwen3-MoE and Gemma-3, config.json says ") +
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
  if (c.scale_embeddings) {
    // Gemma3TextScaledWordEmbedding: embedding * embed_scale, embed_scale = float32(hidden ** 0.5)
    // (a float32 buffer; a bf16 runtime rounds it to bf16, e.g. sqrt(3072) -> 55.5).
    m.embed_scale_ = static_cast<float>(std::sqrt(static_cast<double>(c.hidden)));
  }
  spdlog::debug("model {}: {} layers, hidden {}, heads {}/{} x {}, vocab {}, {}", dir, c.n_layers,
                c.hidden, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab, c.arch_string);
  return m;
}

LayerWeights Model::load_layer(int l) const {
  const io::ModelFiles& f = *files_;
  return load_layer(l, [&f](const LayerLinear& ll) { return f.read_f32(ll.module + ".weight"); });
}

LayerWeights Model::load_layer(int l, const LinearReader& read_linear) const {
  const ModelConfig& c = cfg_;
  if (l < 0 || l >= c.n_layers)
    throw Error(ErrorKind::kInternal, "layer index " + std::to_string(l) + " out of range [0, " +
                                          std::to_string(c.n_layers) + ")",
                dir_);
  const io::ModelFiles& f = *files_;
  const std::string p = layer_prefix(l);
  LayerWeights w;
  if (c.is_moe_layer(l)) {
    w.experts.resize(static_cast<size_t>(c.n_experts));
    w.router.out = c.n_experts;
    w.router.in = c.hidden;
    w.router.w = f.read_f32(router_path(c, l) + ".weight");
  }
  for (const LayerLinear& ll : layer_linears(c, l)) {
    LinearWeights& lw = w.at(ll);
    lw.out = ll.out;
    lw.in = ll.in;
    lw.w = read_linear(ll);
    if (static_cast<int64_t>(lw.w.size()) != ll.out * ll.in)
      throw Error(ErrorKind::kInternal, "weight of " + std::to_string(lw.w.size()) + " values, expected " +
                                            std::to_string(ll.out) + " x " + std::to_string(ll.in),
                  ll.module);
    if (ll.bias) lw.bias = f.read_f32(ll.module + ".bias");
  }
  w.input_norm = f.read_f32(p + "input_layernorm.weight");
  w.post_norm = f.read_f32(p + "post_attention_layernorm.weight");
  if (c.sandwich_norms) {
    w.pre_ff_norm = f.read_f32(p + "pre_feedforward_layernorm.weight");
    w.post_ff_norm = f.read_f32(p + "post_feedforward_layernorm.weight");
  }
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
    if (embed_scale_ != 0.0f)
      for (int64_t j = 0; j < H; ++j) out[t * H + j] *= embed_scale_;
  }
  return out;
}

std::shared_ptr<const RopeTable> Model::rope_variant(int v, int64_t T) const {
  const ModelConfig& c = cfg_;
  std::lock_guard<std::mutex> lock(rope_->mu);
  std::shared_ptr<const RopeTable>& tab = rope_->table[v];
  if (!tab || tab->T < T) {
    const int64_t n = std::max<int64_t>((T + 255) / 256 * 256, std::min<int64_t>(c.max_pos, 4096));
    std::vector<float> inv;
    float scale = 1.0f;
    if (v == kRopeSliding) {
      // Gemma-3 sliding layers: default RoPE with their own base over the full head_dim.
      ModelConfig local = c;
      local.rope_type = RopeType::kDefault;
      local.rope_theta = c.sliding_rope_theta;
      inv = rope_inv_freq(local);
    } else {
      inv = v == kRopeLong ? rope_inv_freq(c, true) : inv_freq_;
      if (c.rope_type == RopeType::kLongRope) scale = static_cast<float>(c.rope_attention_factor);
    }
    tab = std::make_shared<const RopeTable>(make_rope_table(inv, std::max(n, T), scale));
  }
  return tab;
}

std::shared_ptr<const RopeTable> Model::rope_table(int64_t T) const {
  // longrope (transformers' longrope_frequency_update): the long factors for sequences longer
  // than original_max_position_embeddings, the short ones otherwise.
  const bool long_ctx = cfg_.rope_type == RopeType::kLongRope && T > cfg_.rope_original_max_pos;
  return rope_variant(long_ctx ? kRopeLong : kRopeMain, T);
}

std::shared_ptr<const RopeTable> Model::rope_table_for_layer(int l, int64_t T) const {
  if (cfg_.sliding_rope_theta > 0 && l >= 0 && l < cfg_.n_layers && cfg_.layer_sliding[l])
    return rope_variant(kRopeSliding, T);
  return rope_table(T);
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
  check_weights(c, w, l);
  ForwardScratch local;
  ForwardScratch& ws = scratch ? *scratch : local;
  const int64_t N = n_seq * T;  // rows of every activation matrix
  const int64_t H = c.hidden, QD = c.q_dim(), KVD = c.kv_dim(), I = c.intermediate;
  const size_t n = static_cast<size_t>(N);
  const bool bf = dtype_ == ComputeDtype::kBF16;  // bf16 emulation (set_compute_dtype)
  if (bf && (c.norm_plus_one || c.is_moe() || c.fused_qkv || c.rotary_dim() != c.head_dim ||
             c.rope_type == RopeType::kLongRope))
    throw Error(ErrorKind::kUsage,
                std::string("bf16 emulation is not implemented for ") + c.arch_string +
                    " (Gemma (1 + w) norms, MoE routing, fused projections, partial/longrope RoPE)",
                dir_, "evaluate in float32");
  auto add_into_hidden = [&](const float* y) {
    detail::par_for(static_cast<long>(N), static_cast<double>(H), [&](long t) {
      for (int64_t j = 0; j < H; ++j) hidden[t * H + j] += y[t * H + j];
      if (bf)
        for (int64_t j = 0; j < H; ++j) hidden[t * H + j] = round_bf16(hidden[t * H + j]);
    });
  };
  // Gemma-3 RMSNorm multiplies by (1 + w) in float32 (Gemma3RMSNorm); the others by w.
  std::vector<float> plus_one;
  auto norm_w = [&](const std::vector<float>& wn) -> const float* {
    if (!c.norm_plus_one) return wn.data();
    plus_one.resize(wn.size());
    for (size_t i = 0; i < wn.size(); ++i) plus_one[i] = 1.0f + wn[i];
    return plus_one.data();
  };
  auto norm = [&](const float* x, int64_t rows, int64_t cols, const std::vector<float>& wn, float* y) {
    if (bf) rms_norm_bf16(x, rows, cols, cols, wn.data(), c.rms_eps, y);
    else rms_norm(x, rows, cols, cols, norm_w(wn), c.rms_eps, y);
  };
  // A Linear's output as the runtime stores it (float32 accumulation, bias added, then rounded).
  auto out = [&](float* y, int64_t cols) { round_to(dtype_, y, N * cols); };
  // Weight rows [r0, r0 + rows) of a dense slot (fused qkv_proj / gate_up_proj hold several
  // Linears' rows one after another; a product over a row slice is the product of that Linear).
  auto rows_of = [&](LinearKind k, int64_t r0) { return w[k].w.data() + r0 * w[k].in; };
  auto bias_rows = [&](LinearKind k, int64_t r0) -> const float* {
    return w[k].bias.empty() ? nullptr : w[k].bias.data() + r0;
  };
  enum { kXn = 0, kQb, kKb, kVb, kCtx, kGb, kUb };

  // ---- attention block: hidden += o_proj(attn(rope(q), rope(k), v)) of rms_norm(hidden).
  float* xn = ws.get(kXn, n * H);
  norm(hidden, N, H, w.input_norm, xn);
  round_linear_input(xn, N, H);
  if (hook) hook->on_input_batch(l, LinearKind::kQ, xn, n_seq, N, H);
  float* q = ws.get(kQb, n * QD);
  float* k = ws.get(kKb, n * KVD);
  float* v = ws.get(kVb, n * KVD);
  if (c.fused_qkv) {  // Phi-3: qkv_proj rows are q (QD), k (KVD), v (KVD)
    layer_linear(xn, N, H, rows_of(LinearKind::kQ, 0), QD, bias_rows(LinearKind::kQ, 0), q);
    layer_linear(xn, N, H, rows_of(LinearKind::kQ, QD), KVD, bias_rows(LinearKind::kQ, QD), k);
    layer_linear(xn, N, H, rows_of(LinearKind::kQ, QD + KVD), KVD, bias_rows(LinearKind::kQ, QD + KVD), v);
  } else {
    layer_linear(xn, N, H, rows_of(LinearKind::kQ, 0), QD, bias_rows(LinearKind::kQ, 0), q);
    layer_linear(xn, N, H, rows_of(LinearKind::kK, 0), KVD, bias_rows(LinearKind::kK, 0), k);
    layer_linear(xn, N, H, rows_of(LinearKind::kV, 0), KVD, bias_rows(LinearKind::kV, 0), v);
  }
  out(q, QD);
  out(k, KVD);
  out(v, KVD);
  if (c.qk_norm) {  // Qwen3 / Gemma-3: RMSNorm over each head's head_dim values ([N*heads x head_dim] view)
    if (bf) {
      rms_norm_bf16(q, N * c.n_heads, c.head_dim, c.head_dim, w.q_norm.data(), c.rms_eps, q);
      rms_norm_bf16(k, N * c.n_kv_heads, c.head_dim, c.head_dim, w.k_norm.data(), c.rms_eps, k);
    } else {
      rms_norm(q, N * c.n_heads, c.head_dim, c.head_dim, norm_w(w.q_norm), c.rms_eps, q);
      rms_norm(k, N * c.n_kv_heads, c.head_dim, c.head_dim, norm_w(w.k_norm), c.rms_eps, k);
    }
  }
  {
    std::shared_ptr<const RopeTable> tab = rope_table_for_layer(l, T);
    if (bf) {
      apply_rope_bf16(q, N, T, c.n_heads, c.head_dim, QD, *tab);
      apply_rope_bf16(k, N, T, c.n_kv_heads, c.head_dim, KVD, *tab);
    } else {
      apply_rope_batched(q, N, T, c.n_heads, c.head_dim, QD, *tab);
      apply_rope_batched(k, N, T, c.n_kv_heads, c.head_dim, KVD, *tab);
    }
  }
  float* ctx = ws.get(kCtx, n * QD);
  AttentionOptions ao;
  ao.scale = c.attention_scale();
  ao.softcap = c.attn_softcap;
  ao.window = c.layer_sliding_window[l];
  if (bf) {
    if (ao.window > 0 && ao.window < T)
      throw Error(ErrorKind::kUsage, "bf16 emulation of sliding-window attention is not implemented",
                  dir_, "evaluate in float32 or with --seqlen <= " + std::to_string(ao.window));
    attention_bf16(q, k, v, n_seq, T, c.n_heads, c.n_kv_heads, c.head_dim, ctx);
  } else {
    attention_batched(q, k, v, n_seq, T, c.n_heads, c.n_kv_heads, c.head_dim, ctx, ao);
  }
  round_linear_input(ctx, N, QD);
  if (hook) hook->on_input_batch(l, LinearKind::kO, ctx, n_seq, N, QD);
  layer_linear(ctx, N, QD, w[LinearKind::kO].w.data(), H, bias_rows(LinearKind::kO, 0), xn);
  out(xn, H);
  if (c.sandwich_norms) norm(xn, N, H, w.post_norm, xn);  // Gemma-3: norm of the attention output
  add_into_hidden(xn);

  // ---- MLP block: hidden += down(act(gate(x)) * up(x)), x = rms_norm(hidden); MoE layers: the
  // sparse expert block (model/moe.h) on x.
  norm(hidden, N, H, c.sandwich_norms ? w.pre_ff_norm : w.post_norm, xn);
  if (c.is_moe_layer(l)) {
    float* y = moe_block(l, w, xn, n_seq, N, hook, ws, need_output);
    if (!need_output) return;
    add_into_hidden(y);
    return;
  }
  round_linear_input(xn, N, H);
  if (hook) hook->on_input_batch(l, LinearKind::kGate, xn, n_seq, N, H);
  float* g = ws.get(kGb, n * I);
  float* u = ws.get(kUb, n * I);
  if (c.fused_gate_up) {  // Phi-3: gate_up_proj rows are gate (I), then up (I)
    layer_linear(xn, N, H, rows_of(LinearKind::kGate, 0), I, bias_rows(LinearKind::kGate, 0), g);
    layer_linear(xn, N, H, rows_of(LinearKind::kGate, I), I, bias_rows(LinearKind::kGate, I), u);
  } else {
    layer_linear(xn, N, H, rows_of(LinearKind::kGate, 0), I, bias_rows(LinearKind::kGate, 0), g);
    layer_linear(xn, N, H, rows_of(LinearKind::kUp, 0), I, bias_rows(LinearKind::kUp, 0), u);
  }
  out(g, I);
  out(u, I);
  if (bf) swiglu_bf16(g, u, N * I);
  else glu(g, u, N * I, c.act);
  round_linear_input(g, N, I);
  if (hook) hook->on_input_batch(l, LinearKind::kDown, g, n_seq, N, I);
  if (!need_output) return;
  layer_linear(g, N, I, w[LinearKind::kDown].w.data(), H, bias_rows(LinearKind::kDown, 0), xn);
  out(xn, H);
  if (c.sandwich_norms) norm(xn, N, H, w.post_ff_norm, xn);  // Gemma-3 post_feedforward_layernorm
  add_into_hidden(xn);
}

float* Model::moe_block(int l, const LayerWeights& w, const float* xn, int64_t n_seq, int64_t N,
                        LinearHook* hook, ForwardScratch& ws, bool need_output) const {
  const ModelConfig& c = cfg_;
  const int E = c.n_experts, K = c.n_experts_per_tok;
  const int64_t H = c.hidden, I = c.moe_intermediate;
  const size_t n = static_cast<size_t>(N);
  enum { kOut = 5, kLogits = 7, kXe, kGe, kUe, kYe };  // kOut reuses the dense gate slot
  // Router (float32, never quantized): logits [N x E], then softmax / top-k (moe.h).
  float* logits = ws.get(kLogits, n * E);
  linear(xn, N, H, w.router.w.data(), E, w.router.bias.empty() ? nullptr : w.router.bias.data(), logits);
  const MoeRouting r = route_topk(logits, N, E, K, c.norm_topk_prob);
  if (hook) hook->on_routing(l, r);
  const bool all = hook && hook->experts_see_all_tokens(l);
  float* out = nullptr;
  if (need_output) {
    out = ws.get(kOut, n * H);
    std::fill(out, out + n * H, 0.0f);  // torch.zeros_like(hidden_states)
  }
  float* xe = ws.get(kXe, n * H);
  float* ge = ws.get(kGe, n * I);
  float* ue = ws.get(kUe, n * I);
  float* ye = ws.get(kYe, n * H);
  auto gather = [&](const float* src, int64_t cols, const int64_t* rows, int64_t m, float* dst) {
    detail::par_for(static_cast<long>(m), static_cast<double>(cols), [&](long i) {
      std::copy(src + rows[i] * cols, src + (rows[i] + 1) * cols, dst + i * cols);
    });
  };
  for (int e = 0; e < E; ++e) {  // ascending expert id: each token's sum is in that order
    const int64_t ne = r.count(e);
    if (ne == 0 && !all) continue;
    const int64_t* rows = r.row_ids.data() + r.offsets[e];
    const float* rw = r.row_weight.data() + r.offsets[e];
    const ExpertWeights& ew = w.experts[e];
    // The expert's activation act(x) = glu(x·gate, x·up) of `m` rows of xn (`sel`: which rows; all
    // N when null) into ge, with the hooks' view of its gate and down inputs when `hooks`.
    auto activation = [&](const int64_t* sel, int64_t m, bool hooks) {
      if (sel) gather(xn, H, sel, m, xe);
      else std::copy(xn, xn + n * H, xe);
      round_linear_input(xe, m, H);  // the router above read xn in float32
      if (hooks) hook->on_expert_input(l, e, LinearKind::kGate, xe, n_seq, m, H);
      layer_linear(xe, m, H, ew.gate.w.data(), I, nullptr, ge);
      layer_linear(xe, m, H, ew.up.w.data(), I, nullptr, ue);
      glu(ge, ue, m * I, c.act);
      round_linear_input(ge, m, I);
      if (hooks) hook->on_expert_input(l, e, LinearKind::kDown, ge, n_seq, m, I);
    };
    activation(all ? nullptr : rows, all ? N : ne, hook != nullptr);  // all-tokens mode: every row
    if (!need_output || ne == 0) continue;
    // Only the routed rows go on to down_proj. In all-tokens mode they are computed again exactly as
    // in routed mode: with some BLAS kernels (OpenBLAS's Haswell SGEMM) a GEMM row's result depends
    // on the number of rows, so picking the routed rows out of the all-token products would change
    // the layer's output in its last bits. The extra gate/up product covers ne of the N rows.
    if (all) activation(rows, ne, false);
    layer_linear(ge, ne, I, ew.down.w.data(), H, nullptr, ye);
    // out[row] += y * w (float32 product, then float32 add; rows of one expert are distinct).
    detail::par_for(static_cast<long>(ne), 2.0 * H, [&](long i) {
      float* o = out + rows[i] * H;
      const float* y = ye + i * H;
      const float wt = rw[i];
      for (int64_t j = 0; j < H; ++j) o[j] += y[j] * wt;
    });
  }
  return out;
}

void Model::final_norm_logits(const float* hidden, int64_t T, float* logits) const {
  const int64_t H = cfg_.hidden;
  std::vector<float> xn(static_cast<size_t>(T * H));
  if (dtype_ == ComputeDtype::kBF16) {
    rms_norm_bf16(hidden, T, H, H, norm_.data(), cfg_.rms_eps, xn.data());
  } else if (cfg_.norm_plus_one) {
    std::vector<float> w1(norm_.size());
    for (size_t i = 0; i < w1.size(); ++i) w1[i] = 1.0f + norm_[i];
    rms_norm(hidden, T, H, H, w1.data(), cfg_.rms_eps, xn.data());
  } else {
    rms_norm(hidden, T, H, H, norm_.data(), cfg_.rms_eps, xn.data());
  }
  linear(xn.data(), T, H, lm_head(), cfg_.vocab, nullptr, logits);
  round_to(dtype_, logits, T * cfg_.vocab);
  if (cfg_.final_softcap > 0) softcap(logits, T * cfg_.vocab, cfg_.final_softcap);
}

void Model::set_linear_compute(ComputeDtype d) {
  if (d == ComputeDtype::kBF16) linalg::require_bf16_gemm("--compute bf16");
  linear_dtype_ = d;
}

void Model::layer_linear(const float* x, int64_t rows, int64_t in, const float* W, int64_t out,
                         const float* bias, float* y) const {
  if (linear_dtype_ == ComputeDtype::kBF16) linear_bf16(x, rows, in, W, out, bias, y);
  else linear(x, rows, in, W, out, bias, y);
}

void Model::round_linear_input(float* x, int64_t rows, int64_t cols) const {
  if (linear_dtype_ != ComputeDtype::kBF16) return;
  detail::par_for(static_cast<long>(rows), static_cast<double>(cols),
                  [&](long r) { round_to(ComputeDtype::kBF16, x + r * cols, cols); });
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
