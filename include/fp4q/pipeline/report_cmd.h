// fp4q/pipeline/report_cmd.h — `fp4q report` and `fp4q hessians`.
//
// Both run the full-precision model over the calibration set layer by layer (the inputs of
// layer l+1 are the full-precision outputs of layer l) and accumulate each Linear input's
// Hessian. `hessians` writes them to a file (pipeline/hessian_file.h); `report` solves every
// quantizable Linear with each requested format × method from the same Hessians and returns
// the error records (weight error and Hessian-weighted error, and RTN's under the same scales).
// Unlike `quantize`, no quantized outputs are propagated, so every method sees identical
// Hessians and the comparison is apples to apples.
#pragma once

#include <string>
#include <vector>

#include "fp4q/format/format.h"
#include "fp4q/pipeline/plan.h"
#include "fp4q/pipeline/quantize.h"
#include "fp4q/pipeline/report.h"

namespace fp4q::pipeline {

struct ReportOptions {
  std::string model_dir;
  std::vector<format::FormatId> formats;
  std::vector<Method> methods;
  std::string hessians_path;
  CalibOptions calib;
};

std::vector<TensorRecord> run_report(const ReportOptions& opt);

void run_hessians(const std::string& model_dir, const std::string& out_path, const CalibOptions& calib,
                  bool force);

}  // namespace fp4q::pipeline
