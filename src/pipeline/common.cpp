#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include <unistd.h>

#include <spdlog/spdlog.h>

#include "fp4q/calib/windows.h"
#include "fp4q/core/error.h"
#include "fp4q/core/parallel.h"
#include "fp4q/gptq/column_costs.h"
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
                                std::vector<std::vector<float>> W, const float* H, int64_t samples,
                                PhaseTimes* ph) {
  if (!H) return solve_group_inplace(s, members, std::move(W), nullptr, samples, ph);
  const int64_t in = members.front()->in;
  const auto t0 = Clock::now();
  linalg::HugeBuffer<float> Hc(static_cast<size_t>(in * in));
  parallel_for(static_cast<long>(in), [&](long i) { std::copy(H + i * in, H + (i + 1) * in, Hc.data() + i * in); });
  if (ph) ph->rotate += since(t0);
  return solve_group_inplace(s, members, std::move(W), Hc.data(), samples, ph);
}

std::vector<Solved> solve_group_inplace(const QuantSettings& s,
                                        const std::vector<const LinearPlan*>& members,
                                        std::vector<std::vector<float>> W, float* H, int64_t samples,
                                        PhaseTimes* ph) {
  PhaseTimes local;
  PhaseTimes& pt = ph ? *ph : local;
  auto t0 = Clock::now();
  const auto fmt = s.format;
  const int64_t in = members.front()->in;
  for (size_t i = 0; i < members.size(); ++i) check_finite(W[i], members[i]->out, in, members[i]->name + ".weight");
  for (size_t i = 0; i < members.size(); ++i)
    gptq::rotate_weight(W[i].data(), members[i]->out, in, s.hadamard);
  if (H) gptq::rotate_hessian(H, in, s.hadamard);
  const double t_rot = since(t0);
  pt.rotate += t_rot;
  t0 = Clock::now();
  // --scales mse-hess / mse-gptq (ablations, issue 9): the per-group MSE weighted by diag(H) of the
  // rotated Hessian, or by GPTQ's own per-column error weights (gptq::column_costs).
  std::vector<float> col_w;
  if (H && s.scales == format::ScaleMethod::kMseHess) {
    col_w.resize(static_cast<size_t>(in));
    for (int64_t j = 0; j < in; ++j) col_w[j] = H[j * in + j];
  } else if (H && s.scales == format::ScaleMethod::kMseGptq) {
    gptq::GptqOptions co;
    co.damp = s.damp;
    co.act_order = s.act_order;
    col_w = gptq::column_costs(H, in, co);
  }
  const float* cw = col_w.empty() ? nullptr : col_w.data();
  // Fused members share one NVFP4 global scale: the smallest keeps every group scale <= 448.
  float shared_gs = 0.0f;
  if (format::spec(fmt).has_global_scale && members.size() > 1) {
    shared_gs = INFINITY;
    for (size_t i = 0; i < members.size(); ++i) {
      // Each member's searched global scale (no group codes: those come once, below).
      const float gs = format::nvfp4_search_global_scale(W[i].data(), members[i]->out, in, s.scales,
                                                         members[i]->name, cw);
      shared_gs = std::min(shared_gs, gs);
    }
  }
  const double setup = t_rot + since(t0);
  pt.scale_search += since(t0);
  std::vector<Solved> out;
  for (size_t i = 0; i < members.size(); ++i) {
    const auto t1 = Clock::now();
    const LinearPlan& lp = *members[i];
    const auto scales = format::choose_scales(fmt, W[i].data(), lp.out, in, s.scales, shared_gs, lp.name, cw);
    pt.scale_search += since(t1);
    gptq::GptqOptions go;
    go.damp = s.damp;
    go.act_order = s.act_order;
    go.h_full_symmetric = true;
    const bool gptq = H && s.method != Method::kRtn;
    gptq::SolveResult r = gptq ? gptq::gptq_solve(W[i].data(), lp.out, in, H, scales, go, lp.name)
                               : gptq::rtn_solve(W[i].data(), lp.out, in, H, scales, lp.name);
    pt.gptq_factor += r.stats.seconds_factor;
    pt.gptq_sweep += r.stats.seconds_sweep;
    pt.stats += r.stats.seconds_stats;
    Solved sv;
    format::dequantize(r.q, W[i].data());  // W[i] (the rotated input) is no longer needed
    sv.deq_rot = std::move(W[i]);
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

void CaptureHook::on_input(int layer, model::LinearKind kind, float* x, int64_t tokens, int64_t in) {
  on_input_batch(layer, kind, x, 1, tokens, in);
}

void CaptureHook::on_input_batch(int, model::LinearKind kind, float* x, int64_t sequences,
                                 int64_t tokens, int64_t in) {
  if (!first_of_group(kind)) return;
  const int g = group_of(kind);
  if (!acc[g]) return;
  auto t0 = Clock::now();
  acc[g]->add_batch(x, tokens, sequences);
  seconds_hessian += since(t0);
  if (want_amax) {
    t0 = Clock::now();
    std::vector<float> row_max(static_cast<size_t>(tokens), 0.0f);
    parallel_for(static_cast<long>(tokens), [&](long r) {  // rotated copy of each row, its max
      thread_local std::vector<float> row;
      row.assign(x + r * in, x + (r + 1) * in);
      transform::hadamard_rows(row.data(), 1, in, hadamard);
      float m = 0;
      for (int64_t j = 0; j < in; ++j) m = std::max(m, std::fabs(row[j]));
      row_max[r] = m;
    });
    for (float m : row_max) amax[g] = std::max(amax[g], m);
    seconds_amax += since(t0);
  }
}

void TransformHook::on_input(int, model::LinearKind kind, float* x, int64_t tokens, int64_t in) {
  const int g = group_of(kind);
  if (!active[g]) return;
  const auto t0 = Clock::now();
  apply_input_transform(t[g], x, tokens, in);
  seconds += since(t0);
}

CalibActivations::CalibActivations(const model::Model& m, const calib::CalibSet& cs)
    : m_(m), n_(static_cast<int64_t>(cs.samples.size())), T_(cs.seqlen), H_(m.config().hidden) {
  X_ = linalg::HugeBuffer<float>(static_cast<size_t>(n_ * T_ * H_));
  for (int64_t i = 0; i < n_; ++i) {
    const auto e = m.embed(cs.samples[i]);
    std::copy(e.begin(), e.end(), X_.data() + i * T_ * H_);
  }
}

void CalibActivations::run(int l, const model::LayerWeights& w, model::LinearHook* hook, bool update) {
  const int64_t per = model::batch_sequences(T_);
  for (int64_t s0 = 0; s0 < n_; s0 += per) {
    const int64_t nb = std::min(per, n_ - s0);
    float* x = X_.data() + s0 * T_ * H_;
    const size_t cnt = static_cast<size_t>(nb * T_ * H_);
    if (!update) {  // the pass changes its input (residual adds): work on a copy
      if (tmp_.size() < cnt) tmp_ = linalg::HugeBuffer<float>(static_cast<size_t>(std::min(per, n_) * T_ * H_));
      std::copy(x, x + cnt, tmp_.data());
      x = tmp_.data();
    }
    m_.layer_forward(l, w, x, nb, T_, hook, &scratch_, update);
  }
}

size_t CalibActivations::bytes() const {
  return (X_.size() + tmp_.size()) * sizeof(float) + scratch_.bytes();
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


}  // namespace fp4q::pipeline::detail
