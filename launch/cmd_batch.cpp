// SPDX-License-Identifier: MIT
// `v4rt batch`: offline generation over an OpenAI Batch API JSONL file, surviving preemption.
// Start-up is ModelRun's (MPI world under mpirun, sharded model, runtime Leader / Follower): the
// follower ranks run the leader's step plans; rank 0 reads the input, checks or starts the journal, runs the job and
// prints the summary. Rerunning the same command after any kill resumes the job (docs/BATCH.md).
// Exit status: 0 all requests done; 1 bad input or arguments; 2 model failure; 3 stopped by a
// signal (SIGINT/SIGTERM); after 2 or 3 a rerun resumes.
// `--mtp N`: speculative decoding of all running sequences together (runtime/scheduler.h);
// the summary reports the acceptance rate and the tokens per verify step.
#include <CLI/CLI.hpp>
#include <glog/logging.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <memory>

#include "cluster/world.h"
#include "common/check.h"
#include "common/logging.h"
#include "launch/backend_option.h"
#include "launch/batch/batch_job.h"
#include "launch/batch/journal.h"
#include "launch/commands.h"
#include "launch/model_run.h"
#include "launch/runtime_config.h"
#include "model/text/tokenizer.h"

namespace v4rt::launch {

namespace {

std::atomic<int> g_stop_signal{0};
void on_stop_signal(int sig) { g_stop_signal = sig; }

struct BatchArgs {
  batch::BatchOptions job;
  std::string config;
  std::string model_dir;
  std::string tokenizer;
  std::string backend = "cpu";
  int device = 0;
  bool graphs = true;  // --no-graphs: false
  std::string progress = "auto";
  int prefill_chunk = -1;  // -1: the config's prefill_chunk
};

void run_batch(BatchArgs args) {
  launch::RuntimeConfig rc = args.config.empty() ? launch::RuntimeConfig{} : launch::load_runtime_config(args.config);
  if (!args.model_dir.empty()) rc.model = args.model_dir;
  if (args.prefill_chunk >= 0) rc.prefill_chunk = args.prefill_chunk;  // pinned in the journal with the config
  V4RT_REQUIRE(!rc.model.empty(), "no model: set `model:` in the config or pass --model");
  V4RT_REQUIRE(args.job.flush_interval_s > 0, "--flush-interval must be > 0");
  batch::check_job_paths(args.job.input, args.job.output,
                         args.job.journal.empty() ? args.job.output + ".journal" : args.job.journal);

  RunOptions ro;
  ro.model_dir = rc.model;
  ro.config = args.config;
  ro.numerics = rc.numerics;
  ro.backend = args.backend;
  ro.device = args.device;
  ro.graphs = args.graphs;
  ro.mtp = args.job.mtp > 0;
  V4RT_REQUIRE(args.job.mtp >= 0 && args.job.mtp <= 8, "--mtp must be in [0, 8]");
  ModelRun run(ro);
  if (!run.leader()) {
    run.follow();
    return;
  }
  LoggingOptions lo;
  lo.log_dir = rc.debug.log_dir;
  init_logging("v4rt", lo);  // no-op when the MPI world set logging up
  if (args.job.test_hook_pause_mid_record_ms > 0)
    LOG(WARNING) << "--test-hook-pause-mid-record-ms is on: a TEST HOOK, not for production";

  const model::text::Tokenizer tokenizer(model::text::find_tokenizer_path(args.tokenizer, rc.model));
  args.job.progress_bar = args.progress == "bar" || (args.progress == "auto" && ::isatty(STDERR_FILENO));
  args.job.exit_at_stop_signal = cluster::world_initialised() && cluster::world().size > 1;
  batch::BatchJob job(args.job, rc, tokenizer);
  job.prepare();

  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  const batch::BatchResult r = job.run(run.lead(), &g_stop_signal);
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  std::fprintf(stderr, "%s", job.summary().c_str());
  if (!r.failure.empty()) {
    std::fprintf(stderr, "batch: stopped: %s; rerun the same command to resume\n", r.failure.c_str());
    exit_code() = batch::kExitModelFailure;
  } else if (r.interrupted) {
    std::fprintf(stderr, "batch: interrupted by signal %d; rerun the same command to resume\n", g_stop_signal.load());
    exit_code() = batch::kExitInterrupted;
  } else {
    std::fprintf(stderr, "batch: done: %lld requests -> %s\n", static_cast<long long>(r.total), args.job.output.c_str());
  }
}

}  // namespace

void register_batch(CLI::App& app) {
  auto args = std::make_shared<BatchArgs>();
  CLI::App* cmd = app.add_subcommand(
      "batch", "Offline generation over an OpenAI Batch API JSONL file; killed at any point, a rerun resumes");
  cmd->add_option("--input", args->job.input, "Requests, one JSON object per line (custom_id, method, url, body)")
      ->required();
  cmd->add_option("--output", args->job.output, "Results JSONL (rebuilt from <output>.journal)")->required();
  cmd->add_option("--journal", args->job.journal, "Journal file (default <output>.journal)");
  cmd->add_flag("--ordered", args->job.ordered, "Write results in input order (default: completion order)");
  cmd->add_option("--seed", args->job.seed, "Job seed; requests without a `seed` sample with one derived from it and their custom_id (default 0)");
  cmd->add_option("--config", args->config, "Runtime YAML (configs/*.yaml): model, numerics, sampling, parallel, server limits, prefix_cache");
  cmd->add_option("--model", args->model_dir, "Checkpoint directory (overrides `model:`)");
  cmd->add_option("--tokenizer", args->tokenizer, "tokenizer.json (default: model dir, $V4RT_TOKENIZER, data/tokenizer)");
  add_backend_option(cmd, &args->backend, &args->device);
  add_no_graphs_flag(cmd, &args->graphs);
  add_prefill_chunk_option(cmd, &args->prefill_chunk);
  cmd->add_option("--max-in-flight", args->job.max_in_flight,
                  "Requests handed to the scheduler at once (default 2 x server.max_running)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--mtp", args->job.mtp,
                  "Speculative decoding: draft N tokens per step with the checkpoint's MTP block (default 0: off)");
  cmd->add_option("--flush-interval", args->job.flush_interval_s, "Seconds between output file rewrites (default 5)");
  cmd->add_option("--progress", args->progress, "auto | bar | log (default auto: a bar on a terminal)")
      ->check(CLI::IsMember({"auto", "bar", "log"}));
  cmd->add_option("--log-interval", args->job.log_interval_s, "Seconds between progress log lines (default 10)");
  cmd->add_option("--test-hook-pause-mid-record-ms", args->job.test_hook_pause_mid_record_ms,
                  "TEST HOOK: pause this long in the middle of every journal record write")
      ->group("Test hooks");
  cmd->callback([args] { run_batch(*args); });
}

}  // namespace v4rt::launch
