// src/pipeline/moe_quant.cpp — MoE experts in `fp4q quantize` (see moe_quant.h).
#include "moe_quant.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include <spdlog/spdlog.h>

#include "fp4q/core/error.h"
#include "fp4q/core/parallel.h"

namespace fp4q::pipeline {

MoeOptions parse_moe_calib(const std::string& mode, int64_t min_tokens) {
  MoeOptions o;
  if (mode == "all-tokens") o.all_tokens = true;
  else if (mode != "routed")
    throw Error(ErrorKind::kUsage, "unknown MoE calibration mode '" + mode + "'", "--moe-calib",
                "choose routed (each expert's own tokens; RTN below --moe-min-tokens) or all-tokens");
  if (min_tokens < 0)
    throw Error(ErrorKind::kUsage, "must be >= 0, got " + std::to_string(min_tokens), "--moe-min-tokens");
  o.min_tokens = min_tokens;
  return o;
}

namespace detail {

QuantSettings expert_settings(const QuantSettings& s) {
  QuantSettings e = s;
  e.hadamard = 0;
  return e;
}

MoeCaptureHook::MoeCaptureHook(const Plan& plan, int l, const MoeOptions& o, bool h, bool a)
    : layer(l), opt(o), hessians(h), amax_wanted(a) {
  const int E = plan.num_experts(l);
  expert_quantized.assign(E, false);
  for (int e = 0; e < E; ++e) {
    const LinearPlan* g = plan.find_expert(l, e, Proj::kGate);
    const LinearPlan* d = plan.find_expert(l, e, Proj::kDown);
    expert_quantized[e] = (g && g->quantize) || (d && d->quantize);
  }
  gate_acc.resize(E);
  down_acc.resize(E);
  routed.assign(E, 0);
}

bool MoeCaptureHook::experts_see_all_tokens(int) const { return opt.all_tokens && hessians; }

void MoeCaptureHook::on_routing(int, const model::MoeRouting& r) {
  for (int e = 0; e < r.n_experts && e < static_cast<int>(routed.size()); ++e) routed[e] += r.count(e);
  all_tokens += r.tokens;
}

void MoeCaptureHook::on_expert_input(int, int e, model::LinearKind kind, float* x, int64_t sequences,
                                     int64_t tokens, int64_t in) {
  if (e < 0 || e >= static_cast<int>(expert_quantized.size()) || !expert_quantized[e] || tokens <= 0) return;
  const bool gate = kind == model::LinearKind::kGate;
  auto t0 = Clock::now();
  if (hessians) {
    if (gate && opt.all_tokens) {
      // Every expert sees the same rows (the block input): one shared accumulator.
      if (e == static_cast<int>(std::find(expert_quantized.begin(), expert_quantized.end(), true) -
                                expert_quantized.begin())) {
        if (!shared_gate) shared_gate = std::make_unique<gptq::HessianAccumulator>(in, "experts of layer " + std::to_string(layer));
        shared_gate->add_batch(x, tokens, sequences);
      }
    } else {
      auto& acc = gate ? gate_acc[e] : down_acc[e];
      if (!acc) acc = std::make_unique<gptq::HessianAccumulator>(in, "expert " + std::to_string(e) + " of layer " + std::to_string(layer));
      acc->add_batch(x, tokens, sequences);
    }
  }
  seconds_hessian += since(t0);
  if (amax_wanted) {
    t0 = Clock::now();
    float m = expert_amax[gate ? 0 : 1];
    for (int64_t i = 0; i < tokens * in; ++i) m = std::max(m, std::fabs(x[i]));  // unrotated
    expert_amax[gate ? 0 : 1] = m;
    seconds_amax += since(t0);
  }
}

namespace {

void note_record(Solved& sv, int64_t tokens, const std::string& note) {
  sv.rec.tokens = tokens;
  sv.rec.note = note;
}

}  // namespace

ExpertSolveStats solve_layer_experts(const QuantSettings& s, const Plan& plan, int l, model::LayerWeights& w,
                                     MoeCaptureHook& cap, int64_t samples, bool need_hessians,
                                     bool need_act_scale, TransformHook& th, PhaseTimes* ph,
                                     const std::function<void(Solved&&)>& emit) {
  const QuantSettings se = expert_settings(s);
  const bool w4a4 = s.activations == exporter::Activations::kFp4;
  const int E = plan.num_experts(l);
  const float ags[2] = {need_act_scale ? activation_global_scale(cap.expert_amax[0]) : 0.0f,
                        need_act_scale ? activation_global_scale(cap.expert_amax[1]) : 0.0f};
  ExpertSolveStats st;
  bool any = false;
  for (int e = 0; e < E; ++e) {
    if (e >= static_cast<int>(w.experts.size())) break;
    const int64_t tokens = cap.opt.all_tokens ? cap.all_tokens : cap.routed[e];
    const bool fallback =
        need_hessians && !cap.opt.all_tokens && (tokens < cap.opt.min_tokens || tokens == 0);
    std::string note;
    if (fallback) {
      char b[200];
      std::snprintf(b, sizeof b, "MoE RTN fallback: %lld routed calibration tokens < --moe-min-tokens %lld",
                    static_cast<long long>(tokens), static_cast<long long>(cap.opt.min_tokens));
      note = b;
    }
    bool counted = false;
    for (int gi = 0; gi < 2; ++gi) {  // 0: gate/up (input group 2), 1: down (input group 3)
      std::vector<const LinearPlan*> members;
      for (Proj p : gi == 0 ? std::vector<Proj>{Proj::kGate, Proj::kUp} : std::vector<Proj>{Proj::kDown}) {
        const LinearPlan* lp = plan.find_expert(l, e, p);
        if (lp && lp->quantize) members.push_back(lp);
      }
      if (members.empty()) continue;
      any = true;
      if (!counted) {
        counted = true;
        ++st.quantized;
        if (fallback) ++st.rtn_fallback;
        st.min_tokens = st.min_tokens < 0 ? tokens : std::min(st.min_tokens, tokens);
        st.max_tokens = std::max(st.max_tokens, tokens);
      }
      std::vector<std::vector<float>> W;
      for (auto* m : members) W.push_back(std::move(w.experts[e][static_cast<model::LinearKind>(m->proj)].w));
      std::vector<Solved> solved;
      if (need_hessians && !fallback) {
        if (gi == 0 && cap.opt.all_tokens) {
          if (!cap.shared_gate)
            throw Error(ErrorKind::kInternal, "no shared Hessian for the experts", members.front()->name);
          const std::vector<float> H = cap.shared_gate->hessian();
          solved = solve_group(se, members, std::move(W), H.data(), samples, ph);
        } else {
          auto& acc = gi == 0 ? cap.gate_acc[e] : cap.down_acc[e];
          if (!acc)
            throw Error(ErrorKind::kInternal, "expert with " + std::to_string(tokens) + " tokens has no Hessian",
                        members.front()->name);
          linalg::HugeBuffer<float> H = acc->take_hessian();
          acc.reset();
          solved = solve_group_inplace(se, members, std::move(W), H.data(), samples, ph);
        }
      } else {
        solved = solve_group(se, members, std::move(W), nullptr, samples, ph);
      }
      for (size_t i = 0; i < solved.size(); ++i) {
        Solved& sv = solved[i];
        w.experts[e][static_cast<model::LinearKind>(members[i]->proj)].w = std::move(sv.deq_rot);
        sv.ql.input_global_scale = ags[gi];
        note_record(sv, tokens, note);
        if (sv.rec.hessian_err >= 0) {
          st.herr_sum += sv.rec.hessian_err;
          ++st.herr_n;
        }
        st.damp_max = std::max(st.damp_max, sv.rec.damp);
        emit(std::move(sv));
      }
    }
    cap.gate_acc[e].reset();
    cap.down_acc[e].reset();
  }
  if (any && w4a4) {
    for (int gi = 0; gi < 2; ++gi) {
      th.active[2 + gi] = true;
      th.t[2 + gi] = InputTransform{0, true, s.format, need_act_scale ? ags[gi] : 1.0f};
    }
  }
  return st;
}

void quantize_experts_data_free(const QuantSettings& s, const Plan& plan, int l, const io::ModelFiles& files,
                                PhaseTimes* ph, const std::function<void(Solved&&)>& emit) {
  const QuantSettings se = expert_settings(s);
  for (int e = 0; e < plan.num_experts(l); ++e)
    for (int gi = 0; gi < 2; ++gi) {
      std::vector<const LinearPlan*> members;
      for (Proj p : gi == 0 ? std::vector<Proj>{Proj::kGate, Proj::kUp} : std::vector<Proj>{Proj::kDown}) {
        const LinearPlan* lp = plan.find_expert(l, e, p);
        if (lp && lp->quantize) members.push_back(lp);
      }
      if (members.empty()) continue;
      std::vector<std::vector<float>> W;
      for (auto* m : members) W.push_back(files.read_f32(m->name + ".weight"));
      for (auto& sv : solve_group(se, members, std::move(W), nullptr, 0, ph)) emit(std::move(sv));
    }
}

std::string expert_stats_text(const ExpertSolveStats& st, const MoeOptions& opt) {
  char b[300];
  std::snprintf(b, sizeof b, "%d experts quantized (%s calibration), tokens per expert %lld..%lld, %d RTN fallback%s%s",
                st.quantized, opt.all_tokens ? "all-tokens" : "routed", static_cast<long long>(std::max<int64_t>(0, st.min_tokens)),
                static_cast<long long>(st.max_tokens), st.rtn_fallback, st.rtn_fallback == 1 ? "" : "s",
                st.rtn_fallback && !opt.all_tokens
                    ? (" (< --moe-min-tokens " + std::to_string(opt.min_tokens) + ")").c_str()
                    : "");
  return b;
}

}  // namespace detail
}  // namespace fp4q::pipeline
