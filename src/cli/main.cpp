// fp4q command-line entry point. The only place that turns fp4q::Error into exit codes:
//   0 ok, 1 unexpected exception, 2 usage (incl. command-line parse errors), 3 bad input,
//   4 I/O, 5 numerical, 70 internal.
// Logs go to stderr; machine-readable output (inspect --json, report, formats) to stdout.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <unistd.h>
#include <exception>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "commands.h"
#include "fp4q/core/error.h"
#include "fp4q/core/log.h"
#include "fp4q/core/parallel.h"
#include "fp4q/linalg/blas.h"

int main(int argc, char** argv) {
  // OpenBLAS picks its kernels when the library loads, before main(); an old OpenBLAS that does not
  // know this CPU falls back to SSE3 kernels 10x below what the CPU can do (blas.h). Then restart
  // once with OPENBLAS_CORETYPE naming the right kernels; the user's own OPENBLAS_CORETYPE (or
  // FP4Q_KEEP_BLAS_CORE=1) keeps the library's choice.
  std::string blas_note;
  if (std::getenv("FP4Q_KEEP_BLAS_CORE") == nullptr) {
    if (const char* from = std::getenv("FP4Q_BLAS_CORE_WAS")) {
      blas_note = std::string("OpenBLAS picked its ") + from + " kernels for this CPU; running with OPENBLAS_CORETYPE=" +
                  fp4q::linalg::openblas_core_name() +
                  " (set OPENBLAS_CORETYPE or FP4Q_KEEP_BLAS_CORE=1 to choose yourself)";
      unsetenv("FP4Q_BLAS_CORE_WAS");
    } else if (const std::string core = fp4q::linalg::openblas_core_upgrade(); !core.empty()) {
      setenv("FP4Q_BLAS_CORE_WAS", fp4q::linalg::openblas_core_name().c_str(), 1);
      setenv("OPENBLAS_CORETYPE", core.c_str(), 1);
      execv("/proc/self/exe", argv);
      unsetenv("FP4Q_BLAS_CORE_WAS");  // exec failed: carry on with the slow kernels
      unsetenv("OPENBLAS_CORETYPE");
    }
  }
  CLI::App app{
      "fp4q " FP4Q_VERSION " — MR-GPTQ post-training quantization of Hugging Face LLMs to NVFP4 / MXFP4.\n"
      "Reads a model directory (config.json + safetensors), writes packed FP4 weights that vLLM and\n"
      "transformers load. CPU only.\n\n"
      "Examples:\n"
      "  fp4q quantize data/models/stories260K out/nvfp4                 # MR-GPTQ NVFP4, compressed-tensors\n"
      "  fp4q quantize MODEL OUT --format mxfp4 --activations fp4      # W4A4 MXFP4\n"
      "  fp4q quantize MODEL OUT --method rtn --export fp-quant-pseudo\n"
      "  fp4q eval OUT --text data/text/wikitext2-test.txt             # perplexity\n"
      "  fp4q inspect OUT --json | jq .quantization_config\n"
      "  fp4q report MODEL --formats nvfp4,mxfp4 --methods rtn,mr-gptq --format tsv"};
  app.set_version_flag("--version", "fp4q " FP4Q_VERSION);
  app.require_subcommand(1);
  app.fallthrough();  // global options (-t, -q, -v) may also follow the subcommand
  int verbosity = 1;
  app.add_flag_function("-v,--verbose", [&](int64_t n) { verbosity = 1 + static_cast<int>(n); },
                        "More log output (debug)");
  app.add_flag_function("-q,--quiet", [&](int64_t) { verbosity = 0; }, "Only warnings and errors");
  int threads = 0;
  app.add_option("-t,--threads", threads, "Threads for OpenMP and BLAS (default: all cores)");

  // A file-size limit (ulimit -f / RLIMIT_FSIZE) must end like a full disk: write(2) fails with
  // EFBIG, the I/O error names the file and the temporary output directory is removed. By
  // default SIGXFSZ would kill the process instead and leave OUT.tmp-* behind.
  std::signal(SIGXFSZ, SIG_IGN);
  fp4q::cli::register_all(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help / --version exit 0; every command-line error is a usage error (exit code 2).
    return app.exit(e) == 0 ? 0 : static_cast<int>(fp4q::ErrorKind::kUsage);
  }
  try {
    fp4q::init_logging(verbosity);
    if (!blas_note.empty()) spdlog::info("{}", blas_note);
    fp4q::set_num_threads(threads);
    fp4q::cli::run_selected(app);
    return 0;
  } catch (const fp4q::Error& e) {
    std::fprintf(stderr, "fp4q: %s: %s\n", fp4q::error_kind_name(e.kind()), e.what());
    return static_cast<int>(e.kind());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fp4q: unexpected error: %s\n", e.what());
    return 1;
  }
}
