// SPDX-License-Identifier: MIT
// The HTTP front (cpp-httplib): /v1/chat/completions, /v1/completions (both streaming as SSE),
// /v1/models, /health and /metrics, Bearer authentication on everything but /health, and
// OpenAI-style JSON errors. It listens before the model is loaded (requests get 503 until
// set_ready()). Connections are admitted and held between requests by a ConnectionGate
// (serve/http_connections.h: connection bounds, one receive deadline per request), so slow or idle
// clients hold no worker thread. Each request runs on a worker that submits to the Scheduler and
// turns the tokens it streams back into responses; a client that goes away, streaming or not,
// cancels its generation.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>

#include "runtime/engine.h"
#include "runtime/metrics.h"
#include "launch/serve/openai_api.h"
#include "launch/runtime_config.h"
#include "model/text/tokenizer.h"

namespace httplib {
class Server;
class Request;
class Response;
}  // namespace httplib

namespace v4rt::launch::serve {

class ConnectionGate;
class GatedServer;
struct GenerationState;

class HttpServer {
 public:
  HttpServer(const launch::ServerConfig& config, const model::text::Tokenizer& tokenizer, runtime::Metrics& metrics);
  ~HttpServer();

  // Binds host:port (port 0: any free port) and returns the port; throws v4rt::Error on failure.
  int bind(const std::string& host, int port);
  // Serves until stop(); call after bind().
  void listen();
  void stop();

  // The model is loaded and the engine runs: generation endpoints open, /health says ok.
  void set_ready(runtime::Engine* engine, const ApiLimits& limits);
  // Loading failed: everything answers 503 with `why`.
  void set_failed(const std::string& why);
  // Waits up to `timeout` until no generation response is being written (each has sent its last
  // chunk or error event); true when none is left.
  bool drain(std::chrono::milliseconds timeout);
  // Connections refused at admission (over a bound) and requests cut by the receive deadline.
  uint64_t refused_connections() const;
  uint64_t receive_timeouts() const;

 private:
  void handle_generate(const httplib::Request& req, httplib::Response& res, const std::string& body, bool chat);
  void start_generation(std::shared_ptr<GenerationState> state, httplib::Response& res);
  void end_generation();
  void handle_health(httplib::Response& res);
  void handle_models(httplib::Response& res);
  bool serving(std::string* why) const;

  launch::ServerConfig config_;
  const model::text::Tokenizer& tokenizer_;
  runtime::Metrics& metrics_;
  std::unique_ptr<GatedServer> server_;
  std::unique_ptr<ConnectionGate> gate_;
  std::mutex drain_mu_;
  std::condition_variable drain_cv_;
  int active_generations_ = 0;  // under drain_mu_
  std::atomic<runtime::Engine*> engine_{nullptr};
  ApiLimits limits_;
  mutable std::mutex mu_;
  std::string failure_;
  std::atomic<uint64_t> next_request_id_{1};
  int listen_socket_ = -1;  // the bound socket (set during bind())
};

}  // namespace v4rt::launch::serve
