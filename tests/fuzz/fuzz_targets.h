// tests/fuzz/fuzz_targets.h — one function per parser of outside input, shared by the libFuzzer
// binaries (tests/fuzz/<target>_fuzz.cpp, built with -DFP4Q_FUZZ=ON, run by tools/fuzz.sh) and by
// the regression replay in the normal test suite (tests/robustness/fuzz_replay_test.cpp).
//
// Contract of every target function run(data, size):
//   * input accepted  -> returns normally, after checking the invariants the parser promises
//                        about what it returned (FUZZ_INVARIANT);
//   * input rejected  -> throws fp4q::Error of kind kInput, kIo or kUsage naming what is wrong.
// Everything else is a bug: a crash or sanitizer report, an fp4q::Error of kind kInternal (a
// failed FP4Q_ASSERT), any other exception type (a nlohmann::json type_error, std::out_of_range
// from std::stoi, std::bad_alloc from a huge allocation, ...) — in the fp4q binary those end as
// exit code 1/70 instead of "bad input" — or a broken invariant (FuzzBug).
//
// Inputs that hold several files (a model directory) separate them by a NUL byte, which can
// never occur inside a JSON text: "config.json text" \0 "model.safetensors bytes". Targets that
// need files write them into a private scratch directory (under /dev/shm when it exists).
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "fp4q/core/error.h"
#include "fp4q/core/parallel.h"
#include "fp4q/exporter/importer.h"
#include "fp4q/exporter/layout.h"
#include "fp4q/format/format.h"
#include "fp4q/io/safetensors.h"
#include "fp4q/model/config.h"
#include "fp4q/model/model.h"
#include "fp4q/model/tokenizer.h"
#include "fp4q/pipeline/hessian_file.h"
#include "fp4q/pipeline/plan.h"

namespace fp4q_fuzz {

// A broken parser invariant (never thrown for bad input; always a bug).
struct FuzzBug : std::logic_error {
  using std::logic_error::logic_error;
};

#define FUZZ_INVARIANT(cond)                                                              \
  do {                                                                                    \
    if (!(cond))                                                                          \
      throw ::fp4q_fuzz::FuzzBug(std::string("invariant failed: " #cond " at ") +         \
                                 __FILE__ + ":" + std::to_string(__LINE__));              \
  } while (0)

inline std::string as_string(const uint8_t* d, size_t n) {
  return std::string(reinterpret_cast<const char*>(d), n);
}

// Splits at the first NUL byte: (before, after); `after` is empty when there is no NUL.
inline std::pair<std::string, std::string> split_nul(const uint8_t* d, size_t n) {
  const std::string s = as_string(d, n);
  const size_t z = s.find('\0');
  if (z == std::string::npos) return {s, std::string()};
  return {s.substr(0, z), s.substr(z + 1)};
}

// A per-process scratch directory, created once, removed at exit.
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    std::string base = std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
    std::string tmpl = base + "/fp4q-fuzz-XXXXXX";
    std::vector<char> b(tmpl.begin(), tmpl.end());
    b.push_back('\0');
    if (!::mkdtemp(b.data())) {
      std::perror("mkdtemp");
      std::abort();
    }
    static std::string keep = b.data();
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(keep, ec);
    });
    return keep;
  }();
  return dir;
}

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) {
    std::perror(path.c_str());
    std::abort();
  }
}

// An empty sub-directory `name` of the scratch directory (files of the previous input removed).
inline std::string fresh_dir(const std::string& name) {
  const std::string d = scratch_dir() + "/" + name;
  std::error_code ec;
  std::filesystem::remove_all(d, ec);
  std::filesystem::create_directories(d);
  return d;
}

// Checks every accessor of an accepted safetensors file.
inline void check_safetensors(const fp4q::io::SafetensorsFile& f) {
  FUZZ_INVARIANT(f.metadata().is_object());
  const uint64_t data_len = f.file_size() - 8 - f.header_size();
  FUZZ_INVARIANT(f.header_size() + 8 <= f.file_size());
  for (const auto& t : f.tensors()) {
    FUZZ_INVARIANT(f.find(t.name) == &t);
    FUZZ_INVARIANT(t.offset + t.nbytes <= data_len);
    FUZZ_INVARIANT(static_cast<uint64_t>(t.numel()) * fp4q::io::dtype_size(t.dtype) == t.nbytes);
    volatile uint8_t sink = 0;
    const uint8_t* p = f.data(t);
    for (uint64_t i = 0; i < t.nbytes; i += 61) sink = sink ^ p[i];
    if (t.nbytes) sink = sink ^ p[t.nbytes - 1];
    if (fp4q::io::is_float_dtype(t.dtype)) {
      const auto v = f.read_f32(t);
      FUZZ_INVARIANT(v.size() == static_cast<size_t>(t.numel()));
    }
  }
}

// ---- targets --------------------------------------------------------------------------------

// A .safetensors file (header JSON, dtypes, shapes, byte ranges), as io::SafetensorsFile::open
// parses it (from_bytes runs the same code on memory).
inline void safetensors(const uint8_t* d, size_t n) {
  auto f = fp4q::io::SafetensorsFile::from_bytes("fuzz.safetensors", std::vector<uint8_t>(d, d + n));
  check_safetensors(f);
}

// model.safetensors.index.json of a sharded model directory holding two valid shards, a garbage
// file, a sub-directory and a FIFO with .safetensors names (a weight_map may point anywhere).
inline void index_json(const uint8_t* d, size_t n) {
  static const std::string dir = [] {
    const std::string dd = fresh_dir("index");
    auto st = [](const std::string& header, const std::string& data) {
      std::string h = header;
      h.append((8 - h.size() % 8) % 8, ' ');
      std::string out(8, '\0');
      for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((h.size() >> (8 * i)) & 0xff);
      return out + h + data;
    };
    write_file(dd + "/model-00001-of-00002.safetensors",
               st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                  R"("b":{"dtype":"BF16","shape":[2,2],"data_offsets":[8,16]}})",
                  std::string(16, '\x3f')));
    write_file(dd + "/model-00002-of-00002.safetensors",
               st(R"({"__metadata__":{"format":"pt"},"c":{"dtype":"F16","shape":[3],"data_offsets":[0,6]}})",
                  std::string(6, '\x3c')));
    write_file(dd + "/garbage.safetensors", "not a safetensors file at all");
    std::filesystem::create_directories(dd + "/dir.safetensors");
    ::mkfifo((dd + "/fifo.safetensors").c_str(), 0644);
    return dd;
  }();
  write_file(dir + "/model.safetensors.index.json", as_string(d, n));
  const auto mf = fp4q::io::ModelFiles::open(dir);
  FUZZ_INVARIANT(!mf.index_path().empty());
  uint64_t total = 0;
  for (const auto& name : mf.names()) {
    FUZZ_INVARIANT(mf.has(name));
    const auto& t = mf.info(name);
    FUZZ_INVARIANT(t.name == name);
    total += t.nbytes;
    if (fp4q::io::is_float_dtype(t.dtype))
      FUZZ_INVARIANT(mf.read_f32(name).size() == static_cast<size_t>(t.numel()));
  }
  FUZZ_INVARIANT(total == mf.total_bytes());
}

// config.json as ModelConfig::load parses it (both with and without quantization_config), and
// the model dtype the exporters read from it.
inline void config_json(const uint8_t* d, size_t n) {
  const std::string text = as_string(d, n);
  fp4q::model::ModelConfig c;
  try {
    c = fp4q::model::ModelConfig::parse(text, "config.json", false);
  } catch (const fp4q::Error&) {
    c = fp4q::model::ModelConfig::parse(text, "config.json", true);
  }
  FUZZ_INVARIANT(c.hidden > 0 && c.intermediate > 0 && c.n_layers > 0 && c.n_heads > 0);
  FUZZ_INVARIANT(c.n_kv_heads > 0 && c.head_dim > 0 && c.vocab > 0);
  FUZZ_INVARIANT(c.head_dim % 2 == 0 && c.n_heads % c.n_kv_heads == 0);
  FUZZ_INVARIANT(c.layer_sliding_window.size() == static_cast<size_t>(c.n_layers));
  FUZZ_INVARIANT(c.q_dim() > 0 && c.kv_dim() > 0);
  FUZZ_INVARIANT(std::isfinite(c.rope_theta) && c.rope_theta > 0);
  (void)fp4q::exporter::config_dtype(nlohmann::json::parse(text));
}

// tokenizer.json [\0 tokenizer_config.json], then encode/decode of fixed texts.
inline void tokenizer_json(const uint8_t* d, size_t n) {
  const auto [tj, tc] = split_nul(d, n);
  const auto tok = fp4q::model::Tokenizer::from_json_text(tj, tc, "tokenizer.json");
  const int vs = tok.vocab_size();
  FUZZ_INVARIANT(vs >= 0);
  FUZZ_INVARIANT(tok.bos_id() == -1 || (tok.bos_id() >= 0 && tok.bos_id() < vs));
  FUZZ_INVARIANT(tok.eos_id() == -1 || (tok.eos_id() >= 0 && tok.eos_id() < vs));
  static const char* kTexts[] = {
      "Hello, world! It's 2024: 12345 tokens.", " leading space\tand\ttabs\n\nnewlines  ",
      "caf\xc3\xa9 na\xc3\xafve \xe2\x80\x94 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x98\x80",
      "<s></s><unk><|endoftext|><|begin_of_text|> special?", "", "e\xcc\x81 A\xcc\x8a"};
  for (const char* text : kTexts) {
    for (bool special : {true, false}) {
      const auto ids = tok.encode(text, special);
      for (int32_t id : ids) FUZZ_INVARIANT(id >= 0 && id < vs);
      (void)tok.decode(ids);
    }
  }
  for (int32_t id : {-1, 0, 1, 2, 255, 256, vs - 1, vs, 1 << 30}) (void)tok.id_to_token(id);
  (void)tok.decode({0, 1, 2, -5, vs, 1 << 30});
}

// The text of a --calib-ids / --ids file.
inline void token_ids(const uint8_t* d, size_t n) {
  const auto ids = fp4q::model::parse_token_ids(as_string(d, n), "ids.txt");
  FUZZ_INVARIANT(!ids.empty());
  for (int32_t id : ids) FUZZ_INVARIANT(id >= 0);
}

// A --hessians file: every "*.hessian" entry is read back as the pipeline reads it.
inline void hessian_file(const uint8_t* d, size_t n) {
  auto f = fp4q::io::SafetensorsFile::from_bytes("fuzz-hessians.safetensors",
                                                 std::vector<uint8_t>(d, d + n));
  std::vector<std::pair<std::string, int64_t>> wanted;
  for (const auto& t : f.tensors()) {
    const std::string suf = ".hessian";
    if (t.name.size() > suf.size() && t.name.compare(t.name.size() - suf.size(), suf.size(), suf) == 0)
      wanted.emplace_back(t.name.substr(0, t.name.size() - suf.size()),
                          t.shape.empty() ? 1 : t.shape[0]);
  }
  const auto hf = fp4q::pipeline::HessianFile::from_safetensors(std::move(f));
  for (const auto& [module, in] : wanted) {
    int64_t samples = 0;
    const auto h = hf.read(module, in, &samples);
    FUZZ_INVARIANT(static_cast<int64_t>(h.size()) == in * in);
    FUZZ_INVARIANT(samples > 0);
    for (float x : h) FUZZ_INVARIANT(std::isfinite(x));
    for (int64_t i = 0; i < in; ++i) FUZZ_INVARIANT(h[i * in + i] >= 0.0f);
  }
  (void)fp4q::pipeline::hessian_key_module(wanted.empty() ? std::string("x") : wanted[0].first);
}

// A quantized model directory written by fp4q (config.json \0 model.safetensors): open, every
// module loaded and dequantized, as `fp4q eval` / `fp4q dequant` do.
inline void importer(const uint8_t* d, size_t n) {
  const auto [cfg, st] = split_nul(d, n);
  const std::string dir = fresh_dir("importer");
  write_file(dir + "/config.json", cfg);
  write_file(dir + "/model.safetensors", st);
  const auto im = fp4q::exporter::ImportedModel::open(dir);
  FUZZ_INVARIANT(!im.quantized_modules().empty());
  FUZZ_INVARIANT(fp4q::io::is_float_dtype(im.model_dtype()));
  for (const auto& m : im.quantized_modules()) {
    const auto ql = im.load(m);
    const auto& q = ql.q;
    FUZZ_INVARIANT(q.rows > 0 && q.cols > 0);
    FUZZ_INVARIANT(q.codes.size() == static_cast<size_t>(q.rows * q.cols));
    FUZZ_INVARIANT(q.scales.rows == q.rows);
    FUZZ_INVARIANT(q.scales.codes.size() == static_cast<size_t>(q.scales.rows * q.scales.groups));
    FUZZ_INVARIANT(q.scales.values.size() == q.scales.codes.size());
    std::vector<float> w(static_cast<size_t>(q.rows * q.cols));
    fp4q::format::dequantize(q, w.data());
    for (float x : w) FUZZ_INVARIANT(std::isfinite(x));
  }
  for (const auto& t : im.passthrough_tensors()) FUZZ_INVARIANT(im.files().has(t));
}

// An input model directory (config.json \0 model.safetensors) as `fp4q quantize` opens it:
// the quantization plan from the tensor names and shapes, and model::Model::open.
inline void model_dir(const uint8_t* d, size_t n) {
  const auto [cfg, st] = split_nul(d, n);
  const std::string dir = fresh_dir("model");
  write_file(dir + "/config.json", cfg);
  write_file(dir + "/model.safetensors", st);
  const auto files = fp4q::io::ModelFiles::open(dir);
  const auto settings = fp4q::pipeline::resolve_settings(
      fp4q::format::FormatId::kNVFP4, fp4q::pipeline::Method::kMrGptq, -1, "", true, 0.01,
      fp4q::exporter::Activations::kNone, {});
  const auto plan = fp4q::pipeline::make_plan(files, settings);
  FUZZ_INVARIANT(plan.num_layers > 0 && !plan.linears.empty());
  for (const auto& l : plan.linears) {
    FUZZ_INVARIANT(l.layer >= 0 && l.layer < plan.num_layers);
    FUZZ_INVARIANT(!l.quantize || (l.in > 0 && l.in % 16 == 0));
  }
  const auto model = fp4q::model::Model::open(dir);
  FUZZ_INVARIANT(model.config().n_layers > 0);
}

// Calibration / evaluation text through the bundled tokenizers (first byte picks one).
inline void tokenize_text(const uint8_t* d, size_t n) {
  static const std::vector<fp4q::model::Tokenizer> toks = [] {
    std::vector<fp4q::model::Tokenizer> v;
    const std::string td = std::string(FP4Q_TEST_DATA_DIR) + "/tokenizer/";
    v.push_back(fp4q::model::Tokenizer::from_dir(std::string(FP4Q_DATA_DIR) + "/models/stories260K"));
    for (const char* name : {"bytelevel_gpt2", "bytelevel_llama3", "bytelevel_qwen2",
                             "stories260K_metaspace", "stories260K_split", "stories260K_whitespace",
                             "stories260K_wssplit"})
      v.push_back(fp4q::model::Tokenizer::from_file(td + name + ".tokenizer.json"));
    return v;
  }();
  if (n == 0) return;
  const auto& tok = toks[d[0] % toks.size()];
  const std::string text = as_string(d + 1, n - 1);
  const auto ids = tok.encode(text, (d[0] / toks.size()) % 2 == 0);
  for (int32_t id : ids) FUZZ_INVARIANT(id >= 0 && id < tok.vocab_size());
  (void)tok.decode(ids);
}

struct Target {
  const char* name;
  void (*run)(const uint8_t*, size_t);
};

inline const std::vector<Target>& targets() {
  static const std::vector<Target> t = {
      {"safetensors", safetensors}, {"index", index_json},     {"config", config_json},
      {"tokenizer", tokenizer_json}, {"ids", token_ids},       {"hessian", hessian_file},
      {"importer", importer},       {"model_dir", model_dir},  {"tokenize", tokenize_text}};
  return t;
}

// Quiet logs, one thread: what every fuzzer and the replay test set up first.
inline void init() {
  spdlog::set_level(spdlog::level::off);
  fp4q::set_num_threads(1);
}

// libFuzzer entry: rejected input (fp4q::Error, not kInternal) is fine; anything else aborts so
// that libFuzzer records the input.
inline int entry(void (*run)(const uint8_t*, size_t), const uint8_t* d, size_t n) {
  try {
    run(d, n);
  } catch (const fp4q::Error& e) {
    if (e.kind() == fp4q::ErrorKind::kInternal) {
      std::fprintf(stderr, "fp4q-fuzz: internal error on bad input: %s\n", e.what());
      std::abort();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fp4q-fuzz: unexpected exception: %s\n", e.what());
    std::abort();
  }
  return 0;
}

}  // namespace fp4q_fuzz

// One libFuzzer binary per target: FP4Q_FUZZ_MAIN(safetensors) in tests/fuzz/safetensors_fuzz.cpp.
#define FP4Q_FUZZ_MAIN(fn)                                                        \
  extern "C" int LLVMFuzzerInitialize(int*, char***) {                            \
    ::fp4q_fuzz::init();                                                          \
    return 0;                                                                     \
  }                                                                               \
  extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {       \
    return ::fp4q_fuzz::entry(::fp4q_fuzz::fn, data, size);                       \
  }
