#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include <unistd.h>

#include <spdlog/spdlog.h>

#include "fp4q/calib/windows.h"
#include "fp4q/core/error.h"
#include "fp4q/gptq/gptq.h"
#include "fp4q/model/tokenizer.h"
#include "fp4q/transform/hadamard.h"
#include "internal.h"

namespace fp4q::pipeline::detail {

void check_finite(const std::vector<float>& w, int64_t rows, int64_t cols, const std::string& where) {
  for (size_t i = 0; i < w.size(); ++i) {
    if (!std::isfinite(w[i]))
      throw Error(ErrorKind::kNumeric,
                  std::string(std::isnan(w[i]) ? "NaN" : "Inf") + " at [" + std::to_string(static_cast<int64_t>(i) / cols) +
                      ", " + std::to_string(static_cast<int64_t>(i) % cols) + "] of a [" + std::to_string(rows) + ", " +
                      std::to_string(cols) + "] weight",
                  where, "the checkpoint is corrupt or was saved after a diverged update; fp4q cannot quantize it");
  }
}

std::vector<Solved> solve_group(const QuantSettings& s, const std::vector<const LinearPlan*>& members,
                                std::vector<std::vector<float>> W, const float* H, int64_t samples) {
  const auto t0 = Clock::now();
  const auto fmt = s.format;
  const int64_t in = members.front()->in;
  for (size_t i = 0; i < members.size(); ++i) check_finite(W[i], members[i]->out, in, members[i]->name + ".weight");
  for (size_t i = 0; i < members.size(); ++i)
    gptq::rotate_weight(W[i].data(), members[i]->out, in, s.hadamard);
  std::vector<float> Hr;
  if (H) {
    Hr.assign(H, H + in * in);
    gptq::rotate_hessian(Hr.data(), in, s.hadamard);
  }
  // Fused members share one NVFP4 global scale: the smallest keeps every group scale <= 448.
  float shared_gs = 0.0f;
  if (format::spec(fmt).has_global_scale && members.size() > 1) {
    shared_gs = INFINITY;
    for (size_t i = 0; i < members.size(); ++i) {
      const float gs = s.scales == format::ScaleMethod::kAbsmax
                           ? format::nvfp4_global_scale(W[i].data(), members[i]->out * in)
                           : format::choose_scales(fmt, W[i].data(), members[i]->out, in, s.scales,
                                                   0.0f, members[i]->name).global_scale;
      shared_gs = std::min(shared_gs, gs);
    }
  }
  const double setup = since(t0);
  std::vector<Solved> out;
  for (size_t i = 0; i < members.size(); ++i) {
    const auto t1 = Clock::now();
    const LinearPlan& lp = *members[i];
    const auto scales = format::choose_scales(fmt, W[i].data(), lp.out, in, s.scales, shared_gs, lp.name);
    gptq::GptqOptions go;
    go.damp = s.damp;
    go.act_order = s.act_order;
    const bool gptq = H && s.method != Method::kRtn;
    gptq::SolveResult r = gptq ? gptq::gptq_solve(W[i].data(), lp.out, in, Hr.data(), scales, go, lp.name)
                               : gptq::rtn_solve(W[i].data(), lp.out, in, H ? Hr.data() : nullptr, scales, lp.name);
    Solved sv;
    sv.deq_rot.resize(static_cast<size_t>(lp.out * in));
    format::dequantize(r.q, sv.deq_rot.data());
    sv.ql.name = lp.name;
    sv.ql.hadamard = s.hadamard;
    sv.ql.q = std::move(r.q);
    TensorRecord& rec = sv.rec;
    rec.name = lp.name;
    rec.out = lp.out;
    rec.in = lp.in;
    rec.dtype = io::dtype_tag(lp.dtype);
    rec.format = format::spec(fmt).name;
    rec.method = gptq ? method_name(s.method) : "rtn";
    rec.hadamard = s.hadamard;
    rec.rel_weight_err = r.stats.rel_weight_err;
    rec.hessian_err = H ? r.stats.hessian_err : -1;
    rec.rtn_rel_weight_err = r.stats.rtn_rel_weight_err;
    rec.rtn_hessian_err = H ? r.stats.rtn_hessian_err : -1;
    rec.damp = r.stats.damp_used;
    rec.damp_tries = r.stats.damp_tries;
    rec.samples = samples;
    rec.bytes_before = lp.out * lp.in * static_cast<int64_t>(io::dtype_size(lp.dtype));
    rec.bytes_after = quantized_bytes(fmt, lp.out, lp.in);
    rec.seconds = since(t1) + setup / static_cast<double>(members.size());
    if (r.stats.damp_tries > 1)
      spdlog::warn("{}: Cholesky needed relative damping {} ({} tries)", lp.name, r.stats.damp_used,
                   r.stats.damp_tries);
    out.push_back(std::move(sv));
  }
  return out;
}

TensorRecord kept_record(const LinearPlan& lp) {
  TensorRecord r;
  r.name = lp.name;
  r.out = lp.out;
  r.in = lp.in;
  r.dtype = io::dtype_tag(lp.dtype);
  r.format = "keep";
  r.skip_reason = lp.skip_reason;
  r.bytes_before = r.bytes_after = lp.out * lp.in * static_cast<int64_t>(io::dtype_size(lp.dtype));
  return r;
}

std::vector<const LinearPlan*> group_members(const Plan& plan, int layer, int group, bool quantized) {
  std::vector<const LinearPlan*> m;
  for (int p = 0; p < kNumProj; ++p) {
    if (proj_input_group(static_cast<Proj>(p)) != group) continue;
    const LinearPlan* lp = plan.find(layer, static_cast<Proj>(p));
    if (lp && lp->quantize == quantized) m.push_back(lp);
  }
  return m;
}

int group_of(model::LinearKind k) {
  switch (k) {
    case model::LinearKind::kQ: case model::LinearKind::kK: case model::LinearKind::kV: return 0;
    case model::LinearKind::kO: return 1;
    case model::LinearKind::kGate: case model::LinearKind::kUp: return 2;
    case model::LinearKind::kDown: return 3;
  }
  return -1;
}

bool first_of_group(model::LinearKind k) {
  return k == model::LinearKind::kQ || k == model::LinearKind::kO || k == model::LinearKind::kGate ||
         k == model::LinearKind::kDown;
}

void CaptureHook::on_input(int, model::LinearKind kind, float* x, int64_t tokens, int64_t in) {
  if (!first_of_group(kind)) return;
  const int g = group_of(kind);
  if (!acc[g]) return;
  acc[g]->add_batch(x, tokens, 1);
  if (want_amax) {
    tmp.assign(x, x + tokens * in);
    transform::hadamard_rows(tmp.data(), tokens, in, hadamard);
    float m = 0;
    for (float v : tmp) m = std::max(m, std::fabs(v));
    amax[g] = std::max(amax[g], m);
  }
}

void TransformHook::on_input(int, model::LinearKind kind, float* x, int64_t tokens, int64_t in) {
  const int g = group_of(kind);
  if (active[g]) apply_input_transform(t[g], x, tokens, in);
}

std::vector<int32_t> token_stream(const std::string& model_dir, const std::string& text_path,
                                  const std::string& ids_path, int32_t* bos) {
  if (!ids_path.empty()) {
    *bos = -1;
    auto ids = model::read_token_ids(ids_path);
    spdlog::info("{} pre-tokenised ids from {}", ids.size(), ids_path);
    return ids;
  }
  const auto tok = model::Tokenizer::from_dir(model_dir);
  std::ifstream f(text_path, std::ios::binary);
  if (!f) throw Error(ErrorKind::kIo, "cannot open text file", text_path);
  std::stringstream ss;
  ss << f.rdbuf();
  const auto specials = tok.encode("", /*add_special_tokens=*/true);
  *bos = specials.empty() ? -1 : specials.front();
  auto ids = tok.encode(ss.str(), /*add_special_tokens=*/false);
  spdlog::info("{} tokens from {}", ids.size(), text_path);
  return ids;
}

calib::CalibSet calibration_set(const std::string& model_dir, const model::ModelConfig& cfg,
                                const CalibOptions& c) {
  if (!c.windows_path.empty()) return calibration_windows(model_dir, cfg, c);
  int32_t bos = -1;
  const auto stream = token_stream(model_dir, c.text_path, c.ids_path, &bos);
  int64_t seqlen = c.seqlen;
  if (cfg.max_pos > 0 && seqlen > cfg.max_pos) {
    spdlog::info("calibration: --seqlen {} clipped to max_position_embeddings {}", seqlen, cfg.max_pos);
    seqlen = cfg.max_pos;
  }
  auto set = calib::sample_windows(stream, c.samples, seqlen, c.seed, bos,
                                   c.ids_path.empty() ? c.text_path : c.ids_path);
  spdlog::info("calibration: {} samples x {} tokens (seed {})", set.samples.size(), seqlen, c.seed);
  if (!c.dump_path.empty())
    dump_calibration_windows(c.dump_path, set, {c.ids_path.empty() ? c.text_path : c.ids_path, model_dir, c.seed, bos});
  return set;
}

void check_memory(int64_t planned, int64_t limit) {
  if (limit <= 0) {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    limit = pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : 0;
  }
  spdlog::info("planned peak memory: {}{}", human_bytes(planned),
               limit > 0 ? " (limit " + human_bytes(limit) + ")" : "");
  if (limit > 0 && planned > limit)
    throw Error(ErrorKind::kUsage,
                "planned peak memory " + human_bytes(planned) + " exceeds the limit " + human_bytes(limit),
                "--max-memory", "lower --samples or --seqlen, or raise --max-memory");
}

int64_t planned_calibration_bytes(const model::ModelConfig& cfg, int64_t n, int64_t T) {
  const int64_t d = cfg.hidden, I = cfg.intermediate, q = cfg.q_dim(), kv = cfg.kv_dim();
  const int64_t layer_w = d * (q + 2 * kv) + q * d + 3 * d * I;       // one layer's 7 weights
  const int64_t hess = d * d + q * q + d * d + I * I;                 // 4 input groups
  const int64_t per_seq = T * (3 * d + q + 2 * kv + 3 * I) + static_cast<int64_t>(cfg.n_heads) * T * T;
  const int64_t embed = cfg.vocab * d * (cfg.tie_embeddings ? 1 : 2);
  // activations of all samples + a working copy, Hessians (accumulator + rotated copy),
  // original + quantized layer weights + the solver's copy, embeddings.
  return 4 * (n * T * d + T * d + per_seq + 2 * hess + 3 * layer_w + embed);
}

}  // namespace fp4q::pipeline::detail
