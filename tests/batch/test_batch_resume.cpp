// SPDX-License-Identifier: MIT
// Preemption: a batch job over the embedded tiny model is SIGKILLed at random moments several
// times (with the journal writer pausing in the middle of every record, so kills land mid-write),
// once SIGTERMed, and finally run to the end. After every kill the output holds only complete,
// distinct lines that form a prefix of the uninterrupted run's output (--ordered); at the end it
// equals that output exactly (`created` aside, the job start time) with one line per input line.
// Also: a changed input or seed is refused; a finished job reruns as a no-op.
#include <gtest/gtest.h>

#include <random>

#include "launch/batch/journal.h"
#include "tests/batch/batch_test_util.h"

namespace v4rt::launch::batch {
namespace {

using namespace testing;

constexpr int kNumRequests = 32;
constexpr int kMaxTokens = 4;

std::vector<std::string> batch_argv(const std::string& model, const std::string& input, const std::string& output,
                                    const std::vector<std::string>& extra = {}) {
  std::vector<std::string> a = {V4RT_EXE, "batch", "--model", model, "--tokenizer", tokenizer_path(),
                                "--input", input, "--output", output, "--seed", "11", "--ordered",
                                "--progress", "log", "--flush-interval", "0.2"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

void expect_prefix(const std::vector<std::string>& got, const std::vector<std::string>& want, const std::string& when) {
  ASSERT_LE(got.size(), want.size()) << when;
  std::set<std::string> ids;
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i], want[i]) << when << ": line " << i + 1;
    const std::string id = custom_id_of(got[i]);
    if (!id.empty()) {
      EXPECT_TRUE(ids.insert(id).second) << when << ": custom_id " << id << " twice";
    }
  }
}

TEST(BatchResume, KilledAtRandomPointsThenResumedEqualsUninterrupted) {
  const std::string model = tiny_model_dir();
  const std::string dir = scratch_dir("resume");
  const std::string input = dir + "/requests.jsonl";
  std::ofstream(input) << make_requests(kNumRequests, kMaxTokens, /*invalid=*/true);
  const std::string log = dir + "/log.txt";

  // The uninterrupted reference.
  ASSERT_EQ(run_cmd(batch_argv(model, input, dir + "/reference.jsonl"), log), 0) << read_text(log);
  const std::vector<std::string> reference = normalized_lines(dir + "/reference.jsonl");
  const int num_lines = kNumRequests + 3 * (kNumRequests / 10 + (kNumRequests % 10 > 5 ? 1 : 0));
  ASSERT_EQ(int(reference.size()), num_lines);

  // Killed runs: at least 4 kills and at least one that cut a record in half (bounded attempts).
  const std::string output = dir + "/results.jsonl";
  const std::string journal = output + ".journal";
  std::mt19937 rng(20240501);
  // The kill comes at a random point after start-up (model and tokenizer load take seconds on a
  // loaded machine): once the run has opened its journal (a "new job" or "resuming" line).
  std::uniform_int_distribution<int> delay_ms(300, 1800);
  auto runs_started = [&] { return count_of(read_text(log), "batch: new job") + count_of(read_text(log), "batch: resuming"); };
  int kills = 0, torn = 0, attempts = 0;
  while ((kills < 4 || torn == 0) && attempts < 14) {
    ++attempts;
    const size_t started_before = runs_started();
    Child c = Child::start(batch_argv(model, input, output, {"--max-in-flight", "1", "--test-hook-pause-mid-record-ms", "250"}), log);
    ASSERT_GT(c.pid, 0);
    for (int i = 0; i < 600 && c.running() && runs_started() == started_before; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
    if (!c.running()) break;  // finished before the kill: nothing left to interrupt
    c.kill_and_reap(SIGKILL);
    ++kills;
    if (fs::exists(journal)) {
      const JournalScan scan = scan_journal(journal);
      if (scan.file_bytes != scan.valid_bytes) ++torn;
    }
    if (fs::exists(output)) {
      std::string bad;
      const std::vector<std::string> got = normalized_lines(output, &bad);
      EXPECT_TRUE(bad.empty()) << "after kill " << kills << ": partial line '" << bad << "'";
      expect_prefix(got, reference, "after kill " + std::to_string(kills));
    }
  }
  EXPECT_GE(kills, 4) << "the job finished before it could be killed 4 times";
  EXPECT_GE(torn, 1) << "no kill landed inside a record write in " << attempts << " attempts";

  // A graceful stop: SIGTERM -> exit 3 with the output consistent.
  {
    // Past start-up (model and tokenizer load take seconds on a loaded machine): this run has read
    // its journal (one more "resuming" line in the shared log) and runs requests.
    const size_t resumed_before = count_of(read_text(log), "resuming");
    Child c = Child::start(batch_argv(model, input, output, {"--max-in-flight", "2"}), log);
    for (int i = 0; i < 600 && c.running() && count_of(read_text(log), "resuming") == resumed_before; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    if (c.running()) {
      const int rc = c.kill_and_reap(SIGTERM);
      EXPECT_TRUE(rc == 3 || rc == 0) << "SIGTERM exit status " << rc << "\n" << read_text(log);
      expect_prefix(normalized_lines(output), reference, "after SIGTERM");
    }
  }

  // The final run completes the job.
  ASSERT_EQ(run_cmd(batch_argv(model, input, output), log), 0) << read_text(log);
  const std::vector<std::string> final_lines = normalized_lines(output);
  EXPECT_EQ(final_lines, reference);
  std::set<std::string> ids;
  for (const std::string& l : final_lines) {
    const std::string id = custom_id_of(l);
    if (!id.empty()) {
      EXPECT_TRUE(ids.insert(id).second) << "custom_id " << id << " twice";
    }
  }
  EXPECT_EQ(int(ids.size()), kNumRequests + kNumRequests / 10 + (kNumRequests % 10 > 5 ? 1 : 0));  // + bad-url ids
  const JournalScan scan = scan_journal(journal);
  EXPECT_EQ(int(scan.records.size()), num_lines);
  EXPECT_EQ(scan.duplicates, 0);
  EXPECT_EQ(scan.valid_bytes, scan.file_bytes);

  // A finished job reruns as a no-op with the same bytes.
  const std::string before = read_text(output);
  ASSERT_EQ(run_cmd(batch_argv(model, input, output), log), 0) << read_text(log);
  EXPECT_EQ(read_text(output), before);

  // A changed input (same path) or another seed is refused, naming the journal; nothing changes.
  const std::string changed = dir + "/changed.jsonl";
  std::ofstream(changed) << make_requests(kNumRequests + 1, kMaxTokens, true);
  const std::string refuse_log = dir + "/refuse.txt";
  EXPECT_EQ(run_cmd(batch_argv(model, changed, output), refuse_log), 1);
  EXPECT_NE(read_text(refuse_log).find("different inputs"), std::string::npos) << read_text(refuse_log);
  EXPECT_NE(read_text(refuse_log).find("input (sha256"), std::string::npos) << read_text(refuse_log);
  std::vector<std::string> other_seed = batch_argv(model, input, output);
  other_seed[11] = "12";
  EXPECT_EQ(run_cmd(other_seed, refuse_log), 1);
  EXPECT_NE(read_text(refuse_log).find("--seed"), std::string::npos) << read_text(refuse_log);
  EXPECT_EQ(read_text(output), before);
}

TEST(BatchResume, UnorderedOutputHoldsTheSameLines) {
  const std::string model = tiny_model_dir();
  const std::string dir = scratch_dir("unordered");
  const std::string input = dir + "/requests.jsonl";
  std::ofstream(input) << make_requests(10, 3, true);
  const std::string log = dir + "/log.txt";
  auto args = [&](const std::string& out, const std::vector<std::string>& extra) {
    std::vector<std::string> a = batch_argv(model, input, out, extra);
    a.erase(a.begin() + 12);  // --ordered
    return a;
  };
  ASSERT_EQ(run_cmd(args(dir + "/a.jsonl", {"--max-in-flight", "1"}), log), 0) << read_text(log);
  ASSERT_EQ(run_cmd(args(dir + "/b.jsonl", {"--max-in-flight", "16"}), log), 0) << read_text(log);
  std::vector<std::string> a = normalized_lines(dir + "/a.jsonl"), b = normalized_lines(dir + "/b.jsonl");
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  EXPECT_EQ(a.size(), 13u);
  EXPECT_EQ(a, b) << "results depend on how many requests share a step";
}

}  // namespace
}  // namespace v4rt::launch::batch
