// SPDX-License-Identifier: MIT
// BatchJob: resume logic, and the run: feed / collect / commit over the runtime Engine.
//
// Threads: the engine thread asks the Scheduler for step plans and runs them through the Leader
// (which broadcasts them to the follower ranks); the calling thread submits requests, collects
// their tokens through the same GenerationOutput the server uses, and commits results. Only the
// calling thread touches the journal and the output file.
#include "launch/batch/batch_job.h"

#include <glog/logging.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <map>
#include <thread>

#include "common/check.h"
#include "launch/batch/digest.h"
#include "launch/batch/progress.h"
#include "launch/prefix_cache_options.h"
#include "launch/serve/output.h"
#include "runtime/engine.h"
#include "runtime/scheduler.h"

namespace v4rt::launch::batch {

namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kResponseIdSalt = 0x1D5ull;
constexpr uint64_t kToolCallSalt = 0x7C11ull;
constexpr auto kIdlePoll = std::chrono::milliseconds(2);

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

int64_t default_kv_budget_bytes() {
  // CPU backend: a quarter of physical memory (as `v4rt serve`).
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? int64_t(pages) * page / 4 : int64_t(4) << 30;
}

struct InFlight {
  size_t item = 0;
  serve::GenerationSpec spec;
  std::shared_ptr<runtime::Request> request;
  std::unique_ptr<serve::GenerationOutput> output;
  serve::ResponseMeta meta;
  Clock::time_point submitted;
};

// The OpenAI error code of an ApiError (its JSON form carries it).
std::string api_error_code(const serve::ApiError& e) {
  Json j;
  if (model::text::json_try_parse(e.json(), &j) && j.contains("error") && j["error"].contains("code") &&
      j["error"]["code"].is_string())
    return j["error"]["code"].get<std::string>();
  return e.status() == 413 ? "context_length_exceeded" : "invalid_request";
}

}  // namespace

BatchJob::BatchJob(const BatchOptions& options, const launch::RuntimeConfig& config, const model::text::Tokenizer& tokenizer)
    : options_(options), config_(config), tokenizer_(tokenizer) {
  if (options_.journal.empty()) options_.journal = options_.output + ".journal";
  if (options_.max_in_flight <= 0) options_.max_in_flight = 2 * config_.server.max_running;
}

BatchJob::~BatchJob() = default;

// ------------------------------------------------------------------------------------------------
// prepare: input, journal, output
// ------------------------------------------------------------------------------------------------

void BatchJob::prepare() {
  namespace fs = std::filesystem;
  V4RT_REQUIRE(!options_.output.empty(), "--output is required");
  input_ = read_batch_input(options_.input);
  committed_by_item_.assign(input_.items.size(), -1);

  header_.input_sha256 = input_.sha256;
  header_.input_bytes = input_.bytes;
  header_.num_lines = input_.num_lines;
  header_.seed = options_.seed;
  header_.ordered = options_.ordered;
  header_.model = fs::absolute(config_.model).lexically_normal().string();
  while (header_.model.size() > 1 && header_.model.back() == '/') header_.model.pop_back();
  launch::RuntimeConfig pinned = config_;
  pinned.model.clear();  // pinned separately, normalised
  header_.config_sha256 = sha256_hex(launch::runtime_config_yaml(pinned));
  header_.created = int64_t(std::time(nullptr));
  header_.mtp = options_.mtp;

  // Leftovers of an atomic write that a kill interrupted are never read.
  std::error_code ec;
  fs::remove(options_.output + ".tmp", ec);
  fs::remove(options_.journal + ".tmp", ec);

  std::map<int64_t, size_t> item_of_line;
  for (size_t i = 0; i < input_.items.size(); ++i) item_of_line[input_.items[i].line_idx] = i;

  if (!fs::exists(options_.journal)) {
    V4RT_REQUIRE(!fs::exists(options_.output),
                 options_.output << ": exists but has no journal (" << options_.journal
                                 << "); it was not written by this job: remove it or choose another --output");
    journal_ = JournalWriter::create(options_.journal, header_);
    LOG(INFO) << "batch: new job, " << input_.items.size() << " requests from " << options_.input << "; journal "
              << options_.journal;
  } else {
    const JournalScan scan = scan_journal(options_.journal);
    const std::vector<std::string> diff = header_mismatches(scan.header, header_);
    if (!diff.empty()) {
      std::string what;
      for (const std::string& d : diff) what += (what.empty() ? "" : "; ") + d;
      V4RT_FAIL(options_.journal << ": this journal belongs to a job with different inputs: " << what
                                 << ". Rerun with the original input and arguments, or remove " << options_.journal
                                 << " and " << options_.output << " to start over");
    }
    header_.created = scan.header.created;
    torn_bytes_cut_ = scan.file_bytes - scan.valid_bytes;
    if (torn_bytes_cut_ > 0)
      LOG(WARNING) << options_.journal << ": cutting a torn or corrupt tail of " << torn_bytes_cut_
                   << " bytes (a record whose write was interrupted; its request runs again)";
    if (scan.duplicates > 0) LOG(WARNING) << options_.journal << ": ignored " << scan.duplicates << " duplicate records";
    for (const JournalRecord& r : scan.records) {
      auto it = item_of_line.find(r.line_idx);
      V4RT_REQUIRE(it != item_of_line.end(),
                   options_.journal << ": a record names input line " << r.line_idx + 1 << ", which holds no request");
      committed_by_item_[it->second] = int64_t(committed_.size());
      committed_.push_back(r.line);
    }
    num_resumed_ = int64_t(scan.records.size());
    journal_ = JournalWriter::resume(options_.journal, scan);
    LOG(INFO) << "batch: resuming, " << num_resumed_ << " of " << input_.items.size()
              << " requests already done (journal " << options_.journal << ")";
  }
  journal_->set_test_hook_pause_mid_record_ms(options_.test_hook_pause_mid_record_ms);
  write_output();
}

void BatchJob::commit(size_t item_idx, std::string line) {
  CHECK_EQ(committed_by_item_[item_idx], -1) << "request on line " << input_.items[item_idx].line_idx + 1 << " committed twice";
  journal_->append({input_.items[item_idx].line_idx, line});
  committed_by_item_[item_idx] = int64_t(committed_.size());
  committed_.push_back(std::move(line));
  output_dirty_ = true;
}

void BatchJob::write_output() {
  if (!output_dirty_) return;
  std::string content;
  if (options_.ordered) {
    // The longest fully finished prefix in input order: every snapshot is a prefix of the final file.
    for (int64_t c : committed_by_item_) {
      if (c < 0) break;
      content += committed_[size_t(c)];
      content += '\n';
    }
  } else {
    for (const std::string& line : committed_) {
      content += line;
      content += '\n';
    }
  }
  write_file_atomic(options_.output, content);
  output_dirty_ = false;
}

std::string BatchJob::summary() const { return summary_; }

// ------------------------------------------------------------------------------------------------
// run
// ------------------------------------------------------------------------------------------------

// What one run() shares between its steps.
struct BatchJob::RunContext {
  RunContext(runtime::Leader& leader, const runtime::SchedulerOptions& so, int64_t total, int64_t resumed,
             const ProgressOptions& po)
      : engine(leader, so, &metrics), progress(total, resumed, po) {}
  serve::ApiLimits limits;
  runtime::Metrics metrics;
  runtime::Engine engine;
  Progress progress;
  BatchResult result;
  std::vector<size_t> todo;  // items not committed by an earlier run, in input order
  size_t next = 0;           // todo[next] is the next item to submit
  std::vector<std::unique_ptr<InFlight>> in_flight;
};

serve::ApiLimits BatchJob::api_limits(const model::ModelConfig& mc) const {
  serve::ApiLimits limits;
  limits.model_name = config_.server.model_name.empty()
                          ? std::filesystem::path(header_.model).filename().string()
                          : config_.server.model_name;
  limits.max_context = config_.server.max_context > 0 ? config_.server.max_context : mc.max_position_embeddings;
  limits.defaults = config_.sampling;
  limits.dialect = model::text::parse_effort_dialect(config_.server.effort_dialect);
  limits.test_hook_forced_output = config_.debug.test_hook_forced_output;
  return limits;
}

runtime::SchedulerOptions BatchJob::scheduler_options(const model::ModelConfig& mc, const kernels::Backend& backend) const {
  runtime::SchedulerOptions so;
  so.max_batch_tokens = config_.server.max_batch_tokens;
  so.max_running = config_.server.max_running;
  so.max_queue = options_.max_in_flight;
  so.kv_budget_bytes = config_.server.kv_budget_mb > 0 ? config_.server.kv_budget_mb << 20 : default_kv_budget_bytes();
  // Prefix reuse gives the same tokens as a full prefill; the output reports no cached tokens, so
  // it does not depend on which requests happened to run before which (the summary counts them).
  so.prefix_cache = prefix_cache_options(config_);
  so.eos_token_id = int32_t(mc.eos_token_id);
  so.mtp_depth = options_.mtp;
  so.prefill_chunk = config_.prefill_chunk;
  so.device_sampling = draws_on_device(config_, backend);
  return so;
}

void BatchJob::commit_error(RunContext& run, size_t item_idx, const std::string& code, const std::string& message) {
  commit(item_idx, error_line(input_.items[item_idx], options_.seed, code, message));
  run.progress.on_done(0, 0, -1, false);
  ++run.result.errors_this_run;
}

// Submits the next item. False when the scheduler takes no more now (queue full, engine failed).
bool BatchJob::submit_next(RunContext& run) {
  const size_t i = run.todo[run.next];
  const BatchItem& item = input_.items[i];
  const uint64_t seed = options_.seed;
  if (!item.valid()) {
    commit_error(run, i, item.error_code, item.error_message);
    ++run.next;
    return true;
  }
  const std::string at = "line " + std::to_string(item.line_idx + 1) + ": ";
  auto f = std::make_unique<InFlight>();
  f->item = i;
  try {
    Json body = item.body;
    if (!body.contains("seed") || body["seed"].is_null()) body["seed"] = request_seed(seed, item.custom_id);
    f->spec = item.chat ? serve::parse_chat_request(body, tokenizer_, run.limits)
                        : serve::parse_completion_request(body, tokenizer_, run.limits);
  } catch (const serve::ApiError& e) {
    commit_error(run, i, api_error_code(e), at + e.what());
    ++run.next;
    return true;
  } catch (const v4rt::Error& e) {
    commit_error(run, i, "invalid_request", at + e.what());
    ++run.next;
    return true;
  }
  // Tool-call ids from the custom_id, so reruns match byte for byte.
  auto counter = std::make_shared<uint64_t>(0);
  const std::string key = item.custom_id;
  f->spec.parser.make_id = [key, seed, counter] {
    const uint64_t h = hash64(key + "#" + std::to_string((*counter)++), seed ^ kToolCallSalt);
    return "call_" + hex64(h) + hex64(h * 0x9E3779B97F4A7C15ull).substr(0, 8);
  };
  auto req = std::make_shared<runtime::Request>();
  req->id = uint64_t(item.line_idx) + 1;
  req->priority = f->spec.priority;
  req->prompt = f->spec.prompt;
  req->boundaries = f->spec.boundaries;
  req->sampling = f->spec.sampling;
  const runtime::SubmitResult sr = run.engine.submit(req);
  if (sr.status == 429) return false;  // queue full: retry once something finishes
  if (sr.status == 503) return false;  // the engine failed; the loop ends
  if (sr.status != 200) {
    commit_error(run, i, sr.status == 413 ? "kv_budget_exceeded" : "invalid_request", at + sr.message);
    ++run.next;
    return true;
  }
  const uint64_t h = hash64(item.custom_id, seed ^ kResponseIdSalt);
  f->meta = {(item.chat ? "chatcmpl-" : "cmpl-") + hex64(h) + hex64(h * 0x9E3779B97F4A7C15ull).substr(0, 8),
             header_.created, run.limits.model_name, item.chat};
  f->request = std::move(req);
  f->output = std::make_unique<serve::GenerationOutput>(tokenizer_, f->spec);
  f->submitted = Clock::now();
  run.in_flight.push_back(std::move(f));
  ++run.next;
  return true;
}

bool BatchJob::feed(RunContext& run) {
  bool progressed = false;
  while (run.next < run.todo.size() && int(run.in_flight.size()) < options_.max_in_flight) {
    if (!submit_next(run)) break;
    progressed = true;
  }
  return progressed;
}

bool BatchJob::collect(RunContext& run) {
  bool progressed = false;
  for (auto& f : run.in_flight) {
    runtime::TokenStream& ts = *f->request->stream;
    std::vector<runtime::TokenEvent> events;
    std::vector<serve::Delta> deltas;
    std::string message;
    runtime::FinishReason reason = ts.wait(&events, std::chrono::milliseconds(0), &message);
    if (!events.empty()) progressed = true;
    if (!f->output->on_tokens(events, &deltas)) {
      ts.cancel();  // a stop string matched
      reason = runtime::FinishReason::kEos;
    }
    if (reason == runtime::FinishReason::kNone) continue;
    if (reason == runtime::FinishReason::kError || reason == runtime::FinishReason::kCancelled ||
        reason == runtime::FinishReason::kTimeout) {
      // Not the request's fault (engine failure or shutdown): not committed, a rerun redoes it.
      if (!run.engine.failed() && run.result.failure.empty())
        run.result.failure = "line " + std::to_string(input_.items[f->item].line_idx + 1) + ": generation ended (" +
                             runtime::finish_reason_name(reason) + "): " + message;
      continue;
    }
    f->output->finish(reason, &deltas);
    const Json body = serve::final_json(f->meta, *f->output, ts.prompt_tokens, /*cached_tokens=*/0);
    commit(f->item, result_line(input_.items[f->item], options_.seed, 200, body));
    run.progress.on_done(ts.prompt_tokens, f->output->completion_tokens(), seconds_since(f->submitted), true);
    f.reset();
    progressed = true;
  }
  std::erase_if(run.in_flight, [](const auto& f) { return !f; });
  return progressed;
}

void BatchJob::finish_run(RunContext& run, const std::atomic<int>* stop) {
  BatchResult& result = run.result;
  if (run.engine.failed()) result.failure = run.engine.failure();
  result.interrupted = stop && *stop && result.failure.empty() && run.progress.done() < result.total;
  if (result.interrupted && options_.exit_at_stop_signal) {
    write_output();
    run.progress.tick(true);
    run.progress.close();
    std::fprintf(stderr, "%sbatch: interrupted; rerun the same command to resume\n", run.progress.summary().c_str());
    std::fflush(stderr);
    std::_Exit(kExitInterrupted);
  }
  run.engine.stop();
  run.progress.set_speculative(run.engine.speculative_stats());
  write_output();
  run.progress.tick(true);
  run.progress.close();
  result.done = run.progress.done();
  result.done_this_run = run.progress.done() - num_resumed_;
  prefix_reused_tokens_ = int64_t(run.metrics.prefix_reused_tokens);
  summary_ = run.progress.summary();
  if (prefix_reused_tokens_ > 0)
    summary_ += "batch: prefix reuse: " + std::to_string(prefix_reused_tokens_) + " prompt tokens not recomputed (of " +
                std::to_string(uint64_t(run.metrics.prompt_tokens)) + "; " +
                std::to_string(uint64_t(run.metrics.prefill_tokens)) + " computed)\n";
}

BatchResult BatchJob::run(runtime::Leader& leader, const std::atomic<int>* stop) {
  const model::ModelConfig& mc = leader.executor().model().config();
  ProgressOptions po;
  po.terminal = options_.progress_bar;
  po.log_interval_s = options_.log_interval_s;
  RunContext run(leader, scheduler_options(mc, leader.executor().model().backend()), int64_t(input_.items.size()), num_resumed_, po);
  run.limits = api_limits(mc);
  run.result.total = int64_t(input_.items.size());
  for (size_t i = 0; i < input_.items.size(); ++i)
    if (committed_by_item_[i] < 0) run.todo.push_back(i);
  if (options_.mtp > 0) run.progress.enable_speculative(options_.mtp);
  run.engine.start();

  Clock::time_point last_flush = Clock::now();
  while (!(stop && *stop) && !run.engine.failed()) {
    const bool fed = feed(run);
    const bool collected = collect(run);
    if (!run.result.failure.empty() || (run.next >= run.todo.size() && run.in_flight.empty())) break;
    run.progress.set_speculative(run.engine.speculative_stats());
    run.progress.tick();
    if (output_dirty_ && seconds_since(last_flush) >= options_.flush_interval_s) {
      write_output();
      last_flush = Clock::now();
    }
    if (!fed && !collected) std::this_thread::sleep_for(kIdlePoll);
  }
  finish_run(run, stop);
  return run.result;
}

}  // namespace v4rt::launch::batch
