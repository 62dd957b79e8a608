// SPDX-License-Identifier: MIT
// Helpers for the batch tests: the `v4rt` binary run as a child process (wait with a deadline,
// kill), the embedded tiny model written once into the build tree by `v4rt init-model`, request
// files, and output normalisation (`created` is the job's start time, the only field that differs
// between two separate jobs over the same input and seed).
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

extern char** environ;

namespace v4rt::launch::batch::testing {

namespace fs = std::filesystem;

// A child process with stdout and stderr sent to `log`.
struct Child {
  pid_t pid = -1;

  static Child start(const std::vector<std::string>& argv, const std::string& log) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
    posix_spawn_file_actions_addclose(&fa, STDIN_FILENO);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    Child c;
    if (posix_spawn(&c.pid, args[0], &fa, nullptr, args.data(), environ) != 0) c.pid = -1;
    posix_spawn_file_actions_destroy(&fa);
    return c;
  }

  // Exit status (128 + signal when killed), or -1 after `timeout` (the child is then killed).
  int wait(std::chrono::seconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      int status = 0;
      const pid_t r = waitpid(pid, &status, WNOHANG);
      if (r == pid) {
        pid = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      if (std::chrono::steady_clock::now() > until) {
        kill_and_reap(SIGKILL);
        return -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  int kill_and_reap(int sig) {
    if (pid <= 0) return -1;
    ::kill(pid, sig);
    int status = 0;
    waitpid(pid, &status, 0);
    pid = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  bool running() {
    if (pid <= 0) return false;
    int status = 0;
    return waitpid(pid, &status, WNOHANG) == 0;
  }
};

// Runs to completion; returns the exit status (-1 on timeout).
inline int run_cmd(const std::vector<std::string>& argv, const std::string& log, int timeout_s = 240) {
  Child c = Child::start(argv, log);
  if (c.pid <= 0) return -2;
  return c.wait(std::chrono::seconds(timeout_s));
}

// Occurrences of `what` in `text` (e.g. a log line shared by several runs).
inline size_t count_of(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
  return n;
}

inline std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// <build>/tests/batch/tiny: `v4rt init-model --preset tiny --seed 1`, written once (to a private
// directory, then renamed, so concurrent test binaries never see a half-written model).
inline std::string tiny_model_dir() {
  const fs::path dir = fs::path(V4RT_BINARY_DIR) / "tests" / "batch" / "tiny";
  if (fs::exists(dir / "model.safetensors.index.json")) return dir.string();
  const fs::path tmp = dir.string() + ".tmp" + std::to_string(getpid());
  fs::remove_all(tmp);
  const std::string log = tmp.string() + ".log";
  if (run_cmd({V4RT_EXE, "init-model", "--preset", "tiny", "--out", tmp.string(), "--seed", "1"}, log) == 0) {
    std::error_code ec;
    fs::rename(tmp, dir, ec);  // fails harmlessly when another binary got there first
  }
  fs::remove_all(tmp);
  fs::remove(log);
  return dir.string();
}

inline std::string tokenizer_path() { return std::string(V4RT_SOURCE_DIR) + "/data/tokenizer/tokenizer.json"; }

// A fresh scratch directory <build>/tests/batch/<name>.
inline std::string scratch_dir(const std::string& name) {
  const fs::path dir = fs::path(V4RT_BINARY_DIR) / "tests" / "batch" / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

// `n` requests alternating chat and completions with short prompts; `invalid` adds bad lines
// (bad JSON, missing custom_id, wrong url) in between.
inline std::string make_requests(int n, int max_tokens, bool invalid, const std::string& model_name = "tiny") {
  static const char* kWords[] = {"alpha", "beta", "gamma", "delta", "batch", "journal", "resume", "fox",
                                 "river", "stone", "cloud", "paper", "seven", "green", "quiet", "north"};
  std::string out;
  uint64_t x = 12345;
  for (int i = 0; i < n; ++i) {
    std::string prompt;
    const int len = 2 + int(i % 5);
    for (int w = 0; w < len; ++w) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      if (w) prompt += ' ';
      prompt += kWords[(x >> 33) % 16];
    }
    nlohmann::ordered_json r;
    r["custom_id"] = "req-" + std::to_string(i);
    r["method"] = "POST";
    if (i % 2 == 0) {
      r["url"] = "/v1/chat/completions";
      r["body"] = {{"model", model_name},
                   {"messages", {{{"role", "user"}, {"content", prompt}}}},
                   {"max_tokens", max_tokens},
                   {"thinking", {{"type", "disabled"}}}};
    } else {
      r["url"] = "/v1/completions";
      r["body"] = {{"model", model_name}, {"prompt", prompt}, {"max_tokens", max_tokens}};
    }
    out += r.dump() + "\n";
    if (invalid && i % 10 == 5) {
      out += "{not json\n";
      out += R"({"url": "/v1/completions", "body": {"prompt": "x"}})" "\n";
      out += R"({"custom_id": "bad-url-)" + std::to_string(i) + R"(", "url": "/v1/embeddings", "body": {}})" "\n";
    }
  }
  return out;
}

// Output lines with response.body.created removed, in file order. Fails (returns the bad line in
// `bad`) on a line that is not a complete JSON object.
inline std::vector<std::string> normalized_lines(const std::string& path, std::string* bad = nullptr) {
  std::vector<std::string> out;
  std::istringstream in(read_text(path));
  std::string line;
  while (std::getline(in, line)) {
    nlohmann::ordered_json j = nlohmann::ordered_json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      if (bad) *bad = line;
      out.push_back("<<BAD>>");
      continue;
    }
    if (j.contains("response") && j["response"].is_object()) j["response"]["body"].erase("created");
    out.push_back(j.dump());
  }
  return out;
}

inline std::string custom_id_of(const std::string& normalized_line) {
  const auto j = nlohmann::ordered_json::parse(normalized_line, nullptr, false);
  if (j.is_discarded() || !j.contains("custom_id") || !j["custom_id"].is_string()) return "";
  return j["custom_id"].get<std::string>();
}

}  // namespace v4rt::launch::batch::testing
