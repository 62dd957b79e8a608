// SPDX-License-Identifier: MIT
// One batch job on rank 0 (DESIGN.md: "Batch jobs take the same path from a JSONL file and journal
// every finished request"). prepare() reads the input, checks it against the journal of an earlier
// run (refusing a changed input or changed arguments), cuts a torn journal tail and rebuilds the
// output from the journal. run() feeds the not-yet-finished requests to the continuous-batching
// scheduler of the runtime Engine (a bounded number in flight; requests that extend a finished
// one reuse its state through the prefix cache), every plan going to every rank, and
// commits every finished request to the journal exactly once; the output file is replaced
// atomically from the journal every flush interval and at the end. docs/BATCH.md has the format
// and the recovery argument.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "launch/batch/batch_input.h"
#include "launch/batch/journal.h"
#include "launch/serve/openai_api.h"
#include "runtime/leader.h"
#include "runtime/scheduler.h"
#include "launch/runtime_config.h"
#include "model/text/tokenizer.h"

namespace v4rt::launch::batch {

struct BatchOptions {
  std::string input;
  std::string output;
  std::string journal;             // empty: <output>.journal
  bool ordered = false;            // output in input order (else in completion order)
  uint64_t seed = 0;               // job seed: per-request seeds derive from it and the custom_id
  int max_in_flight = 0;           // requests handed to the scheduler at once; 0: server.max_running * 2
  double flush_interval_s = 5.0;   // output file rewrite period while running
  bool progress_bar = false;       // redraw a bar (terminal) instead of log lines
  double log_interval_s = 10.0;    // plain progress lines
  int test_hook_pause_mid_record_ms = 0;  // TEST HOOK (JournalWriter)
  int mtp = 0;                     // speculative decoding: MTP draft tokens per verify step (0: off)
  // Multi-rank jobs: after a stop signal, once the output and the summary are written, exit the
  // process at once with kExitInterrupted instead of stopping the engine (the follower ranks got
  // the signal too; a last collective with them could wait forever).
  bool exit_at_stop_signal = false;
};

constexpr int kExitModelFailure = 2;  // the model failed; a rerun resumes
constexpr int kExitInterrupted = 3;   // a stop signal ended the run; a rerun resumes

struct BatchResult {
  int64_t total = 0;               // requests (non-blank input lines)
  int64_t done = 0;                // committed, earlier runs included
  int64_t done_this_run = 0;
  int64_t errors_this_run = 0;     // error lines committed by this run
  bool interrupted = false;        // a stop signal ended the run early
  std::string failure;             // non-empty: the model failed; the job can be rerun
  bool complete() const { return done == total; }
};

class BatchJob {
 public:
  BatchJob(const BatchOptions& options, const launch::RuntimeConfig& config, const model::text::Tokenizer& tokenizer);
  ~BatchJob();

  // Input, journal (create or resume), output rebuilt. Throws v4rt::Error naming the file at fault.
  void prepare();
  // Runs the remaining requests. `stop` (may be nullptr) ends the run early when it becomes
  // non-zero; what was committed stays committed.
  BatchResult run(runtime::Leader& leader, const std::atomic<int>* stop);

  int64_t num_resumed() const { return num_resumed_; }
  uint64_t torn_bytes_cut() const { return torn_bytes_cut_; }
  const BatchInput& input() const { return input_; }
  std::string summary() const;  // after run()
  // Prompt tokens the last run() took from the prefix cache instead of computing them.
  int64_t prefix_reused_tokens() const { return prefix_reused_tokens_; }

 private:
  struct RunContext;  // the engine, the requests in flight and the progress of one run()

  // The steps of run(): limits and scheduler options from the config; feed() submits requests up
  // to max_in_flight, collect() streams their tokens and commits the finished ones (both true
  // when something happened); finish_run() stops the engine and writes the output and summary.
  serve::ApiLimits api_limits(const model::ModelConfig& mc) const;
  runtime::SchedulerOptions scheduler_options(const model::ModelConfig& mc, const kernels::Backend& backend) const;
  bool feed(RunContext& run);
  bool submit_next(RunContext& run);
  bool collect(RunContext& run);
  void finish_run(RunContext& run, const std::atomic<int>* stop);
  void commit_error(RunContext& run, size_t item_idx, const std::string& code, const std::string& message);
  void commit(size_t item_idx, std::string line);
  void write_output();

  BatchOptions options_;
  launch::RuntimeConfig config_;
  const model::text::Tokenizer& tokenizer_;
  BatchInput input_;
  JournalHeader header_;
  std::unique_ptr<JournalWriter> journal_;
  std::vector<std::string> committed_;          // output lines in commit order
  std::vector<int64_t> committed_by_item_;      // item index -> index in committed_, -1 if not done
  bool output_dirty_ = true;
  int64_t num_resumed_ = 0;
  uint64_t torn_bytes_cut_ = 0;
  std::string summary_;
  int64_t prefix_reused_tokens_ = 0;
};

}  // namespace v4rt::launch::batch
