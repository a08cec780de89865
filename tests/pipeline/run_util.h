// Helpers for tests that run the fp4q binary: a scratch directory and a command runner.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace fp4q_test {

struct Run {
  int code = 0;
  std::string out;  // stdout (and stderr when merged)
  std::string err;  // stderr when captured separately
};

// Runs `fp4q ARGS`. merge_stderr: stderr goes to `out`; otherwise it is captured into `err`
// through a file in `scratch`.
// Runs a shell command line: its stdout in `out`, its exit status in `code` (-1 when it did not
// exit normally; a shell reports a killed child as 128 + signal).
inline Run run_command(const std::string& cmd) {
  Run r;
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int st = pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

inline Run run_fp4q(const std::string& args, bool merge_stderr = true, const std::string& scratch = "/tmp") {
  const std::string err_path = scratch + "/stderr.txt";
  Run r = run_command(std::string(FP4Q_BINARY) + " " + args + (merge_stderr ? " 2>&1" : " 2>" + err_path));
  if (!merge_stderr) {
    if (FILE* e = fopen(err_path.c_str(), "rb")) {
      char buf[4096];
      size_t n;
      while ((n = fread(buf, 1, sizeof buf, e)) > 0) r.err.append(buf, n);
      fclose(e);
    }
  }
  return r;
}

// A fresh directory under /tmp, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/fp4q-test-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& s) const { return path_ + "/" + s; }

 private:
  std::string path_;
};

}  // namespace fp4q_test
