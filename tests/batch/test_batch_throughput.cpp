// SPDX-License-Identifier: MIT
// A 100-request file on the embedded tiny model runs to completion (single rank, or under
// `mpirun -np 2` with tensor parallelism when built with the MPI variant): one successful line per
// request, usage counted, and the summary reports throughput and latency percentiles.
#include <gtest/gtest.h>

#include "tests/batch/batch_test_util.h"
#include "tests/mpi_env.h"

namespace v4rt::launch::batch {
namespace {

using namespace testing;

#ifndef V4RT_BATCH_NP
#define V4RT_BATCH_NP 1
#endif

TEST(BatchThroughput, HundredRequestsComplete) {
  constexpr int kRequests = 100;
  const std::string model = tiny_model_dir();
  const std::string dir = scratch_dir("throughput_np" + std::to_string(V4RT_BATCH_NP));
  const std::string input = dir + "/requests.jsonl", output = dir + "/results.jsonl", log = dir + "/log.txt";
  std::ofstream(input) << make_requests(kRequests, 4, /*invalid=*/false);
  std::vector<std::string> argv;
  if (V4RT_BATCH_NP > 1) {
    argv = {V4RT_MPIEXEC, "-n", std::to_string(V4RT_BATCH_NP), "--oversubscribe", V4RT_EXE, "batch",
            "--config", std::string(V4RT_SOURCE_DIR) + "/configs/tp2.yaml"};
    v4rt::testing::set_mpirun_env();
  } else {
    argv = {V4RT_EXE, "batch"};
  }
  const std::vector<std::string> common = {"--model", model, "--tokenizer", tokenizer_path(), "--input", input,
                                          "--output", output, "--seed", "3", "--progress", "log"};
  argv.insert(argv.end(), common.begin(), common.end());
  ASSERT_EQ(run_cmd(argv, log, 280), 0) << read_text(log);

  std::string bad;
  const std::vector<std::string> lines = normalized_lines(output, &bad);
  EXPECT_TRUE(bad.empty()) << bad;
  ASSERT_EQ(int(lines.size()), kRequests);
  std::set<std::string> ids;
  int64_t completion_tokens = 0;
  for (const std::string& l : lines) {
    const auto j = nlohmann::ordered_json::parse(l);
    EXPECT_TRUE(ids.insert(j["custom_id"].get<std::string>()).second);
    ASSERT_TRUE(j["error"].is_null()) << l;
    EXPECT_EQ(j["response"]["status_code"], 200);
    const auto& usage = j["response"]["body"]["usage"];
    EXPECT_GT(usage["prompt_tokens"].get<int64_t>(), 1);
    EXPECT_GE(usage["completion_tokens"].get<int64_t>(), 1);
    EXPECT_LE(usage["completion_tokens"].get<int64_t>(), 4);
    completion_tokens += usage["completion_tokens"].get<int64_t>();
  }
  const std::string text = read_text(log);
  EXPECT_NE(text.find("batch summary: 100/100 requests done"), std::string::npos) << text;
  EXPECT_NE(text.find(std::to_string(completion_tokens) + " out ("), std::string::npos) << text;
  EXPECT_NE(text.find("p99"), std::string::npos) << text;
}

}  // namespace
}  // namespace v4rt::launch::batch
