// SPDX-License-Identifier: MIT
// One rank dying: a batch job under `mpirun -np 2` (tp 2) loses its follower rank to SIGKILL in
// the middle of the run; mpirun ends the job; the output is still whole lines forming a prefix of
// an uninterrupted 2-rank run's output; a rerun under mpirun completes it and equals that run.
#include <gtest/gtest.h>

#include "tests/batch/batch_test_util.h"
#include "tests/mpi_env.h"

namespace v4rt::launch::batch {
namespace {

using namespace testing;

// The child of `parent` whose environment says OMPI_COMM_WORLD_RANK=<rank>, or -1.
pid_t find_rank(pid_t parent, int rank) {
  for (const auto& task : fs::directory_iterator("/proc/" + std::to_string(parent) + "/task")) {
    std::istringstream children(read_text(task.path().string() + "/children"));
    pid_t child;
    while (children >> child) {
      const std::string env = read_text("/proc/" + std::to_string(child) + "/environ");
      const std::string want = "OMPI_COMM_WORLD_RANK=" + std::to_string(rank);
      for (size_t pos = 0; pos < env.size();) {
        const size_t end = env.find('\0', pos);
        if (env.compare(pos, (end == std::string::npos ? env.size() : end) - pos, want) == 0) return child;
        if (end == std::string::npos) break;
        pos = end + 1;
      }
    }
  }
  return -1;
}

TEST(BatchResumeMpi, FollowerRankKilledThenResumed) {
  v4rt::testing::set_mpirun_env();
  const std::string model = tiny_model_dir();
  const std::string dir = scratch_dir("resume_mpi");
  const std::string input = dir + "/requests.jsonl", log = dir + "/log.txt";
  std::ofstream(input) << make_requests(24, 4, /*invalid=*/false);
  auto argv = [&](const std::string& output, const std::vector<std::string>& extra) {
    std::vector<std::string> a = {V4RT_MPIEXEC, "-n", "2", "--oversubscribe", V4RT_EXE, "batch",
                                  "--config", std::string(V4RT_SOURCE_DIR) + "/configs/tp2.yaml", "--model", model,
                                  "--tokenizer", tokenizer_path(), "--input", input, "--output", output,
                                  "--seed", "5", "--ordered", "--progress", "log", "--flush-interval", "0.2"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  ASSERT_EQ(run_cmd(argv(dir + "/reference.jsonl", {}), log), 0) << read_text(log);
  const std::vector<std::string> reference = normalized_lines(dir + "/reference.jsonl");
  ASSERT_EQ(reference.size(), 24u);

  const std::string output = dir + "/results.jsonl";
  const size_t started_before = count_of(read_text(log), "new job");
  Child c = Child::start(argv(output, {"--max-in-flight", "1"}), log);
  ASSERT_GT(c.pid, 0);
  pid_t follower = -1;
  for (int i = 0; i < 100 && follower < 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    follower = find_rank(c.pid, 1);
  }
  ASSERT_GT(follower, 0) << "rank 1 of the job not found";
  // Past start-up (loading takes seconds on a loaded machine): the job has started its journal
  // and commits requests (one in flight, the output flushed every 0.2 s).
  for (int i = 0; i < 600 && c.running() && count_of(read_text(log), "new job") == started_before; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  ASSERT_TRUE(c.running()) << "the job ended before rank 1 could be killed\n" << read_text(log);
  ::kill(follower, SIGKILL);
  const int rc = c.wait(std::chrono::seconds(60));
  EXPECT_NE(rc, 0) << "the job went on without its rank 1";
  EXPECT_NE(rc, -1) << "mpirun did not end the job within 60 s after rank 1 died";

  std::string bad;
  const std::vector<std::string> partial = normalized_lines(output, &bad);
  EXPECT_TRUE(bad.empty()) << bad;
  ASSERT_LT(partial.size(), reference.size());
  for (size_t i = 0; i < partial.size(); ++i) EXPECT_EQ(partial[i], reference[i]) << "line " << i + 1;

  ASSERT_EQ(run_cmd(argv(output, {}), log), 0) << read_text(log);
  EXPECT_NE(read_text(log).find("resuming"), std::string::npos);
  EXPECT_EQ(normalized_lines(output), reference);
}

}  // namespace
}  // namespace v4rt::launch::batch
