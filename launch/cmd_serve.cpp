// SPDX-License-Identifier: MIT
// `v4rt serve`: the OpenAI-compatible server. Order: runtime config (+ command-line overrides),
// tokenizer, HTTP listener (answers 503 while loading), model load, engine thread, ready. Runs
// until SIGINT/SIGTERM, then stops the listener and the engine. One rank for now: the engine's plan
// hook is where a distributed driver will broadcast each step to the follower ranks.
#include <CLI/CLI.hpp>
#include <glog/logging.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>

#include "common/check.h"
#include "common/logging.h"
#include "kernels/backend.h"
#include "launch/commands.h"
#include "launch/serve/engine.h"
#include "launch/serve/http_server.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "model/runtime_config.h"
#include "model/text/tokenizer.h"

namespace v4rt::launch {

namespace {

std::atomic<int> g_stop_signal{0};
void on_stop_signal(int sig) { g_stop_signal = sig; }

struct ServeArgs {
  std::string config;
  std::string model_dir;
  std::string host;
  int port = -1;
  std::string api_key;
  std::string tokenizer;
  std::string port_file;
};

int64_t default_kv_budget_bytes() {
  // CPU backend: a quarter of physical memory.
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? int64_t(pages) * page / 4 : int64_t(4) << 30;
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

void run_serve(const ServeArgs& args) {
  model::RuntimeConfig rc = args.config.empty() ? model::RuntimeConfig{} : model::load_runtime_config(args.config);
  if (!args.model_dir.empty()) rc.model = args.model_dir;
  if (!args.host.empty()) rc.server.host = args.host;
  if (args.port >= 0) rc.server.port = args.port;
  if (!args.api_key.empty()) rc.server.api_key = args.api_key;
  V4RT_REQUIRE(!rc.model.empty(), "no model: set `model:` in the config or pass --model");
  V4RT_REQUIRE(rc.parallel.tp * rc.parallel.sp * rc.parallel.ep * rc.parallel.dp == 1,
               (args.config.empty() ? "<defaults>" : args.config)
                   << ": key 'parallel': `v4rt serve` runs on one rank; multi-rank serving needs the distributed driver");
  LoggingOptions lo;
  lo.log_dir = rc.debug.log_dir;
  init_logging("v4rt", lo);
  if (!rc.debug.vmodule.empty()) apply_vmodule(rc.debug.vmodule);
  if (rc.debug.test_hook_forced_output) LOG(WARNING) << "debug.test_hook_forced_output is on: a TEST HOOK, not for production";

  const model::text::Tokenizer tokenizer(model::text::find_tokenizer_path(args.tokenizer, rc.model));
  serve::Metrics metrics;
  serve::HttpServer server(rc.server, tokenizer, metrics);
  const int port = server.bind(rc.server.host, rc.server.port);
  std::printf("v4rt serve: listening on http://%s:%d\n", rc.server.host.c_str(), port);
  std::fflush(stdout);
  if (!args.port_file.empty()) {
    const std::string tmp = args.port_file + ".tmp";
    std::ofstream(tmp) << port << "\n";
    std::filesystem::rename(tmp, args.port_file);
  }
  std::signal(SIGPIPE, SIG_IGN);
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  std::thread listener([&server] { server.listen(); });

  std::unique_ptr<kernels::Backend> backend;
  std::unique_ptr<model::Checkpoint> ckpt;
  std::unique_ptr<model::Model> m;
  std::unique_ptr<serve::Engine> engine;
  try {
    ckpt = model::Checkpoint::open(rc.model);
    backend = kernels::make_cpu_backend();
    model::ModelOptions mo;
    mo.numerics = model::parse_numerics(rc.numerics);
    m = model::Model::load(*ckpt, mo, *backend);

    serve::SchedulerOptions so;
    so.max_batch_tokens = rc.server.max_batch_tokens;
    so.max_running = rc.server.max_running;
    so.max_queue = rc.server.max_queue;
    so.kv_budget_bytes = rc.server.kv_budget_mb > 0 ? rc.server.kv_budget_mb << 20 : default_kv_budget_bytes();
    so.prefix_cache = rc.server.prefix_cache;
    so.eos_token_id = int32_t(m->config().eos_token_id);
    engine = std::make_unique<serve::Engine>(*m, so, &metrics);
    engine->start();

    serve::ApiLimits limits;
    limits.model_name = rc.server.model_name.empty()
                            ? std::filesystem::path(rc.model).lexically_normal().filename().string()
                            : rc.server.model_name;
    if (limits.model_name.empty()) limits.model_name = std::filesystem::path(rc.model).parent_path().filename().string();
    limits.max_context = rc.server.max_context > 0 ? rc.server.max_context : m->config().max_position_embeddings;
    limits.defaults = rc.sampling;
    limits.dialect = model::text::parse_effort_dialect(rc.server.effort_dialect);
    limits.test_hook_forced_output = rc.debug.test_hook_forced_output;
    server.set_ready(engine.get(), limits);
    LOG(INFO) << "serving '" << limits.model_name << "' on " << rc.server.host << ":" << port << " (context "
              << limits.max_context << " tokens, KV budget " << (so.kv_budget_bytes >> 20) << " MiB, batch "
              << so.max_batch_tokens << " tokens)";
  } catch (const std::exception& e) {
    LOG(ERROR) << "model load failed: " << e.what();
    server.set_failed(std::string("model load failed: ") + e.what());
  }

  while (!g_stop_signal && !(engine && engine->failed())) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  LOG(INFO) << "stopping (" << (g_stop_signal ? "signal" : "engine failure") << ")";
  if (engine) engine->stop();
  server.stop();
  listener.join();
  if (engine && engine->failed()) exit_code() = 2;
}

}  // namespace

void register_serve(CLI::App& app) {
  auto args = std::make_shared<ServeArgs>();
  CLI::App* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server (chat/completions, completions, SSE)");
  cmd->add_option("--config", args->config, "Runtime YAML (configs/*.yaml)");
  cmd->add_option("--model", args->model_dir, "Checkpoint directory (overrides `model:`)");
  cmd->add_option("--host", args->host, "Listen address (default 127.0.0.1)");
  cmd->add_option("--port", args->port, "Listen port; 0 picks a free one (default from config, 8080)");
  cmd->add_option("--api-key", args->api_key, "Require 'Authorization: Bearer KEY' on every endpoint but /health");
  cmd->add_option("--tokenizer", args->tokenizer, "tokenizer.json (default: model dir, $V4RT_TOKENIZER, data/tokenizer)");
  cmd->add_option("--port-file", args->port_file, "Write the bound port to this file once listening");
  cmd->callback([args] { run_serve(*args); });
}

}  // namespace v4rt::launch
