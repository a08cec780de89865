// fp4q/core/error.h — the one exception type of fp4q.
//
// Every failure inside the library is an fp4q::Error carrying
//   kind  — what class of failure (decides the process exit code in main, nowhere else),
//   what  — what went wrong, with expected vs actual where known,
//   where — the file / tensor / field / layer it concerns (may be empty),
//   hint  — what the user can do about it (may be empty).
// Nothing outside src/cli/main.cpp calls exit(). OpenMP regions capture exceptions with
// fp4q::ParallelErrors (core/parallel.h) and rethrow them after the region.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

namespace fp4q {

enum class ErrorKind : int {
  kUsage = 2,     // bad command line / option combination
  kInput = 3,     // malformed or unsupported input file / model / tensor
  kIo = 4,        // the OS refused: open, read, write, rename, mmap, disk full
  kNumeric = 5,   // a numerical failure (non-finite values, Cholesky failed after damping)
  kInternal = 70  // a bug in fp4q: an invariant did not hold
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, std::string what, std::string where = {}, std::string hint = {})
      : std::runtime_error(compose(what, where, hint)),
        kind_(kind), what_(std::move(what)), where_(std::move(where)), hint_(std::move(hint)) {}

  ErrorKind kind() const { return kind_; }
  const std::string& message() const { return what_; }
  const std::string& where() const { return where_; }
  const std::string& hint() const { return hint_; }

 private:
  static std::string compose(const std::string& what, const std::string& where,
                             const std::string& hint) {
    std::string s;
    if (!where.empty()) s += where + ": ";
    s += what;
    if (!hint.empty()) s += " (hint: " + hint + ")";
    return s;
  }
  ErrorKind kind_;
  std::string what_, where_, hint_;
};

inline const char* error_kind_name(ErrorKind k) {
  switch (k) {
    case ErrorKind::kUsage: return "usage error";
    case ErrorKind::kInput: return "input error";
    case ErrorKind::kIo: return "I/O error";
    case ErrorKind::kNumeric: return "numerical error";
    case ErrorKind::kInternal: return "internal error";
  }
  return "error";
}

}  // namespace fp4q

// FP4Q_CHECK(cond, kind, what, where) — throw fp4q::Error when cond is false.
#define FP4Q_CHECK(cond, kind, what, where)                           \
  do {                                                                \
    if (!(cond)) throw ::fp4q::Error((kind), (what), (where));        \
  } while (0)

// FP4Q_ASSERT(cond) — internal invariant; names the source line.
#define FP4Q_ASSERT(cond)                                                              \
  do {                                                                                 \
    if (!(cond))                                                                       \
      throw ::fp4q::Error(::fp4q::ErrorKind::kInternal, "invariant failed: " #cond,    \
                          std::string(__FILE__) + ":" + std::to_string(__LINE__));     \
  } while (0)
