// Shared helpers of the model tests: golden files, temp model directories, comparisons.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

namespace fp4q::model::testing {

inline std::string data_dir() { return FP4Q_DATA_DIR; }
inline std::string stories_dir() { return data_dir() + "/models/stories260K"; }
inline std::string tiny_dir() { return std::string(FP4Q_TEST_DATA_DIR) + "/tiny_models"; }

inline nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return nlohmann::json::parse(ss.str());
}

inline void write_json(const std::string& path, const nlohmann::json& j) {
  std::ofstream f(path);
  f << j.dump(1);
}

// float32 little-endian file -> floats (tests run on little-endian hosts only).
inline std::vector<float> read_f32_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<float> out(bytes.size() / 4);
  std::memcpy(out.data(), bytes.data(), out.size() * 4);
  return out;
}

// A fresh directory under the temp dir holding a copy of `src`'s model.safetensors and a
// config.json produced by `edit` from src's config.
template <class Edit>
std::string copy_model_with_config(const std::string& src, const std::string& tag, Edit edit) {
  namespace fs = std::filesystem;
  static int counter = 0;
  fs::path dir = fs::temp_directory_path() /
                 ("fp4q_model_test_" + tag + "_" + std::to_string(::getpid()) + "_" +
                  std::to_string(counter++));
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy_file(fs::path(src) / "model.safetensors", dir / "model.safetensors");
  nlohmann::json j = read_json(src + "/config.json");
  edit(j);
  write_json((dir / "config.json").string(), j);
  return dir.string();
}

struct Diff {
  double max_abs = 0, max_ref = 0, worst_scaled = 0;  // worst |d| / (1 + |ref|)
  double rel() const { return max_ref > 0 ? max_abs / max_ref : max_abs; }
};

template <class A, class B>
Diff compare(const A& got, const B& ref, size_t n) {
  Diff d;
  for (size_t i = 0; i < n; ++i) {
    double e = std::fabs(static_cast<double>(got[i]) - static_cast<double>(ref[i]));
    d.max_abs = std::max(d.max_abs, e);
    d.max_ref = std::max(d.max_ref, std::fabs(static_cast<double>(ref[i])));
    d.worst_scaled = std::max(d.worst_scaled, e / (1.0 + std::fabs(static_cast<double>(ref[i]))));
  }
  return d;
}

inline std::vector<float> random_vec(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(g);
  return v;
}

}  // namespace fp4q::model::testing
