// SPDX-License-Identifier: MIT
// `v4rt batch --mtp N`: speculative decoding of all running sequences together. On the tiny
// preset with an MTP block (`init-model --preset tiny --mtp`, the embedded model's main weights),
// greedy requests (chat and completions, some with logprobs) give exactly the output of the same
// job without --mtp, `created` aside; the summary reports the acceptance rate and the tokens per
// verify step. A job killed mid-run resumes from its journal to the same output; a rerun with a
// different --mtp is refused (sampled draws depend on it). With V4RT_BATCH_NP=2 the --mtp job runs
// under mpirun on the tp2 layout and must still equal the single-rank job without drafting (the
// tokens and text exactly; logprobs to 1e-4, since the tp2 all-reduce rounds differently).
#include <gtest/gtest.h>

#include <cmath>

#include "tests/batch/batch_test_util.h"
#include "tests/mpi_env.h"

namespace v4rt::launch::batch {
namespace {

using namespace testing;

#ifndef V4RT_BATCH_NP
#define V4RT_BATCH_NP 1
#endif

constexpr int kNumRequests = 10;
constexpr int kMaxTokens = 5;

// <build>/tests/batch/tiny_mtp: the tiny preset with an MTP block, written once.
std::string tiny_mtp_dir() {
  const fs::path dir = fs::path(V4RT_BINARY_DIR) / "tests" / "batch" / "tiny_mtp";
  if (fs::exists(dir / "model.safetensors.index.json")) return dir.string();
  const fs::path tmp = dir.string() + ".tmp" + std::to_string(getpid());
  fs::remove_all(tmp);
  const std::string log = tmp.string() + ".log";
  if (run_cmd({V4RT_EXE, "init-model", "--preset", "tiny", "--mtp", "--out", tmp.string(), "--seed", "1"}, log) == 0) {
    std::error_code ec;
    fs::rename(tmp, dir, ec);
  }
  fs::remove_all(tmp);
  fs::remove(log);
  return dir.string();
}

// make_requests() made greedy; every other completions request asks for 2 top logprobs.
std::string greedy_requests(int n) {
  std::istringstream in(make_requests(n, kMaxTokens, /*invalid=*/true, "tiny_mtp"));
  std::string line, out;
  int i = 0;
  while (std::getline(in, line)) {
    nlohmann::ordered_json j = nlohmann::ordered_json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.is_object() && j.contains("body") && j["body"].is_object()) {
      j["body"]["temperature"] = 0;
      if (j.value("url", "") == "/v1/completions" && i++ % 2 == 0) j["body"]["logprobs"] = 2;
      line = j.dump();
    }
    out += line + "\n";
  }
  return out;
}

// Logprobs rounded to 1e-4 for the multi-rank comparison (lines that are not JSON kept as they are).
void round_floats(nlohmann::ordered_json& j) {
  if (j.is_number_float()) {
    j = std::round(j.get<double>() * 1e4) / 1e4;
  } else if (j.is_structured()) {
    for (auto& v : j) round_floats(v);
  }
}

std::vector<std::string> comparable(std::vector<std::string> lines) {
  if (V4RT_BATCH_NP == 1) return lines;
  for (std::string& line : lines) {
    nlohmann::ordered_json j = nlohmann::ordered_json::parse(line, nullptr, false);
    if (j.is_discarded()) continue;
    round_floats(j);
    line = j.dump();
  }
  return lines;
}

std::vector<std::string> batch_argv(const std::string& input, const std::string& output, int mtp, int np,
                                    const std::vector<std::string>& extra = {}) {
  std::vector<std::string> a;
  if (np > 1) a = {V4RT_MPIEXEC, "-n", std::to_string(np), "--oversubscribe"};
  a.insert(a.end(), {V4RT_EXE, "batch", "--model", tiny_mtp_dir(), "--tokenizer", tokenizer_path(), "--input", input,
                     "--output", output, "--seed", "3", "--ordered", "--progress", "log", "--flush-interval", "0.2"});
  if (np > 1) a.insert(a.end(), {"--config", std::string(V4RT_SOURCE_DIR) + "/configs/tp2.yaml"});
  if (mtp > 0) a.insert(a.end(), {"--mtp", std::to_string(mtp)});
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

class BatchMtp : public ::testing::Test {
 protected:
  void SetUp() override {
    v4rt::testing::set_mpirun_env();
    dir_ = scratch_dir(std::string("mtp_np") + std::to_string(V4RT_BATCH_NP) + "_" +
                       ::testing::UnitTest::GetInstance()->current_test_info()->name());
    input_ = dir_ + "/requests.jsonl";
    log_ = dir_ + "/log.txt";
    std::ofstream(input_) << greedy_requests(kNumRequests);
    // The reference: one rank, no drafting.
    ASSERT_EQ(run_cmd(batch_argv(input_, dir_ + "/reference.jsonl", 0, 1), log_), 0) << read_text(log_);
    reference_ = comparable(normalized_lines(dir_ + "/reference.jsonl"));
    ASSERT_EQ(reference_.size(), size_t(kNumRequests + 3));
  }
  std::string dir_, input_, log_;
  std::vector<std::string> reference_;
};

TEST_F(BatchMtp, GreedyEqualsWithoutDrafting) {
  for (int depth : {1, 3}) {
    const std::string out = dir_ + "/mtp" + std::to_string(depth) + ".jsonl";
    fs::remove(log_);
    ASSERT_EQ(run_cmd(batch_argv(input_, out, depth, V4RT_BATCH_NP, {"--max-in-flight", "6"}), log_), 0) << read_text(log_);
    EXPECT_EQ(comparable(normalized_lines(out)), reference_) << "--mtp " << depth;
    const std::string log = read_text(log_);
    EXPECT_NE(log.find("acceptance rate"), std::string::npos) << log;
    EXPECT_NE(log.find("tokens per verify step"), std::string::npos) << log;
    EXPECT_NE(log.find("mtp accept"), std::string::npos) << "no speculative progress line\n" << log;
  }
}

TEST_F(BatchMtp, KilledThenResumedEqualsWithoutDrafting) {
  const std::string out = dir_ + "/results.jsonl";
  Child c = Child::start(batch_argv(input_, out, 2, V4RT_BATCH_NP, {"--max-in-flight", "1"}), log_);
  ASSERT_GT(c.pid, 0);
  // Kill once some results are committed (the invalid lines come first or early; wait for a real one).
  bool killed = false;
  for (int i = 0; i < 600 && c.running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (fs::exists(out) && normalized_lines(out).size() >= 4) {
      c.kill_and_reap(SIGKILL);
      killed = true;
      break;
    }
  }
  ASSERT_TRUE(killed) << "the job ended before it could be killed\n" << read_text(log_);
  const std::vector<std::string> partial = comparable(normalized_lines(out));
  ASSERT_LT(partial.size(), reference_.size());
  for (size_t i = 0; i < partial.size(); ++i) EXPECT_EQ(partial[i], reference_[i]) << "line " << i + 1;

  // A different draft depth is refused: sampled requests would mix two sets of draws.
  fs::remove(log_);
  EXPECT_NE(run_cmd(batch_argv(input_, out, 1, 1), log_), 0);
  EXPECT_NE(read_text(log_).find("--mtp (2 vs now 1)"), std::string::npos) << read_text(log_);

  fs::remove(log_);
  ASSERT_EQ(run_cmd(batch_argv(input_, out, 2, V4RT_BATCH_NP), log_), 0) << read_text(log_);
  EXPECT_NE(read_text(log_).find("resuming"), std::string::npos) << read_text(log_);
  EXPECT_EQ(comparable(normalized_lines(out)), reference_);
}

}  // namespace
}  // namespace v4rt::launch::batch
