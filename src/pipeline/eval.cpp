#include "fp4q/pipeline/eval.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <tuple>
#include <utility>

#include <spdlog/spdlog.h>

#include "fp4q/core/compute_dtype.h"
#include "fp4q/core/error.h"
#include "fp4q/core/parallel.h"
#include "fp4q/exporter/exporter.h"
#include "fp4q/exporter/importer.h"
#include "fp4q/exporter/layout.h"
#include "fp4q/io/writer.h"
#include "fp4q/model/tokenizer.h"
#include "fp4q/transform/hadamard.h"
#include "internal.h"

namespace fp4q::pipeline {

using namespace detail;

namespace {

bool is_quantized_dir(const std::string& dir) {
  std::ifstream f(dir + "/config.json");
  if (!f) return false;
  const auto j = nlohmann::json::parse(f, nullptr, /*allow_exceptions=*/false);
  return j.is_object() && j.contains("quantization_config");
}

// Online input transforms per layer and input group, as the quantized model prescribes.
struct PerLayerHook : model::LinearHook {
  std::map<std::pair<int, int>, InputTransform> t;  // (layer, group) -> transform
  void on_input(int layer, model::LinearKind kind, float* x, int64_t tokens, int64_t in) override {
    auto it = t.find({layer, group_of(kind)});
    if (it != t.end()) apply_input_transform(it->second, x, tokens, in);
  }
};

// Rounds every float of a layer's weights to the compute dtype (a bf16 runtime holds its weights,
// biases and norm weights in bf16; no-op for f32).
void round_layer(model::LayerWeights& w, ComputeDtype d) {
  if (d == ComputeDtype::kF32) return;
  for (auto* v : w.all_arrays()) round_to(d, v->data(), static_cast<int64_t>(v->size()));
}

// Layer weights of an fp4q output: quantized Linears dequantised in the rotated domain, everything
// else read as stored, then rounded to the compute dtype. Each layer is decoded once, on first
// use, and kept (perplexity asks for every layer in every window); decoding a layer also
// registers the online input transform of its quantized Linears in `hook`.
class QuantizedWeights {
 public:
  QuantizedWeights(const model::Model& m, const exporter::ImportedModel& im, const InputTransform& proto,
                   PerLayerHook& hook)
      : m_(m), im_(im), proto_(proto), hook_(hook), layers_(static_cast<size_t>(m.config().n_layers)) {}
  const model::LayerWeights& layer(int l) {
    if (!layers_[l]) layers_[l] = std::make_unique<model::LayerWeights>(load(l));
    return *layers_[l];
  }

 private:
  model::LayerWeights load(int l) const {
    const auto& files = im_.files();
    const auto& info = im_.info();
    // Every checkpoint Linear of the layer (dense, fused, MoE experts: model::layer_linears);
    // norms, biases and MoE routers come from the files as stored.
    model::LayerWeights w = m_.load_layer(l, [&](const model::LayerLinear& ll) {
      const std::string& mod = ll.module;
      if (!im_.is_quantized(mod)) return files.read_f32(mod + ".weight");
      const auto ql = im_.load(mod);
      if (ql.q.rows != ll.out || ql.q.cols != ll.in)
        throw Error(ErrorKind::kInput,
                    "quantized shape [" + std::to_string(ql.q.rows) + ", " + std::to_string(ql.q.cols) +
                        "] differs from config.json's [" + std::to_string(ll.out) + ", " + std::to_string(ll.in) + "]",
                    im_.dir() + ": " + mod);
      std::vector<float> deq(static_cast<size_t>(ll.out * ll.in));
      format::dequantize(ql.q, deq.data());
      if (proto_.quantize && format::spec(info.format).has_global_scale && !(ql.input_global_scale > 0))
        throw Error(ErrorKind::kInput, "W4A4 evaluation needs input_global_scale", im_.dir() + ": " + mod,
                    "quantize with --activations fp4, or evaluate with --activations none");
      // One transform per (layer, input group): MoE experts of a layer share theirs (one
      // rotation, 0, and one activation scale per layer), so the hook's per-kind lookup fits.
      InputTransform t = proto_;
      t.hadamard = ql.hadamard;
      t.format = info.format;
      t.global_scale = ql.input_global_scale > 0 ? ql.input_global_scale : 1.0f;
      hook_.t[{l, group_of(ll.kind)}] = t;
      return deq;
    });
    round_layer(w, proto_.dtype);
    return w;
  }
  const model::Model& m_;
  const exporter::ImportedModel& im_;
  const InputTransform proto_;  // quantize / runtime / dtype shared by every quantized Linear
  PerLayerHook& hook_;
  std::vector<std::unique_ptr<model::LayerWeights>> layers_;
};

// Layers of an original model rounded to the compute dtype, converted once and kept.
class RoundedWeights {
 public:
  RoundedWeights(const model::Model& m, ComputeDtype d) : m_(m), d_(d), layers_(static_cast<size_t>(m.config().n_layers)) {}
  const model::LayerWeights& layer(int l) {
    if (!layers_[l]) {
      layers_[l] = std::make_unique<model::LayerWeights>(m_.load_layer(l));
      round_layer(*layers_[l], d_);
    }
    return *layers_[l];
  }

 private:
  const model::Model& m_;
  const ComputeDtype d_;
  std::vector<std::unique_ptr<model::LayerWeights>> layers_;
};

bool has_linear_bias(const model::Model& m, const exporter::ImportedModel& im) {
  for (int l = 0; l < m.config().n_layers; ++l)
    for (const auto& ll : model::layer_linears(m.config(), l))
      if (im.is_quantized(ll.module) && im.files().has(ll.module + ".bias")) return true;
  return false;
}

// A model as `fp4q eval` runs it: an original model (optionally rounded to the compute dtype, or
// with fake-quantised activations) or an fp4q output (dequantised in the rotated domain, inputs
// transformed online). Holds everything the layer callback and the hook refer to, so it is
// neither copied nor moved.
class EvalModel {
 public:
  EvalModel(const std::string& dir, const EvalOptions& opt)
      : quantized_(is_quantized_dir(dir)), model_(model::Model::open(dir, quantized_)) {
    model_.set_compute_dtype(opt.dtype);
    const auto& cfg = model_.config();
    InputTransform proto;
    proto.dtype = opt.dtype;
    if (quantized_) {
      im_ = std::make_unique<exporter::ImportedModel>(exporter::ImportedModel::open(dir));
      const auto& info = im_->info();
      proto.quantize = opt.activations >= 0 ? opt.activations == static_cast<int>(exporter::Activations::kFp4)
                                            : info.activations == exporter::Activations::kFp4;
      proto.runtime = opt.runtime >= 0 ? static_cast<ActRuntime>(opt.runtime)
                      : im_->kind() == exporter::ExportKind::kFpQuantReal ? ActRuntime::kFpQuant
                                                                          : ActRuntime::kCompressedTensors;
      if (proto.runtime == ActRuntime::kFpQuant && proto.quantize && has_linear_bias(model_, *im_))
        spdlog::warn("{}: fp_quant 0.3.2's pseudo-quantization path adds the bias of a quantized Linear twice "
                     "(PseudoQuant4x16NoMasterFn); fp4q evaluates it once", dir);
      qw_ = std::make_unique<QuantizedWeights>(model_, *im_, proto, hook_);
      use_hook_ = true;
      spdlog::info("{}: {} {} model, rotation {}, activations {}, runtime {}, {}", dir,
                   format::spec(info.format).name, info.method.empty() ? "quantized" : info.method, info.hadamard,
                   proto.quantize ? "fp4" : "16-bit", act_runtime_name(proto.runtime), compute_dtype_name(opt.dtype));
    } else {
      if (opt.dtype != ComputeDtype::kF32) rw_ = std::make_unique<RoundedWeights>(model_, opt.dtype);
      if (opt.activations == static_cast<int>(exporter::Activations::kFp4)) {
        // Original weights with rotated, FP4-quantised activations (dynamic NVFP4 global scale is
        // not defined without calibration: nvfp4 uses per-tensor 1.0 here, i.e. E4M3 scales alone).
        proto.format = opt.format ? static_cast<format::FormatId>(opt.format) : format::FormatId::kNVFP4;
        proto.hadamard = opt.hadamard >= 0 ? opt.hadamard : format::spec(proto.format).default_hadamard;
        proto.quantize = true;
        proto.runtime = opt.runtime >= 0 ? static_cast<ActRuntime>(opt.runtime) : ActRuntime::kCompressedTensors;
        for (int l = 0; l < cfg.n_layers; ++l)
          for (int g = 0; g < kNumInputGroups; ++g) {
            hook_.t[{l, g}] = proto;
            if (cfg.is_moe_layer(l) && g >= 2) hook_.t[{l, g}].hadamard = 0;  // experts: never rotated
          }
        use_hook_ = true;
      }
    }
    if (qw_) fn_ = [this](int l) -> const model::LayerWeights& { return qw_->layer(l); };
    if (rw_) fn_ = [this](int l) -> const model::LayerWeights& { return rw_->layer(l); };
  }
  EvalModel(const EvalModel&) = delete;
  EvalModel& operator=(const EvalModel&) = delete;

  const model::Model& model() const { return model_; }
  const model::LayerWeightsFn& fn() const { return fn_; }
  model::LinearHook* hook() { return use_hook_ ? &hook_ : nullptr; }

  // Final hidden states of nb windows of T tokens stored back to back in `batch` [nb*T x hidden].
  // An f32 original model keeps its layers from the first call on (as model::perplexity does).
  std::vector<float> hidden(const std::vector<int32_t>& batch, int64_t nb, int64_t T, model::ForwardScratch& ws) {
    if (!fn_) {
      rw_ = std::make_unique<RoundedWeights>(model_, ComputeDtype::kF32);
      fn_ = [this](int l) -> const model::LayerWeights& { return rw_->layer(l); };
    }
    std::vector<float> h = model_.embed(batch);
    for (int l = 0; l < model_.config().n_layers; ++l) model_.layer_forward(l, fn_(l), h.data(), nb, T, hook(), &ws);
    return h;
  }

 private:
  bool quantized_;
  model::Model model_;
  std::unique_ptr<exporter::ImportedModel> im_;
  PerLayerHook hook_;
  std::unique_ptr<QuantizedWeights> qw_;
  std::unique_ptr<RoundedWeights> rw_;
  bool use_hook_ = false;
  model::LayerWeightsFn fn_;
};

// Value at quantile q of v (sorted in place): the element at rank floor(q * (n - 1)).
double quantile(std::vector<double>& v, double q) {
  if (v.empty()) return 0.0;
  const size_t k = static_cast<size_t>(std::floor(q * static_cast<double>(v.size() - 1)));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

// Mean and standard error of the mean (sample standard deviation / sqrt(n)) of v, in double.
std::pair<double, double> mean_se(const std::vector<double>& v) {
  const double n = static_cast<double>(v.size());
  if (v.empty()) return {0.0, 0.0};
  double s = 0.0;
  for (double x : v) s += x;
  const double m = s / n;
  double ss = 0.0;
  for (double x : v) ss += (x - m) * (x - m);
  return {m, v.size() > 1 ? std::sqrt(ss / (n - 1) / n) : 0.0};
}

// Perplexity of `q` and, for every scored token, KL(P_ref || P_q), top-1 agreement and the NLL
// difference against `ref`, on the same windows. Window batches, logit row blocks and the NLL
// arithmetic are those of model::perplexity / Model::nll_sum, so the perplexity of `q` is
// bit-identical to a run without a reference. Memory: the final hidden states of one window batch
// per model and one row block of logits per model; per-token results are 8-byte values.
void score_against_reference(EvalModel& q, EvalModel& ref, const std::vector<int32_t>& ids, int64_t seqlen,
                             EvalResult& e, const std::string& dump_tokens, double temperature) {
  const int64_t V = q.model().config().vocab;
  const int64_t H = q.model().config().hidden, Hr = ref.model().config().hidden;
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= V)
      throw Error(ErrorKind::kInput, "token id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                                         " is outside [0, vocab_size)",
                  q.model().dir());
  const int64_t windows = static_cast<int64_t>(ids.size()) / seqlen;
  const int64_t n = seqlen - 1;  // scored positions per window
  const int64_t kBlock = std::max<int64_t>(1, std::min<int64_t>(256, (int64_t{1} << 24) / V));
  const int64_t per_batch = model::batch_sequences(seqlen);
  std::vector<double> kl(static_cast<size_t>(windows * n)), dnll(kl.size()), all_q, all_r, ent_q, ent_r;
  const bool dump = !dump_tokens.empty();
  if (dump) all_q.resize(kl.size()), all_r.resize(kl.size()), ent_q.resize(kl.size()), ent_r.resize(kl.size());
  std::vector<double> nll_q(static_cast<size_t>(n)), nll_r(static_cast<size_t>(n));
  std::vector<unsigned char> agree(kl.size());
  std::vector<float> lq, lr;
  model::ForwardScratch ws_q, ws_r;
  double total_q = 0.0, total_r = 0.0;
  for (int64_t w0 = 0; w0 < windows; w0 += per_batch) {
    const int64_t nb = std::min(per_batch, windows - w0);
    const std::vector<int32_t> batch(ids.begin() + w0 * seqlen, ids.begin() + (w0 + nb) * seqlen);
    const std::vector<float> hq = q.hidden(batch, nb, seqlen, ws_q);
    const std::vector<float> hr = ref.hidden(batch, nb, seqlen, ws_r);
    for (int64_t b = 0; b < nb; ++b) {
      const int32_t* wid = batch.data() + b * seqlen;
      const int64_t tok0 = (w0 + b) * n;  // index of this window's first scored token
      for (int64_t r0 = 0; r0 < n; r0 += kBlock) {
        const int64_t rows = std::min(kBlock, n - r0);
        lq.resize(static_cast<size_t>(rows * V));
        lr.resize(static_cast<size_t>(rows * V));
        q.model().final_norm_logits(hq.data() + (b * seqlen + r0) * H, rows, lq.data());
        ref.model().final_norm_logits(hr.data() + (b * seqlen + r0) * Hr, rows, lr.data());
        if (temperature != 1.0) {  // logits / T, both models (in float, as a runtime would)
          const float inv = static_cast<float>(1.0 / temperature);
          for (auto& v : lq) v *= inv;
          for (auto& v : lr) v *= inv;
        }
        parallel_for(static_cast<long>(rows), [&](long i) {
          const float* a = lq.data() + i * V;  // quantized
          const float* c = lr.data() + i * V;  // reference
          float ma = -INFINITY, mc = -INFINITY;
          int64_t ka = 0, kc = 0;
          for (int64_t j = 0; j < V; ++j) {
            if (a[j] > ma) ma = a[j], ka = j;
            if (c[j] > mc) mc = c[j], kc = j;
          }
          double sa = 0.0, sc = 0.0;
          for (int64_t j = 0; j < V; ++j) {
            sa += std::exp(static_cast<double>(a[j]) - ma);
            sc += std::exp(static_cast<double>(c[j]) - mc);
          }
          const double lza = std::log(sa) + ma, lzc = std::log(sc) + mc;  // log partition functions
          // KL(P_ref || P_q) = sum_j p_ref(j) (log p_ref(j) - log p_q(j)), all in double; identical
          // logits give exactly 0. With a dump, the same pass also sums the entropies
          // -sum_j p(j) log p(j) of both distributions (the dump's ent, ref_ent).
          double d = 0.0, hq = 0.0, hr = 0.0;
          for (int64_t j = 0; j < V; ++j) {
            const double lpc = static_cast<double>(c[j]) - lzc, lpa = static_cast<double>(a[j]) - lza;
            const double pc = std::exp(lpc);
            d += pc * (lpc - lpa);
            if (dump) {
              hq -= std::exp(lpa) * lpa;
              hr -= pc * lpc;
            }
          }
          const int32_t target = wid[r0 + i + 1];
          // Model::nll_sum's expression, so the perplexity equals a run without a reference.
          nll_q[static_cast<size_t>(r0 + i)] = std::log(sa) + ma - static_cast<double>(a[target]);
          nll_r[static_cast<size_t>(r0 + i)] = std::log(sc) + mc - static_cast<double>(c[target]);
          const size_t t = static_cast<size_t>(tok0 + r0 + i);
          kl[t] = d;
          if (dump) ent_q[t] = hq, ent_r[t] = hr;
          agree[t] = ka == kc;
        });
      }
      double sq = 0.0, sr = 0.0;
      for (int64_t t = 0; t < n; ++t) {  // fixed order, as nll_sum
        sq += nll_q[static_cast<size_t>(t)];
        sr += nll_r[static_cast<size_t>(t)];
        dnll[static_cast<size_t>(tok0 + t)] = nll_q[static_cast<size_t>(t)] - nll_r[static_cast<size_t>(t)];
        if (dump) {
          all_q[static_cast<size_t>(tok0 + t)] = nll_q[static_cast<size_t>(t)];
          all_r[static_cast<size_t>(tok0 + t)] = nll_r[static_cast<size_t>(t)];
        }
      }
      total_q += sq;
      total_r += sr;
      spdlog::debug("kl window {}/{}: mean nll {:.6f}, reference {:.6f}", w0 + b + 1, windows, sq / n, sr / n);
    }
  }
  e.windows = windows;
  e.tokens = windows * n;
  e.mean_nll = total_q / static_cast<double>(e.tokens);
  e.ppl = std::exp(e.mean_nll);
  e.kl.ref_mean_nll = total_r / static_cast<double>(e.tokens);
  e.kl.ref_ppl = std::exp(e.kl.ref_mean_nll);
  // (before the quantiles below reorder kl)
  if (dump) {
    std::string out = "window\tnll\tref_nll\tkl\tent\tref_ent\n";
    out.reserve(out.size() + kl.size() * 96);
    char line[192];
    for (size_t t = 0; t < kl.size(); ++t) {
      const int len = std::snprintf(line, sizeof line, "%lld\t%.17g\t%.17g\t%.17g\t%.17g\t%.17g\n",
                                    static_cast<long long>(static_cast<int64_t>(t) / n), all_q[t], all_r[t], kl[t],
                                    ent_q[t], ent_r[t]);
      out.append(line, static_cast<size_t>(len));
    }
    io::write_file_atomic(dump_tokens, out);
    spdlog::info("wrote {} per-token scores to {}", kl.size(), dump_tokens);
  }
  std::tie(e.kl.kl_mean, e.kl.kl_se) = mean_se(kl);
  std::tie(e.kl.dnll_mean, e.kl.dnll_se) = mean_se(dnll);
  int64_t same = 0;
  for (unsigned char x : agree) same += x;
  const double p = static_cast<double>(same) / static_cast<double>(e.tokens);
  e.kl.top1 = p;
  e.kl.top1_se = std::sqrt(p * (1 - p) / static_cast<double>(e.tokens));
  e.kl.kl_median = quantile(kl, 0.5);
  e.kl.kl_p90 = quantile(kl, 0.90);
  e.kl.kl_p99 = quantile(kl, 0.99);
  e.kl.kl_max = *std::max_element(kl.begin(), kl.end());
  e.kl.computed = true;
}

}  // namespace

EvalResult run_eval(const EvalOptions& opt) {
  const auto t0 = Clock::now();
  // Checked before any model is loaded.
  if (!(opt.temperature > 0) || !std::isfinite(opt.temperature))
    throw Error(ErrorKind::kUsage, "temperature must be a positive number, got " + std::to_string(opt.temperature),
                "--temperature");
  if (opt.temperature != 1.0 && opt.kl_reference.empty())
    throw Error(ErrorKind::kUsage, "--temperature needs --kl-reference", "--temperature");
  EvalModel em(opt.dir, opt);
  const auto& cfg = em.model().config();

  if (!opt.dump_logits.empty()) {
    if (opt.logits_ids.empty())
      throw Error(ErrorKind::kUsage, "--dump-logits needs --logits-ids", "--dump-logits");
    const auto ids = model::read_token_ids(opt.logits_ids);
    const auto logits = em.model().forward(ids, em.fn(), em.hook());
    std::string bytes(reinterpret_cast<const char*>(logits.data()), logits.size() * sizeof(float));
    io::write_file_atomic(opt.dump_logits, bytes);
    spdlog::info("wrote logits [{} x {}] to {}", ids.size(), cfg.vocab, opt.dump_logits);
    if (opt.text_path.empty() && opt.ids_path.empty()) return {};
  }

  // The reference model (--kl-reference): evaluated as stored (its own quantization_config, if
  // any; the activation/runtime/format options apply to the evaluated model only) in the same
  // compute dtype, on the same windows.
  std::unique_ptr<EvalModel> ref;
  if (!opt.kl_reference.empty()) {
    EvalOptions ro;
    ro.dtype = opt.dtype;
    ref = std::make_unique<EvalModel>(opt.kl_reference, ro);
    const auto& rc = ref->model().config();
    if (rc.vocab != cfg.vocab)
      throw Error(ErrorKind::kInput,
                  "vocabularies differ: " + opt.dir + " has " + std::to_string(cfg.vocab) + " tokens, the reference " +
                      std::to_string(rc.vocab),
                  opt.kl_reference, "KL divergence needs two models of one tokenizer");
  }

  int32_t bos = -1;
  auto ids = token_stream(opt.dir, opt.text_path, opt.ids_path, &bos);
  if (ref && opt.ids_path.empty()) {
    // --text: both tokenizers must read the text alike (same vocabulary size is not enough).
    int32_t rbos = -1;
    const auto rids = token_stream(opt.kl_reference, opt.text_path, "", &rbos);
    if (rids != ids || rbos != bos)
      throw Error(ErrorKind::kInput, "tokenizers differ: the reference tokenizes the text differently",
                  opt.kl_reference, "KL divergence needs two models of one tokenizer");
  }
  if (bos >= 0) ids.insert(ids.begin(), bos);  // one BOS at the very start (WikiText-2 style)
  int64_t seqlen = opt.seqlen;
  int64_t max_pos = cfg.max_pos;
  if (ref && ref->model().config().max_pos > 0 && (max_pos <= 0 || ref->model().config().max_pos < max_pos))
    max_pos = ref->model().config().max_pos;
  if (max_pos > 0 && seqlen > max_pos) {
    spdlog::info("eval: --seqlen {} clipped to max_position_embeddings {}", seqlen, max_pos);
    seqlen = max_pos;
  }
  if (opt.max_windows > 0 && static_cast<int64_t>(ids.size()) > opt.max_windows * seqlen)
    ids.resize(static_cast<size_t>(opt.max_windows * seqlen));
  if (static_cast<int64_t>(ids.size()) < seqlen)
    throw Error(ErrorKind::kInput, "text has " + std::to_string(ids.size()) + " tokens, fewer than one window of " +
                std::to_string(seqlen), opt.ids_path.empty() ? opt.text_path : opt.ids_path, "lower --seqlen");
  EvalResult e;
  if (ref) {
    if (seqlen < 2)
      throw Error(ErrorKind::kInput, "sequence length must be >= 2, got " + std::to_string(seqlen), "--seqlen");
    score_against_reference(em, *ref, ids, seqlen, e, opt.dump_tokens, opt.temperature);
    spdlog::info("{}: {} windows x {} tokens, mean NLL {:.6f}, perplexity {:.4f}; reference {} perplexity {:.4f} "
                 "({:.1f} s{})", opt.dir, e.windows, seqlen, e.mean_nll, e.ppl, opt.kl_reference, e.kl.ref_ppl, since(t0),
                 opt.temperature != 1.0 ? fmt::format("; logits / temperature {}", opt.temperature) : std::string());
    spdlog::info("KL(reference || model) per token: mean {:.6g} ± {:.2g} nats, median {:.4g}, 90% {:.4g}, "
                 "99% {:.4g}, max {:.4g}; top-1 agreement {:.4f} ± {:.4f}; ln(PPL/PPL_ref) {:.6f} ± {:.6f}",
                 e.kl.kl_mean, e.kl.kl_se, e.kl.kl_median, e.kl.kl_p90, e.kl.kl_p99, e.kl.kl_max, e.kl.top1,
                 e.kl.top1_se, e.kl.dnll_mean, e.kl.dnll_se);
    return e;
  }
  const auto r = model::perplexity(em.model(), ids, static_cast<int>(seqlen), em.fn(), em.hook());
  e.windows = r.windows;
  e.tokens = r.tokens;
  e.mean_nll = r.mean_nll;
  e.ppl = r.ppl;
  spdlog::info("{}: {} windows x {} tokens, mean NLL {:.6f}, perplexity {:.4f} ({:.1f} s)", opt.dir, r.windows,
               seqlen, r.mean_nll, r.ppl, since(t0));
  return e;
}

void run_dequant(const std::string& quant_dir, const std::string& out_dir, const std::string& dtype, bool force) {
  const auto im = exporter::ImportedModel::open(quant_dir);
  io::AtomicDir out(out_dir, force);
  exporter::ExportOptions eo;
  if (!dtype.empty()) eo.dtype = exporter::parse_float_dtype(dtype);
  exporter::Exporter ex;
  ex.begin(quant_dir, im.info(), exporter::ExportKind::kDequant, out.path(), eo);
  for (const auto& mod : im.quantized_modules()) ex.add_quantized(im.load(mod));
  for (const auto& name : im.passthrough_tensors())
    ex.add_passthrough(name, im.files().info(name), im.files().data(name));
  ex.finish();
  out.commit();
  spdlog::info("wrote {} ({} dequantised Linears)", out_dir, im.quantized_modules().size());
}

}  // namespace fp4q::pipeline
