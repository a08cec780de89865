// Internal pieces shared by quantize, report, hessians and eval (not a public header).
#pragma once

#include <array>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "fp4q/calib/dataset.h"
#include "fp4q/calib/windows.h"
#include "fp4q/exporter/quantized.h"
#include "fp4q/gptq/hessian.h"
#include "fp4q/linalg/buffer.h"
#include "fp4q/model/model.h"
#include "fp4q/pipeline/act_quant.h"
#include "fp4q/pipeline/plan.h"
#include "fp4q/pipeline/quantize.h"
#include "fp4q/pipeline/report.h"

namespace fp4q::pipeline::detail {

using Clock = std::chrono::steady_clock;
inline double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The result of solving one Linear.
struct Solved {
  exporter::QuantizedLinear ql;
  TensorRecord rec;
  std::vector<float> deq_rot;  // dequantized rotated weight [out x in]
};

// Solves the plan's quantized members of one input group (q/k/v, o, gate/up or down) of one
// layer. W[i] are float32 weights [out x in] (consumed); H is the UNROTATED input Hessian of the
// group (full symmetric) or nullptr (plain RTN without error statistics). NVFP4 members share one
// global scale. The first form copies H; the second rotates the caller's H in place (no copy).
// Phase seconds are added to *ph when given.
std::vector<Solved> solve_group(const QuantSettings& s, const std::vector<const LinearPlan*>& members,
                                std::vector<std::vector<float>> W, const float* H, int64_t samples,
                                PhaseTimes* ph = nullptr);
std::vector<Solved> solve_group_inplace(const QuantSettings& s,
                                        const std::vector<const LinearPlan*>& members,
                                        std::vector<std::vector<float>> W, float* H, int64_t samples,
                                        PhaseTimes* ph = nullptr);

TensorRecord kept_record(const LinearPlan& lp);
// Throws Error(kNumeric) naming `where` and the [row, col] of the first NaN/Inf.
void check_finite(const std::vector<float>& w, int64_t rows, int64_t cols, const std::string& where);
// Plan entries of `layer` reading input group `group` whose decision equals `quantized`.
std::vector<const LinearPlan*> group_members(const Plan& plan, int layer, int group, bool quantized);

int group_of(model::LinearKind k);
bool first_of_group(model::LinearKind k);

// Hessian pass hook: accumulates H = 2/N Σ xxᵀ of the unrotated input of each enabled group
// (N = calibration sequences), and optionally the amax of the rotated input (NVFP4 activation
// global scale). Seconds spent in it are added to *seconds_hessian / *seconds_amax.
struct CaptureHook : model::LinearHook {
  std::array<std::unique_ptr<gptq::HessianAccumulator>, kNumInputGroups> acc;
  std::array<float, kNumInputGroups> amax{};
  bool want_amax = false;
  int hadamard = 0;
  double seconds_hessian = 0, seconds_amax = 0;
  void on_input(int layer, model::LinearKind kind, float* x, int64_t tokens, int64_t in) override;
  void on_input_batch(int layer, model::LinearKind kind, float* x, int64_t sequences,
                      int64_t tokens, int64_t in) override;
};

// Quantized pass hook: the online input transform of each quantized group.
struct TransformHook : model::LinearHook {
  std::array<bool, kNumInputGroups> active{};
  std::array<InputTransform, kNumInputGroups> t;
  double seconds = 0;  // spent in the transforms
  void on_input(int layer, model::LinearKind kind, float* x, int64_t tokens, int64_t in) override;
};

// The calibration activations: the input of the current decoder layer for every calibration
// sequence, X [n*T x hidden] row-major in one huge-page buffer, advanced layer by layer in
// batches of model::batch_sequences(T) sequences (one product per Linear per batch).
class CalibActivations {
 public:
  CalibActivations(const model::Model& m, const calib::CalibSet& cs);
  int64_t samples() const { return n_; }
  int64_t seqlen() const { return T_; }
  // Runs layer l with weights w over every sequence. update: X becomes the layer's output;
  // otherwise X is left unchanged and down_proj is not computed (a pass that only feeds hook).
  void run(int l, const model::LayerWeights& w, model::LinearHook* hook, bool update);
  // Bytes held: X, the batch copy and the forward scratch.
  size_t bytes() const;
  // X itself (samples() * seqlen() * hidden floats): saved to and restored from a checkpoint.
  float* x() { return X_.data(); }
  uint64_t x_count() const { return static_cast<uint64_t>(n_ * T_ * H_); }
  int64_t hidden() const { return H_; }

 private:
  const model::Model& m_;
  int64_t n_ = 0, T_ = 0, H_ = 0;
  linalg::HugeBuffer<float> X_, tmp_;
  model::ForwardScratch scratch_;
};

// Tokenised text (or pre-tokenised ids) without special tokens; *bos = the BOS id the
// tokenizer prepends to a sequence, or -1.
std::vector<int32_t> token_stream(const std::string& model_dir, const std::string& text_path,
                                  const std::string& ids_path, int32_t* bos);

// Calibration windows for a model (seqlen clipped to max positions); c.windows_path: the exact
// windows of that file instead (calibration_windows); c.dump_path: the windows are also written
// there (fp4q/calib/windows.h).
calib::CalibSet calibration_set(const std::string& model_dir, const model::ModelConfig& cfg,
                                const CalibOptions& c);
// Defined in calib_windows.cpp: reads c.windows_path (checked against cfg's vocab and max
// positions) and, when c.dump_path is set, writes the windows back out.
calib::CalibSet calibration_windows(const std::string& model_dir, const model::ModelConfig& cfg,
                                    const CalibOptions& c);
void dump_calibration_windows(const std::string& path, const calib::CalibSet& set,
                              const calib::WindowsMeta& meta);

// Logs the planned peak and refuses (Error kUsage naming --max-memory) above the limit
// (limit <= 0: physical memory).
void check_memory(int64_t planned, int64_t limit);



}  // namespace fp4q::pipeline::detail
