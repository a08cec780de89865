#include "fp4q/pipeline/eval.h"

#include <cstdio>
#include <fstream>
#include <map>
#include <memory>

#include <spdlog/spdlog.h>

#include "fp4q/core/compute_dtype.h"
#include "fp4q/core/error.h"
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

}  // namespace

EvalResult run_eval(const EvalOptions& opt) {
  const auto t0 = Clock::now();
  const bool quantized = is_quantized_dir(opt.dir);
  auto model = model::Model::open(opt.dir, quantized);
  model.set_compute_dtype(opt.dtype);
  const auto& cfg = model.config();
  std::unique_ptr<exporter::ImportedModel> im;
  std::unique_ptr<QuantizedWeights> qw;
  std::unique_ptr<RoundedWeights> rw;
  PerLayerHook hook;
  bool use_hook = false;
  InputTransform proto;
  proto.dtype = opt.dtype;
  if (quantized) {
    im = std::make_unique<exporter::ImportedModel>(exporter::ImportedModel::open(opt.dir));
    const auto& info = im->info();
    proto.quantize = opt.activations >= 0 ? opt.activations == static_cast<int>(exporter::Activations::kFp4)
                                          : info.activations == exporter::Activations::kFp4;
    proto.runtime = opt.runtime >= 0 ? static_cast<ActRuntime>(opt.runtime)
                    : im->kind() == exporter::ExportKind::kFpQuantReal ? ActRuntime::kFpQuant
                                                                        : ActRuntime::kCompressedTensors;
    if (proto.runtime == ActRuntime::kFpQuant && proto.quantize && has_linear_bias(model, *im))
      spdlog::warn("{}: fp_quant 0.3.2's pseudo-quantization path adds the bias of a quantized Linear twice "
                   "(PseudoQuant4x16NoMasterFn); fp4q evaluates it once", opt.dir);
    qw = std::make_unique<QuantizedWeights>(model, *im, proto, hook);
    use_hook = true;
    spdlog::info("{}: {} {} model, rotation {}, activations {}, runtime {}, {}", opt.dir,
                 format::spec(info.format).name, info.method.empty() ? "quantized" : info.method, info.hadamard,
                 proto.quantize ? "fp4" : "16-bit", act_runtime_name(proto.runtime), compute_dtype_name(opt.dtype));
  } else {
    if (opt.dtype != ComputeDtype::kF32) rw = std::make_unique<RoundedWeights>(model, opt.dtype);
    if (opt.activations == static_cast<int>(exporter::Activations::kFp4)) {
      // Original weights with rotated, FP4-quantised activations (dynamic NVFP4 global scale is
      // not defined without calibration: nvfp4 uses per-tensor 1.0 here, i.e. E4M3 scales alone).
      proto.format = opt.format ? static_cast<format::FormatId>(opt.format) : format::FormatId::kNVFP4;
      proto.hadamard = opt.hadamard >= 0 ? opt.hadamard : format::spec(proto.format).default_hadamard;
      proto.quantize = true;
      proto.runtime = opt.runtime >= 0 ? static_cast<ActRuntime>(opt.runtime) : ActRuntime::kCompressedTensors;
      for (int l = 0; l < cfg.n_layers; ++l)
        for (int g = 0; g < kNumInputGroups; ++g) {
          hook.t[{l, g}] = proto;
          if (cfg.is_moe_layer(l) && g >= 2) hook.t[{l, g}].hadamard = 0;  // experts: never rotated
        }
      use_hook = true;
    }
  }
  model::LayerWeightsFn fn;
  if (qw) fn = [&qw](int l) -> const model::LayerWeights& { return qw->layer(l); };
  if (rw) fn = [&rw](int l) -> const model::LayerWeights& { return rw->layer(l); };

  if (!opt.dump_logits.empty()) {
    if (opt.logits_ids.empty())
      throw Error(ErrorKind::kUsage, "--dump-logits needs --logits-ids", "--dump-logits");
    const auto ids = model::read_token_ids(opt.logits_ids);
    const auto logits = model.forward(ids, fn, use_hook ? &hook : nullptr);
    std::string bytes(reinterpret_cast<const char*>(logits.data()), logits.size() * sizeof(float));
    io::write_file_atomic(opt.dump_logits, bytes);
    spdlog::info("wrote logits [{} x {}] to {}", ids.size(), cfg.vocab, opt.dump_logits);
    if (opt.text_path.empty() && opt.ids_path.empty()) return {};
  }

  int32_t bos = -1;
  auto ids = token_stream(opt.dir, opt.text_path, opt.ids_path, &bos);
  if (bos >= 0) ids.insert(ids.begin(), bos);  // one BOS at the very start (WikiText-2 style)
  int64_t seqlen = opt.seqlen;
  if (cfg.max_pos > 0 && seqlen > cfg.max_pos) {
    spdlog::info("eval: --seqlen {} clipped to max_position_embeddings {}", seqlen, cfg.max_pos);
    seqlen = cfg.max_pos;
  }
  if (opt.max_windows > 0 && static_cast<int64_t>(ids.size()) > opt.max_windows * seqlen)
    ids.resize(static_cast<size_t>(opt.max_windows * seqlen));
  if (static_cast<int64_t>(ids.size()) < seqlen)
    throw Error(ErrorKind::kInput, "text has " + std::to_string(ids.size()) + " tokens, fewer than one window of " +
                std::to_string(seqlen), opt.ids_path.empty() ? opt.text_path : opt.ids_path, "lower --seqlen");
  const auto r = model::perplexity(model, ids, static_cast<int>(seqlen), fn, use_hook ? &hook : nullptr);
  EvalResult e;
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
