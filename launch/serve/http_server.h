// SPDX-License-Identifier: MIT
// The HTTP front (cpp-httplib): /v1/chat/completions, /v1/completions (both streaming as SSE),
// /v1/models, /health and /metrics, Bearer authentication on everything but /health, and
// OpenAI-style JSON errors. It listens before the model is loaded (requests get 503 until
// set_ready()). Each request runs on a pool thread that submits to the Scheduler and turns the
// tokens it streams back into responses; a streaming client that goes away cancels its generation.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "runtime/engine.h"
#include "runtime/metrics.h"
#include "launch/serve/openai_api.h"
#include "model/runtime_config.h"
#include "model/text/tokenizer.h"

namespace httplib {
class Server;
class Request;
class Response;
}  // namespace httplib

namespace v4rt::launch::serve {

class HttpServer {
 public:
  HttpServer(const model::ServerConfig& config, const model::text::Tokenizer& tokenizer, runtime::Metrics& metrics);
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

 private:
  void handle_generate(const httplib::Request& req, httplib::Response& res, bool chat);
  void handle_health(httplib::Response& res);
  void handle_models(httplib::Response& res);
  bool serving(std::string* why) const;

  model::ServerConfig config_;
  const model::text::Tokenizer& tokenizer_;
  runtime::Metrics& metrics_;
  std::unique_ptr<httplib::Server> server_;
  std::atomic<runtime::Engine*> engine_{nullptr};
  ApiLimits limits_;
  mutable std::mutex mu_;
  std::string failure_;
  std::atomic<uint64_t> next_request_id_{1};
  int listen_socket_ = -1;  // the bound socket (set during bind())
};

}  // namespace v4rt::launch::serve
