#include "commands.h"

#include <cstdio>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>

#include "fp4q/core/error.h"
#include "fp4q/exporter/layout.h"
#include "fp4q/format/format.h"
#include "fp4q/io/io.h"
#include "fp4q/io/writer.h"
#include "fp4q/pipeline/act_quant.h"
#include "fp4q/pipeline/calib_windows.h"
#include "fp4q/pipeline/eval.h"
#include "fp4q/pipeline/quantize.h"
#include "fp4q/pipeline/report_cmd.h"

namespace fp4q::cli {

namespace {

std::map<const CLI::App*, std::function<void()>>& actions() {
  static std::map<const CLI::App*, std::function<void()>> a;
  return a;
}

std::string default_calib_text() { return std::string(FP4Q_DATA_DIR) + "/text/calib-frankenstein.txt"; }

// "8G", "512M", "1.5GiB", "123456" -> bytes.
int64_t parse_size(const std::string& s, const std::string& flag) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (...) {
    pos = 0;
  }
  std::string unit = s.substr(pos);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  double mul = 1;
  if (unit == "" || unit == "B") mul = 1;
  else if (unit == "K" || unit == "KB" || unit == "KIB") mul = 1024.0;
  else if (unit == "M" || unit == "MB" || unit == "MIB") mul = 1024.0 * 1024;
  else if (unit == "G" || unit == "GB" || unit == "GIB") mul = 1024.0 * 1024 * 1024;
  else if (unit == "T" || unit == "TB" || unit == "TIB") mul = 1024.0 * 1024 * 1024 * 1024;
  else pos = 0;
  if (pos == 0 || !(v >= 0))
    throw Error(ErrorKind::kUsage, "cannot parse size '" + s + "'", flag, "use e.g. 8G, 512M or a byte count");
  return static_cast<int64_t>(v * mul);
}

}  // namespace

ComputeDtype parse_compute_option(const std::string& s) {
  if (s == "f32" || s == "fp32" || s == "float32") return ComputeDtype::kF32;
  if (s == "bf16" || s == "bfloat16") return ComputeDtype::kBF16;
  throw Error(ErrorKind::kUsage, "unknown compute dtype '" + s + "'", "--compute", "choose f32 or bf16");
}

namespace {

exporter::Activations parse_acts(const std::string& s) {
  if (s == "none" || s == "16" || s == "bf16") return exporter::Activations::kNone;
  if (s == "fp4") return exporter::Activations::kFp4;
  throw Error(ErrorKind::kUsage, "unknown activation mode '" + s + "'", "--activations",
              "choose none (weight-only) or fp4 (W4A4)");
}

bool parse_act_order(const std::string& s) {
  if (s == "static") return true;
  if (s == "none") return false;
  throw Error(ErrorKind::kUsage, "unknown act-order '" + s + "'", "--act-order", "choose static or none");
}

std::string format_names() {
  std::string s;
  for (const auto& f : format::all_formats()) s += (s.empty() ? "" : "|") + std::string(f.name);
  return s;
}

struct CalibArgs {
  std::string text, ids, windows, dump;
  int64_t samples = 128, seqlen = 2048;
  uint64_t seed = 42;
  void add(CLI::App* c) {
    c->add_option("--calib", text, "Calibration text file (default: bundled Frankenstein text)");
    c->add_option("--calib-ids", ids, "Pre-tokenised calibration ids (JSON array or whitespace-separated) instead of text");
    c->add_option("--samples", samples, "Calibration sequences")->capture_default_str();
    c->add_option("--seqlen", seqlen, "Tokens per calibration sequence (clipped to the model's max positions)")->capture_default_str();
    c->add_option("--seed", seed, "Seed of the calibration sampling")->capture_default_str();
    c->add_option("--calib-windows", windows, "Exact calibration windows from a JSON file (as written by --dump-calib; or [[ids...], ...]) instead of sampling");
    c->add_option("--dump-calib", dump, "Write the token ids of every calibration window to this JSON file (with quantize --dry-run: write it and stop)");
  }
  pipeline::CalibOptions get() const {
    pipeline::CalibOptions o;
    o.text_path = text.empty() ? default_calib_text() : text;
    o.ids_path = ids;
    o.samples = samples;
    o.seqlen = seqlen;
    o.seed = seed;
    o.windows_path = windows;
    o.dump_path = dump;
    return o;
  }
};

void add_quantize(CLI::App& app) {
  auto* c = app.add_subcommand("quantize", "Quantize a Hugging Face model directory");
  c->footer(
      "Examples:\n"
      "  fp4q quantize data/models/stories260K out/s-nvfp4\n"
      "  fp4q quantize MODEL OUT --format mxfp4 --method mr-gptq --hadamard 32\n"
      "  fp4q quantize MODEL OUT --format nvfp4 --activations fp4 --samples 256 --seqlen 2048\n"
      "  fp4q quantize MODEL OUT --method rtn --ignore 'layers\\.0\\.' --export fp-quant-pseudo\n"
      "  fp4q quantize MODEL OUT --dry-run --dump-calib calib.json   (calibration ids only)\n"
      "  fp4q quantize MODEL OUT --calib-windows calib.json          (exactly those windows)\n"
      "Methods: rtn (round to nearest, no data), gptq (GPTQ, absmax scales, no rotation),\n"
      "mr-gptq (block Hadamard + MSE scales + static act-order GPTQ; the default).\n"
      "MoE models (Qwen3-MoE, Mixtral): each expert's Hessians come from the tokens routed to it;\n"
      "experts with fewer than --moe-min-tokens get RTN (reported per tensor); experts are never\n"
      "rotated and the routers stay in 16 bit.");
  struct Args {
    std::string model, out, format = "nvfp4", method = "mr-gptq", scales, act_order = "static",
                activations = "none", export_kind = "compressed-tensors", dtype, hessians, report,
                max_memory, shard = "5G", moe_calib = "routed", compute = "f32";
    int64_t moe_min_tokens = 128;
    int hadamard = -1;
    double damp = 0.01;
    std::vector<std::string> ignore;
    bool force = false, dry_run = false, resume = false;
    CalibArgs calib;
  };
  auto a = std::make_shared<Args>();
  c->add_option("MODEL", a->model, "Input model directory (config.json + safetensors)")->required();
  c->add_option("OUT", a->out, "Output directory (must not exist unless --force)")->required();
  c->add_option("-f,--format", a->format, "Target format: " + format_names())->capture_default_str();
  c->add_option("-m,--method", a->method, "rtn | gptq | mr-gptq")->capture_default_str();
  c->add_option("--hadamard", a->hadamard, "Rotation block 0|16|32|64|128 (default for mr-gptq: 16 nvfp4 weight-only, 0 nvfp4 with --activations fp4, 32 mxfp4; 0 otherwise)");
  c->add_option("--scales", a->scales, "absmax | mse (default: mse for mr-gptq, absmax otherwise); ablations: mse-absgs (no NVFP4 global-scale search), fpquant (FP-Quant's L2.4 observer), mse-hess (diag(H)-weighted)");
  c->add_option("--act-order", a->act_order, "static | none")->capture_default_str();
  c->add_option("--damp", a->damp, "Relative Hessian damping")->capture_default_str();
  c->add_option("--ignore", a->ignore, "Keep Linears whose module name matches this regex (repeatable)");
  c->add_option("--activations", a->activations, "none (weight-only) | fp4 (W4A4: static NVFP4 input scales from calibration)")->capture_default_str();
  c->add_option("--export", a->export_kind, "compressed-tensors | fp-quant | fp-quant-pseudo | dequant")->capture_default_str();
  c->add_option("--dtype", a->dtype, "Dtype of --export dequant weights: bf16 | f16 | f32 (default: source dtype)");
  c->add_option("--hessians", a->hessians, "Precomputed Hessians (from `fp4q hessians`) instead of calibration");
  c->add_option("--report", a->report, "Write the per-tensor report as JSON to this file");
  c->add_option("--max-memory", a->max_memory, "Refuse to start if the planned peak exceeds this (e.g. 16G; default: physical memory)");
  c->add_option("--max-shard-size", a->shard, "Largest output shard")->capture_default_str();
  c->add_option("--moe-calib", a->moe_calib,
                "MoE expert Hessians: routed (the tokens routed to each expert) | all-tokens (every "
                "expert also runs on every calibration token, for the Hessians only)")->capture_default_str();
  c->add_option("--moe-min-tokens", a->moe_min_tokens,
                "With --moe-calib routed: experts that received fewer routed calibration tokens are "
                "quantized with RTN, reported in the progress line and --report")->capture_default_str();
  c->add_option("--compute", a->compute,
                "f32 | bf16: arithmetic of the calibration forward's Linear products. bf16 (CPUs with "
                "AVX512_BF16): inputs and weights rounded to bf16, float32 accumulation, Hessians from "
                "the bf16 inputs, as GPU quantizers calibrate; f32 is the reference")->capture_default_str();
  c->add_flag("--force", a->force, "Replace OUT if it exists (atomically, at the end)");
  c->add_flag("--resume", a->resume,
              "Continue an interrupted calibrated run from the checkpoint in OUT.tmp-* (same settings and "
              "input files, else refused naming the difference; none found: start over). The output is "
              "byte-identical to an uninterrupted run's");
  c->add_flag("--dry-run", a->dry_run, "Print the plan (what is quantized, sizes), the planned peak memory and a time estimate, and stop");
  a->calib.add(c);
  actions()[c] = [a] {
    pipeline::QuantizeOptions o;
    o.model_dir = a->model;
    o.out_dir = a->out;
    o.settings = pipeline::resolve_settings(format::parse_format(a->format), pipeline::parse_method(a->method),
                                            a->hadamard, a->scales, parse_act_order(a->act_order), a->damp,
                                            parse_acts(a->activations), a->ignore);
    o.export_kind = exporter::parse_export_kind(a->export_kind);
    o.export_dtype = a->dtype;
    o.calib = a->calib.get();
    o.hessians_path = a->hessians;
    o.force = a->force;
    o.resume = a->resume;
    o.dry_run = a->dry_run;
    o.report_path = a->report;
    o.max_memory = a->max_memory.empty() ? 0 : parse_size(a->max_memory, "--max-memory");
    o.max_shard_bytes = static_cast<uint64_t>(parse_size(a->shard, "--max-shard-size"));
    o.moe = pipeline::parse_moe_calib(a->moe_calib, a->moe_min_tokens);
    o.calib_compute = parse_compute_option(a->compute);
    if (!o.calib.dump_path.empty()) {  // also for runs that never calibrate (rtn, --hessians)
      pipeline::dump_calibration(o.model_dir, o.calib);
      o.calib.dump_path.clear();
    }
    if (o.dry_run) {
      std::cout << pipeline::dry_run_text(o);
      return;
    }
    pipeline::run_quantize(o);
  };
}

void add_inspect(CLI::App& app) {
  auto* c = app.add_subcommand("inspect", "List tensors, dtypes, shapes, sizes and quantization config");
  auto path = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  c->add_option("PATH", *path, "A .safetensors file or a model directory")->required();
  c->add_flag("--json", *json, "Machine-readable JSON on stdout");
  actions()[c] = [path, json] {
    const auto j = io::inspect(*path);
    std::cout << (*json ? j.dump(2) + "\n" : io::inspect_text(j));
  };
}

void add_formats(CLI::App& app) {
  auto* c = app.add_subcommand("formats", "List the supported quantization formats");
  auto json = std::make_shared<bool>(false);
  c->add_flag("--json", *json, "Machine-readable JSON on stdout");
  actions()[c] = [json] {
    nlohmann::json j = nlohmann::json::array();
    std::ostringstream s;
    char line[256];
    std::snprintf(line, sizeof line, "%-9s %-5s %-5s %6s %7s %9s  %s\n", "name", "elem", "scale",
                  "group", "bits/w", "mr-gptq", "description");
    s << line;
    for (const auto& f : format::all_formats()) {
      const char* elem = f.element == format::ElementType::kE2M1 ? "e2m1" : "int4";
      const char* scale = f.scale == format::ScaleType::kE4M3 ? "e4m3" : f.scale == format::ScaleType::kE8M0 ? "e8m0"
                        : f.scale == format::ScaleType::kLog8 ? "log8" : "f16";
      j.push_back({{"name", f.name}, {"element", elem}, {"scale", scale}, {"group_size", f.group_size},
                   {"global_scale", f.has_global_scale}, {"bits_per_weight", f.bits_per_weight},
                   {"default_hadamard", f.default_hadamard}, {"description", f.description}});
      std::snprintf(line, sizeof line, "%-9s %-5s %-5s %6d %7.2f %9s  %s\n", f.name, elem, scale,
                    f.group_size, f.bits_per_weight,
                    f.default_hadamard ? ("had" + std::to_string(f.default_hadamard)).c_str() : "-",
                    f.description);
      s << line;
    }
    std::cout << (*json ? j.dump(2) + "\n" : s.str());
  };
}

void add_eval(CLI::App& app) {
  auto* c = app.add_subcommand("eval", "Perplexity of an original or fp4q-quantized model");
  c->footer("Examples:\n  fp4q eval data/models/stories260K --text data/text/wikitext2-test.txt --seqlen 512\n"
            "  fp4q eval out/s-nvfp4 --text data/text/wikitext2-test.txt --activations fp4\n"
            "  fp4q eval out/s-nvfp4 --runtime fp-quant --dtype bf16   # predict transformers + fp_quant in bf16\n"
            "  fp4q eval out/s-nvfp4 --ids ids.json --seqlen 512 --kl-reference data/models/stories260K\n"
            "With --kl-reference the output line also has, per scored token (nats): kl (mean KL(P_ref || P_model)),\n"
            "kl_se (its standard error), kl_median, kl_p90, kl_p99, kl_max, top1 (argmax agreement), top1_se,\n"
            "ref_perplexity, ln_ppl_ratio (mean NLL - reference NLL) and ln_ppl_ratio_se.");
  struct Args {
    std::string dir, text, ids, activations, format, dump_logits, logits_ids, runtime, dtype, kl_reference, dump_tokens;
    int64_t seqlen = 2048, max_windows = 0;
    int hadamard = -1;
    double temperature = 1.0;
  };
  auto a = std::make_shared<Args>();
  c->add_option("MODEL", a->dir, "Original model directory or fp4q output (compressed-tensors)")->required();
  c->add_option("--text", a->text, "Evaluation text (default: bundled WikiText-2 test)");
  c->add_option("--ids", a->ids, "Pre-tokenised evaluation ids instead of --text");
  c->add_option("--seqlen", a->seqlen, "Window length (non-overlapping windows; clipped to max positions)")->capture_default_str();
  c->add_option("--max-windows", a->max_windows, "Evaluate at most this many windows (0 = all)");
  c->add_option("--activations", a->activations, "none | fp4: fake-quantise Linear inputs (default: as the quantized model was made)");
  c->add_option("--format", a->format, "For an original model with --activations fp4: nvfp4 | mxfp4");
  c->add_option("--hadamard", a->hadamard, "For an original model with --activations fp4: rotation block");
  c->add_option("--dump-logits", a->dump_logits, "Write float32 logits [T x vocab] of --logits-ids to this file");
  c->add_option("--logits-ids", a->logits_ids, "Token ids (JSON array / whitespace separated) for --dump-logits");
  c->add_option("--runtime", a->runtime,
                "compressed-tensors | fp-quant: whose activation rotation/quantization rule to emulate "
                "(default: the output layout's own runtime; compressed-tensors for an original model)");
  c->add_option("--dtype", a->dtype, "f32 | bf16: compute dtype to emulate (default f32; bf16 = transformers in bfloat16)");
  c->add_option("--kl-reference", a->kl_reference,
                "Reference model (e.g. the unquantized original), run on the same windows: also report KL(P_ref || "
                "P_model) per token, top-1 agreement and the reference's perplexity (same vocabulary required)");
  c->add_option("--dump-tokens", a->dump_tokens,
                "With --kl-reference: write the per-token scores (window, nll, ref_nll, kl, ent, ref_ent; TSV) to this file, "
                "for token-by-token comparisons of two models on the same ids (tools/paired_compare.py)");
  c->add_option("--temperature", a->temperature,
                "With --kl-reference: divide both models' logits by this before the softmax (every score then refers "
                "to the scaled distributions; e.g. the temperature that calibrates the reference on the text)");
  actions()[c] = [a] {
    pipeline::EvalOptions o;
    o.dir = a->dir;
    // Default text: the bundled WikiText-2 test set, unless only logits were asked for.
    const bool only_logits = !a->dump_logits.empty() && a->text.empty() && a->ids.empty() && a->kl_reference.empty();
    o.text_path = a->text.empty() && a->ids.empty() && !only_logits
                      ? std::string(FP4Q_DATA_DIR) + "/text/wikitext2-test.txt"
                      : a->text;
    o.ids_path = a->ids;
    o.seqlen = a->seqlen;
    o.max_windows = a->max_windows;
    if (!a->activations.empty()) o.activations = static_cast<int>(parse_acts(a->activations));
    if (!a->format.empty()) o.format = static_cast<int>(format::parse_format(a->format));
    o.hadamard = a->hadamard;
    o.dump_logits = a->dump_logits;
    o.logits_ids = a->logits_ids;
    if (!a->runtime.empty()) o.runtime = static_cast<int>(pipeline::parse_act_runtime(a->runtime));
    if (!a->dtype.empty()) o.dtype = pipeline::parse_compute_dtype(a->dtype);
    o.kl_reference = a->kl_reference;
    o.dump_tokens = a->dump_tokens;
    if (!o.dump_tokens.empty() && o.kl_reference.empty())
      throw Error(ErrorKind::kUsage, "--dump-tokens needs --kl-reference", "--dump-tokens");
    o.temperature = a->temperature;  // checked by run_eval
    const auto r = pipeline::run_eval(o);
    if (r.tokens == 0) return;
    std::printf("%s\ttokens=%lld\twindows=%lld\tnll=%.6f\tppl=%.4f", a->dir.c_str(),
                static_cast<long long>(r.tokens), static_cast<long long>(r.windows), r.mean_nll, r.ppl);
    // Field names never contain "ppl=", "nll=" or "tokens=" (scripts match those with .*).
    if (r.kl.computed)
      std::printf("\tkl=%.9g\tkl_se=%.3g\tkl_median=%.6g\tkl_p90=%.6g\tkl_p99=%.6g\tkl_max=%.6g\ttop1=%.6f"
                  "\ttop1_se=%.6f\tref_perplexity=%.4f\tln_ppl_ratio=%.6f\tln_ppl_ratio_se=%.6f",
                  r.kl.kl_mean, r.kl.kl_se, r.kl.kl_median, r.kl.kl_p90, r.kl.kl_p99, r.kl.kl_max, r.kl.top1,
                  r.kl.top1_se, r.kl.ref_ppl, r.kl.dnll_mean, r.kl.dnll_se);
    std::printf("\n");
  };
}

void add_dequant(CLI::App& app) {
  auto* c = app.add_subcommand("dequant", "Write a plain (dequantised, rotation undone) model from an fp4q output");
  struct Args { std::string in, out, dtype; bool force = false; };
  auto a = std::make_shared<Args>();
  c->add_option("QUANT_DIR", a->in, "fp4q output directory (compressed-tensors)")->required();
  c->add_option("OUT_DIR", a->out, "Output model directory")->required();
  c->add_option("--dtype", a->dtype, "bf16 | f16 | f32 (default: the dtype of the unquantized tensors)");
  c->add_flag("--force", a->force, "Replace OUT_DIR if it exists");
  actions()[c] = [a] { pipeline::run_dequant(a->in, a->out, a->dtype, a->force); };
}

void add_tokenize(CLI::App& app) {
  auto* c = app.add_subcommand("tokenize", "Token ids of a text as `fp4q eval --text` scores them (JSON array)");
  c->footer("Example (identical evaluation ids for another tool):\n"
            "  fp4q tokenize MODEL data/text/wikitext2-test.txt -o wt2.json && fp4q eval MODEL --ids wt2.json");
  struct Args { std::string model, text, out; bool no_bos = false; };
  auto a = std::make_shared<Args>();
  c->add_option("MODEL", a->model, "Model directory (its tokenizer.json is used)")->required();
  c->add_option("TEXT", a->text, "UTF-8 text file")->required();
  c->add_option("-o,--out", a->out, "Write the JSON array here (default: stdout)");
  c->add_flag("--no-bos", a->no_bos, "Do not prepend the tokenizer's BOS (eval prepends one)");
  actions()[c] = [a] {
    const auto ids = pipeline::eval_token_ids(a->model, a->text, !a->no_bos);
    const auto s = pipeline::ids_json(ids);
    if (a->out.empty()) std::cout << s;
    else io::write_file_atomic(a->out, s);
  };
}

void add_hessians(CLI::App& app) {
  auto* c = app.add_subcommand("hessians", "Compute calibration Hessians of every Linear input (full-precision model)");
  struct Args { std::string model, out; bool force = false; CalibArgs calib; };
  auto a = std::make_shared<Args>();
  c->add_option("MODEL", a->model, "Model directory")->required();
  c->add_option("OUT", a->out, "Output .safetensors file")->required();
  c->add_flag("--force", a->force, "Replace OUT if it exists");
  a->calib.add(c);
  actions()[c] = [a] { pipeline::run_hessians(a->model, a->out, a->calib.get(), a->force); };
}

void add_report(CLI::App& app) {
  auto* c = app.add_subcommand("report", "Per-layer weight and Hessian-weighted error for several formats/methods");
  c->footer("Example:\n  fp4q report data/models/stories260K --formats nvfp4,mxfp4 --methods rtn,gptq,mr-gptq --format tsv");
  struct Args {
    std::string model, formats = "nvfp4,mxfp4", methods = "rtn,gptq,mr-gptq", table = "text", hessians;
    CalibArgs calib;
  };
  auto a = std::make_shared<Args>();
  c->add_option("MODEL", a->model, "Model directory")->required();
  c->add_option("--formats", a->formats, "Comma-separated formats")->capture_default_str();
  c->add_option("--methods", a->methods, "Comma-separated methods")->capture_default_str();
  c->add_option("--format", a->table, "Output: text | tsv | csv | json")->capture_default_str();
  c->add_option("--hessians", a->hessians, "Precomputed Hessians instead of calibration");
  a->calib.add(c);
  actions()[c] = [a] {
    pipeline::ReportOptions o;
    o.model_dir = a->model;
    auto split = [](const std::string& s) {
      std::vector<std::string> v;
      std::stringstream ss(s);
      for (std::string x; std::getline(ss, x, ',');)
        if (!x.empty()) v.push_back(x);
      return v;
    };
    for (const auto& f : split(a->formats)) o.formats.push_back(format::parse_format(f));
    for (const auto& m : split(a->methods)) o.methods.push_back(pipeline::parse_method(m));
    o.hessians_path = a->hessians;
    o.calib = a->calib.get();
    if (!o.hessians_path.empty() && !o.calib.dump_path.empty()) pipeline::dump_calibration(o.model_dir, o.calib);
    const auto tf = pipeline::parse_table_format(a->table);
    const auto recs = pipeline::run_report(o);
    std::cout << pipeline::records_table(recs, tf);
  };
}

}  // namespace

void add_action(const CLI::App* sub, std::function<void()> action) { actions()[sub] = std::move(action); }

void register_all(CLI::App& app) {
  add_quantize(app);
  add_eval(app);
  add_report(app);
  add_inspect(app);
  add_formats(app);
  add_dequant(app);
  add_hessians(app);
  add_tokenize(app);
  add_bench_commands(app);
}

void run_selected(CLI::App& app) {
  for (auto* sub : app.get_subcommands()) {
    auto it = actions().find(sub);
    if (it != actions().end()) it->second();
  }
}

}  // namespace fp4q::cli
