// `fp4q synth` (synthetic model directories) and `fp4q bench` (phase timings of the real
// pipeline on synthetic layers).
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>
#include <memory>

#include "commands.h"
#include "fp4q/core/error.h"
#include "fp4q/exporter/layout.h"
#include "fp4q/io/writer.h"
#include "fp4q/model/synthetic.h"
#include "fp4q/pipeline/bench.h"
#include "fp4q/pipeline/plan.h"

namespace fp4q::cli {

namespace {

std::string shape_list(const char* sep) {
  std::string s;
  for (const auto& n : model::model_shape_names()) s += (s.empty() ? "" : sep) + n;
  return s;
}

void add_synth(CLI::App& app) {
  auto* c = app.add_subcommand("synth", "Write a synthetic model directory with real layer shapes (random weights)");
  c->footer("Examples:\n"
            "  fp4q synth out/llama8b-2l --shape llama3-8b --layers 2\n"
            "  fp4q synth out/tiny --shape tiny --ids 65536   # + random-ids.txt for --calib-ids\n"
            "  fp4q synth out/moe --shape qwen3-30b-a3b --layers 2   # MoE: 128 experts per layer\n"
            "Shapes: " + shape_list(", ") + ".");
  struct Args {
    std::string out, shape = "tiny", dtype = "bf16";
    int layers = 0;
    int64_t vocab = 0, ids = 0;
    uint64_t seed = 1;
    bool force = false;
  };
  auto a = std::make_shared<Args>();
  c->add_option("OUT", a->out, "Output model directory (must not exist unless --force)")->required();
  c->add_option("--shape", a->shape, "Preset shape")->capture_default_str();
  c->add_option("--layers", a->layers, "Decoder layers (default: the preset's)");
  c->add_option("--vocab", a->vocab, "Vocabulary size (default: the preset's)");
  c->add_option("--dtype", a->dtype, "Weight dtype: bf16 | f16 | f32")->capture_default_str();
  c->add_option("--seed", a->seed, "Seed of the weights")->capture_default_str();
  c->add_option("--ids", a->ids, "Also write this many random token ids to OUT/random-ids.txt");
  c->add_flag("--force", a->force, "Replace OUT if it exists");
  add_action(c, [a] {
    model::ModelShape s = model::model_shape(a->shape);
    if (a->layers < 0 || a->vocab < 0)
      throw Error(ErrorKind::kUsage, "--layers and --vocab must be positive", "synth");
    if (a->layers > 0) s.n_layers = a->layers;
    if (a->vocab > 0) s.vocab = a->vocab;
    io::AtomicDir out(a->out, a->force);
    model::write_synthetic_model(out.path(), s, exporter::parse_float_dtype(a->dtype), a->seed, a->ids);
    out.commit();
    std::fprintf(stderr, "wrote %s: %s, %d layers, %lld parameters per layer\n", a->out.c_str(),
                 s.name.c_str(), s.n_layers, static_cast<long long>(s.layer_params()));
  });
}

std::vector<int> parse_threads(const std::string& s) {
  std::vector<int> v;
  size_t p = 0;
  while (p < s.size()) {
    size_t e = s.find(',', p);
    if (e == std::string::npos) e = s.size();
    const std::string t = s.substr(p, e - p);
    char* end = nullptr;
    const long n = std::strtol(t.c_str(), &end, 10);
    if (t.empty() || *end || n < 1 || n > 4096)
      throw Error(ErrorKind::kUsage, "cannot parse thread count '" + t + "'", "--threads",
                  "give a comma-separated list of positive numbers, e.g. 1,2,16");
    v.push_back(static_cast<int>(n));
    p = e + 1;
  }
  return v;
}

void add_bench(CLI::App& app) {
  auto* c = app.add_subcommand("bench", "Time every phase of the real pipeline on one synthetic layer of a real model shape");
  c->footer("Examples:\n"
            "  fp4q bench --shape llama3-8b --samples 16 --seqlen 2048 --threads 1,2\n"
            "  fp4q bench --shape tiny --json\n"
            "  fp4q bench --hidden 5120 --intermediate 17408 --heads 40 --kv-heads 8 --format mxfp4\n"
            "Each phase: seconds, GFLOP, GFLOP/s and the ratio to OpenBLAS SGEMM measured on the same\n"
            "threads in the same run; plus the projected time of the whole model at 128 x 2048 tokens.");
  struct Args {
    std::string shape = "llama3-8b", threads, format = "nvfp4", method = "mr-gptq", activations = "none", work_dir,
                compute = "f32";
    int64_t hidden = 0, intermediate = 0, samples = 16, seqlen = 2048;
    int heads = 0, kv_heads = 0, head_dim = 0, layers = 0;
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  c->add_option("--shape", a->shape, "Preset: " + shape_list(" | "))->capture_default_str();
  c->add_option("--hidden", a->hidden, "Override: hidden size");
  c->add_option("--intermediate", a->intermediate, "Override: intermediate size");
  c->add_option("--heads", a->heads, "Override: attention heads");
  c->add_option("--kv-heads", a->kv_heads, "Override: key/value heads");
  c->add_option("--head-dim", a->head_dim, "Override: head dimension (default hidden/heads for overrides)");
  c->add_option("--layers", a->layers, "Override: layers of the whole model (for the projection)");
  c->add_option("--samples", a->samples, "Calibration sequences")->capture_default_str();
  c->add_option("--seqlen", a->seqlen, "Tokens per sequence")->capture_default_str();
  c->add_option("--threads", a->threads, "Comma-separated thread counts, e.g. 1,2,16 (default: all cores)");
  c->add_option("-f,--format", a->format, "nvfp4 | mxfp4 | ...")->capture_default_str();
  c->add_option("-m,--method", a->method, "rtn | gptq | mr-gptq")->capture_default_str();
  c->add_option("--activations", a->activations, "none | fp4")->capture_default_str();
  c->add_option("--compute", a->compute, "f32 | bf16: calibration Linear products (as quantize --compute)")->capture_default_str();
  c->add_option("--work-dir", a->work_dir, "Directory for the temporary synthetic model (default $TMPDIR or /tmp)");
  c->add_flag("--json", a->json, "JSON array of phase rows on stdout");
  add_action(c, [a] {
    pipeline::BenchOptions o;
    o.shape = model::model_shape(a->shape);
    if (a->hidden > 0 || a->heads > 0 || a->intermediate > 0 || a->kv_heads > 0) o.shape.name = "custom";
    if (a->hidden > 0) o.shape.hidden = a->hidden;
    if (a->intermediate > 0) o.shape.intermediate = a->intermediate;
    if (a->heads > 0) o.shape.n_heads = a->heads;
    if (a->kv_heads > 0) o.shape.n_kv_heads = a->kv_heads;
    if (a->head_dim > 0) o.shape.head_dim = a->head_dim;
    else if (o.shape.name == "custom") o.shape.head_dim = static_cast<int>(o.shape.hidden / o.shape.n_heads);
    if (a->layers > 0) o.shape.n_layers = a->layers;
    if (o.shape.n_heads % o.shape.n_kv_heads != 0 || o.shape.head_dim % 2 != 0)
      throw Error(ErrorKind::kUsage, "heads must be a multiple of kv-heads and head_dim even", "bench");
    o.samples = a->samples;
    o.seqlen = a->seqlen;
    if (!a->threads.empty()) o.threads = parse_threads(a->threads);
    o.format = format::parse_format(a->format);
    o.method = pipeline::parse_method(a->method);
    if (a->activations == "fp4") o.activations = exporter::Activations::kFp4;
    else if (a->activations != "none")
      throw Error(ErrorKind::kUsage, "unknown activation mode '" + a->activations + "'", "--activations", "none or fp4");
    o.work_dir = a->work_dir;
    o.calib_compute = parse_compute_option(a->compute);
    const auto runs = pipeline::run_bench(o);
    std::fputs((a->json ? pipeline::bench_json(o, runs) : pipeline::bench_text(o, runs)).c_str(), stdout);
  });
}

}  // namespace

void add_bench_commands(CLI::App& app) {
  add_synth(app);
  add_bench(app);
}

}  // namespace fp4q::cli
