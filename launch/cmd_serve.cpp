// SPDX-License-Identifier: MIT
// `v4rt serve`: the OpenAI-compatible server, on one rank or under `mpirun -np N` with the
// `parallel:` layout of the config. Rank 0: runtime config (+ command-line overrides), tokenizer,
// HTTP listener (answers 503 while loading), model load (ModelRun: MPI world, groups, shards, the
// barrier that every rank has loaded), engine thread (runtime::Engine), ready. The other ranks
// load their shards and run the follower loop (runtime/leader.h). Runs until SIGINT/SIGTERM (to
// rank 0, or to every rank from mpirun): requests in flight get 503, the followers leave on the
// shutdown plan. A failed rank ends the job (serve/ranks.h "Fault path"); a follower that stops
// answering while the server is idle turns /health to 503 naming it, then the job ends.
#include <CLI/CLI.hpp>
#include <glog/logging.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>

#include "cluster/world.h"
#include "runtime/engine.h"
#include "common/check.h"
#include "common/logging.h"
#include "launch/backend_option.h"
#include "launch/commands.h"
#include "launch/model_run.h"
#include "launch/serve/http_server.h"
#include "launch/serve/ranks.h"
#include "launch/prefix_cache_options.h"
#include "launch/runtime_config.h"
#include "model/text/tokenizer.h"

namespace v4rt::launch {

namespace {

struct ServeArgs {
  std::string config;
  std::string model_dir;
  std::string host;
  int port = -1;
  std::string api_key;
  std::string api_key_file;
  std::string tokenizer;
  std::string port_file;
  std::string backend = "cpu";
  int device = 0;
  bool graphs = true;  // --no-graphs: false
  double rank_timeout_s = 5.0;
  int mtp = 0;
  int prefill_chunk = -1;  // -1: the config's prefill_chunk
};

int64_t default_kv_budget_bytes() {
  // CPU backend: a quarter of physical memory.
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? int64_t(pages) * page / 4 : int64_t(4) << 30;
}

// The API key from --api-key, else --api-key-file (first line), else $V4RT_API_KEY; empty: none
// given (the config's server.api_key stays). The file and the variable keep the key out of `ps`.
std::string api_key_from(const ServeArgs& args) {
  if (!args.api_key.empty()) return args.api_key;
  if (!args.api_key_file.empty()) {
    std::ifstream in(args.api_key_file);
    V4RT_REQUIRE(in, "--api-key-file: cannot read " << args.api_key_file);
    std::string key;
    std::getline(in, key);
    while (!key.empty() && (key.back() == '\r' || key.back() == ' ' || key.back() == '\t')) key.pop_back();
    V4RT_REQUIRE(!key.empty(), "--api-key-file: " << args.api_key_file << " holds no key on its first line");
    return key;
  }
  const char* env = std::getenv("V4RT_API_KEY");
  return env ? std::string(env) : std::string();
}

void apply_vmodule(const std::string& spec) {
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const size_t eq = item.find('=');
    V4RT_REQUIRE(eq != std::string::npos, "debug.vmodule: '" << item << "' is not module=level");
    google::SetVLOGLevel(item.substr(0, eq).c_str(), std::stoi(item.substr(eq + 1)));
  }
}

// How long a leader whose follower stopped answering keeps answering /health with the 503 that
// names the rank before it ends the job.
constexpr auto kLostRankLinger = std::chrono::seconds(2);

// A follower rank: its shards, the load barrier, then the leader's plans until shutdown.
void follow_leader(const RunOptions& ro) {
  ModelRun run(ro);
  run.follow();
}

serve::ApiLimits api_limits(const launch::RuntimeConfig& rc, const model::ModelConfig& mc, int ranks) {
  serve::ApiLimits limits;
  limits.model_name = rc.server.model_name.empty()
                          ? std::filesystem::path(rc.model).lexically_normal().filename().string()
                          : rc.server.model_name;
  if (limits.model_name.empty()) limits.model_name = std::filesystem::path(rc.model).parent_path().filename().string();
  limits.max_context = rc.server.max_context > 0 ? rc.server.max_context : mc.max_position_embeddings;
  limits.defaults = rc.sampling;
  limits.dialect = model::text::parse_effort_dialect(rc.server.effort_dialect);
  limits.test_hook_forced_output = rc.debug.test_hook_forced_output;
  limits.ranks = ranks;
  return limits;
}

void run_serve(const ServeArgs& args) {
  launch::RuntimeConfig rc = args.config.empty() ? launch::RuntimeConfig{} : launch::load_runtime_config(args.config);
  if (!args.model_dir.empty()) rc.model = args.model_dir;
  if (!args.host.empty()) rc.server.host = args.host;
  if (args.port >= 0) rc.server.port = args.port;
  if (const std::string key = api_key_from(args); !key.empty()) rc.server.api_key = key;
  if (args.prefill_chunk >= 0) rc.prefill_chunk = args.prefill_chunk;
  V4RT_REQUIRE(!rc.model.empty(), "no model: set `model:` in the config or pass --model");
  V4RT_REQUIRE(args.rank_timeout_s > 0, "--rank-timeout must be > 0");
  V4RT_REQUIRE(args.mtp >= 0, "--mtp must be >= 0");
  const bool mpi = cluster::launched_by_mpirun();
  if (mpi) {
    cluster::WorldOptions wo;
    wo.log_dir = rc.debug.log_dir;
    cluster::init_world(nullptr, nullptr, wo);
  } else {
    LoggingOptions lo;
    lo.log_dir = rc.debug.log_dir;
    init_logging("v4rt", lo);
  }
  if (!rc.debug.vmodule.empty()) apply_vmodule(rc.debug.vmodule);
  serve::install_stop_signals();
  // Declared first, so it also watches the MPI teardown of ModelRun's destructor.
  serve::StopWatch watch(std::chrono::milliseconds(mpi ? 5000 : 30000), "the shutdown of `v4rt serve`");

  RunOptions ro;
  ro.model_dir = rc.model;
  ro.config = args.config;
  ro.numerics = rc.numerics;
  ro.backend = args.backend;
  ro.device = args.device;
  ro.graphs = args.graphs;
  ro.timeout_s = args.rank_timeout_s;
  ro.mtp = args.mtp > 0;
  if (mpi && cluster::world().rank != 0) return follow_leader(ro);
  if (rc.debug.test_hook_forced_output) LOG(WARNING) << "debug.test_hook_forced_output is on: a TEST HOOK, not for production";

  const model::text::Tokenizer tokenizer(model::text::find_tokenizer_path(args.tokenizer, rc.model));
  runtime::Metrics metrics;
  serve::HttpServer server(rc.server, tokenizer, metrics);
  const int port = server.bind(rc.server.host, rc.server.port);
  std::printf("v4rt serve: listening on http://%s:%d\n", rc.server.host.c_str(), port);
  std::fflush(stdout);
  if (!args.port_file.empty()) {
    const std::string tmp = args.port_file + ".tmp";
    std::ofstream(tmp) << port << "\n";
    std::filesystem::rename(tmp, args.port_file);
  }
  std::thread listener([&server] { server.listen(); });

  std::unique_ptr<ModelRun> run;
  std::unique_ptr<runtime::Engine> engine;
  std::unique_ptr<serve::FaultPath> fault_path;
  try {
    run = std::make_unique<ModelRun>(ro);
    model::Model& m = run->model();
    runtime::SchedulerOptions so;
    so.max_batch_tokens = rc.server.max_batch_tokens;
    so.max_running = rc.server.max_running;
    so.max_queue = rc.server.max_queue;
    so.kv_budget_bytes = rc.server.kv_budget_mb > 0 ? rc.server.kv_budget_mb << 20 : default_kv_budget_bytes();
    so.prefix_cache = prefix_cache_options(rc);
    so.eos_token_id = int32_t(m.config().eos_token_id);
    so.mtp_depth = args.mtp;
    so.prefill_chunk = rc.prefill_chunk;
    so.device_sampling = draws_on_device(rc, m.backend());
    engine = std::make_unique<runtime::Engine>(run->lead(), so, &metrics);
    if (run->num_ranks() > 1) fault_path = std::make_unique<serve::FaultPath>(engine->scheduler());
    engine->start();
    const serve::ApiLimits limits = api_limits(rc, m.config(), run->num_ranks());
    server.set_ready(engine.get(), limits);
    LOG(INFO) << "serving '" << limits.model_name << "' on " << rc.server.host << ":" << port << " over "
              << run->num_ranks() << " rank(s) (context " << limits.max_context << " tokens, KV budget "
              << (so.kv_budget_bytes >> 20) << " MiB, batch " << so.max_batch_tokens << " tokens"
              << (so.mtp_depth > 0 ? ", " + std::to_string(so.mtp_depth) + " MTP draft tokens per step" : "") << ")";
  } catch (const std::exception& e) {
    LOG(ERROR) << "model load failed: " << e.what();
    server.set_failed(std::string("model load failed: ") + e.what());
    if (mpi) {  // the other ranks failed the same way (or wait in a collective): the job ends
      server.stop();
      listener.join();
      throw;
    }
  }

  while (!serve::stop_signal() && !(engine && engine->failed())) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const bool failed = engine && engine->failed();
  LOG(INFO) << "stopping (" << (failed ? "engine failure" : "signal " + std::to_string(serve::stop_signal())) << ")";
  if (failed && run->num_ranks() > 1) {
    // The ranks no longer hold the same states (or one no longer answers); the requests got their
    // 503 from the engine and /health names the failure until the job ends. Every open response
    // writes its error (an SSE error event, a JSON 503) before the job ends.
    const auto linger_until = std::chrono::steady_clock::now() + kLostRankLinger;
    if (!server.drain(std::chrono::milliseconds(3000))) LOG(WARNING) << "responses still open at the abort";
    std::this_thread::sleep_until(linger_until);
    serve::abort_job("engine failed: " + engine->failure(), 2);
  }
  if (engine) {
    engine->scheduler().fail_all("the server is shutting down");  // 503 to every open request
    engine->stop();  // the shutdown plan releases the followers
  }
  server.stop();
  listener.join();
  fault_path.reset();  // first: it unhooks the fault path from the engine's scheduler
  engine.reset();
  run.reset();
  if (failed) exit_code() = 2;
}

}  // namespace

void register_serve(CLI::App& app) {
  auto args = std::make_shared<ServeArgs>();
  CLI::App* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server (chat/completions, completions, SSE)");
  cmd->add_option("--config", args->config,
                  "Runtime YAML (configs/*.yaml); server.prefix_cache and the prefix_cache section (block_tokens, "
                  "every_n, budget_fraction) tune prefix reuse (docs/PREFIX_CACHE.md)");
  cmd->add_option("--model", args->model_dir, "Checkpoint directory (overrides `model:`)");
  cmd->add_option("--host", args->host, "Listen address (default 127.0.0.1)");
  cmd->add_option("--port", args->port, "Listen port; 0 picks a free one (default from config, 8080)");
  cmd->add_option("--api-key", args->api_key,
                  "Require 'Authorization: Bearer KEY' on every endpoint but /health (visible in `ps`: prefer "
                  "--api-key-file or $V4RT_API_KEY)");
  cmd->add_option("--api-key-file", args->api_key_file, "Read the API key from the first line of this file");
  cmd->add_option("--tokenizer", args->tokenizer, "tokenizer.json (default: model dir, $V4RT_TOKENIZER, data/tokenizer)");
  cmd->add_option("--port-file", args->port_file, "Write the bound port to this file once listening");
  add_backend_option(cmd, &args->backend, &args->device);
  add_no_graphs_flag(cmd, &args->graphs);
  cmd->add_option("--rank-timeout", args->rank_timeout_s,
                  "Under mpirun: seconds a rank waits for a peer in one plan broadcast or model collective "
                  "before the job is aborted (default 5)");
  cmd->add_option("--mtp", args->mtp,
                  "Speculative decoding: draft tokens per verify step with the checkpoint's MTP block "
                  "(0: off; greedy output is unchanged, sampled output keeps its distribution)");
  cmd->add_option("--prefill-chunk", args->prefill_chunk,
                  "Most prompt tokens of one request per step (overrides `prefill_chunk:`; 0: the step budget)")
      ->check(CLI::NonNegativeNumber);
  cmd->callback([args] { run_serve(*args); });
}

}  // namespace v4rt::launch
