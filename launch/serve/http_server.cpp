// SPDX-License-Identifier: MIT
// HttpServer: routes, authentication, errors, and the non-streaming / SSE response paths.
//
// SSE framing: every event is `data: <json>\n\n`; while a generation has nothing new for a second
// the server writes a `: keepalive` comment, which is also how a vanished client is noticed (the
// write fails) and its generation cancelled. The stream ends with `data: [DONE]\n\n`.
#include "launch/serve/http_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <chrono>
#include <cinttypes>
#include <ctime>
#include <random>

#include "common/check.h"
#include <glog/logging.h>
#include "launch/serve/output.h"

namespace v4rt::launch::serve {

namespace {

constexpr auto kWaitSlice = std::chrono::milliseconds(1000);
constexpr int kListenBacklog = 1024;  // connections the kernel queues before accept()

std::string dump(const text_json& j) { return j.dump(-1, ' ', false, text_json::error_handler_t::replace); }

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status();
  res.set_content(e.json(), "application/json");
}

std::string random_hex(int n) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* kHex = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < n; ++i) s += kHex[rng() & 15];
  return s;
}

std::string endpoint_label(const std::string& path) {
  for (const char* known : {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics"})
    if (path == known) return path;
  return "other";
}

// State of one SSE response, shared by the content provider calls.
struct SseState {
  GenerationSpec spec;
  std::shared_ptr<runtime::Request> request;
  std::unique_ptr<GenerationOutput> output;
  ResponseMeta meta;
  bool sent_role = false;
  bool done = false;
};

}  // namespace

HttpServer::HttpServer(const model::ServerConfig& config, const model::text::Tokenizer& tokenizer, runtime::Metrics& metrics)
    : config_(config), tokenizer_(tokenizer), metrics_(metrics), server_(std::make_unique<httplib::Server>()) {
  httplib::Server& s = *server_;
  // Streaming requests hold a pool thread for their whole generation; keep-alive connections hold
  // one while idle.
  const size_t threads = size_t(config_.max_running + config_.max_queue + 16);
  s.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  s.set_payload_max_length(size_t(config_.max_body_mb) << 20);
  // The library's default sets SO_REUSEPORT (a second server could bind the same port and take
  // its connections); SO_REUSEADDR is enough to restart on a port in TIME_WAIT. The socket is kept
  // to widen the listen backlog after bind (the library listens with a backlog of 5, too few for
  // hundreds of clients connecting at once).
  s.set_socket_options([this](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_socket_ = sock;
  });
  s.set_keep_alive_timeout(5);

  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (config_.api_key.empty() || req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
    const std::string auth = req.get_header_value("Authorization");
    if (auth == "Bearer " + config_.api_key) return httplib::Server::HandlerResponse::Unhandled;
    send_error(res, ApiError(401,
                             auth.empty() ? "missing API key (send 'Authorization: Bearer <key>')" : "invalid API key",
                             "", "invalid_api_key"));
    return httplib::Server::HandlerResponse::Handled;
  });
  s.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty() || res.content_provider_) return httplib::Server::HandlerResponse::Unhandled;
    std::string msg = "HTTP " + std::to_string(res.status);
    if (res.status == 404) msg = "no route for " + req.method + " " + req.path;
    if (res.status == 413) msg = "the request body is too large";
    if (res.status == 405) msg = "method not allowed";
    send_error(res, ApiError(res.status, msg));
    return httplib::Server::HandlerResponse::Handled;
  }));
  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    send_error(res, ApiError(500, what));
  });
  // Counted before the response is written (a logger runs after), so a client that reads
  // /metrics right after a response sees it.
  s.set_post_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    metrics_.count_request(endpoint_label(req.path), res.status);
    VLOG(1) << req.method << " " << req.path << " -> " << res.status;
  });

  s.Get("/health", [this](const httplib::Request&, httplib::Response& res) { handle_health(res); });
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_.prometheus_text(), "text/plain; version=0.0.4");
  });
  s.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) { handle_models(res); });
  s.Post("/v1/chat/completions",
         [this](const httplib::Request& req, httplib::Response& res) { handle_generate(req, res, true); });
  s.Post("/v1/completions",
         [this](const httplib::Request& req, httplib::Response& res) { handle_generate(req, res, false); });
}

HttpServer::~HttpServer() { stop(); }

int HttpServer::bind(const std::string& host, int port) {
  int bound = port;
  if (port == 0) {
    bound = server_->bind_to_any_port(host);
  } else if (!server_->bind_to_port(host, port)) {
    bound = -1;
  }
  V4RT_REQUIRE(bound > 0, "server: cannot listen on " << host << ":" << port);
  if (listen_socket_ >= 0 && ::listen(listen_socket_, kListenBacklog) != 0)
    LOG(WARNING) << "server: cannot widen the listen backlog to " << kListenBacklog;
  return bound;
}

void HttpServer::listen() { server_->listen_after_bind(); }

void HttpServer::stop() {
  if (server_ && server_->is_running()) server_->stop();
}

void HttpServer::set_ready(runtime::Engine* engine, const ApiLimits& limits) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    limits_ = limits;
  }
  engine_.store(engine);
}

void HttpServer::set_failed(const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  failure_ = why;
}

bool HttpServer::serving(std::string* why) const {
  runtime::Engine* engine = engine_.load();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!failure_.empty()) {
      *why = failure_;
      return false;
    }
  }
  if (!engine) {
    *why = "the model is loading";
    return false;
  }
  if (engine->failed()) {
    *why = engine->failure();
    return false;
  }
  return true;
}

void HttpServer::handle_health(httplib::Response& res) {
  std::string why;
  if (serving(&why)) {
    res.set_content(dump(text_json{{"status", "ok"}, {"model", limits_.model_name}, {"ranks", limits_.ranks}}), "application/json");
  } else {
    res.status = 503;
    res.set_content(dump(text_json{{"status", engine_.load() ? "failed" : "unavailable"}, {"reason", why}}),
                    "application/json");
  }
}

void HttpServer::handle_models(httplib::Response& res) {
  std::string why;
  if (!serving(&why)) return send_error(res, ApiError(503, why));
  text_json m{{"id", limits_.model_name}, {"object", "model"}, {"created", 0}, {"owned_by", "v4rt"},
              {"max_model_len", limits_.max_context}};
  res.set_content(dump(text_json{{"object", "list"}, {"data", text_json::array({m})}}), "application/json");
}

void HttpServer::handle_generate(const httplib::Request& http_req, httplib::Response& res, bool chat) {
  auto state = std::make_shared<SseState>();
  try {
    std::string why;
    if (!serving(&why)) throw ApiError(503, why);
    runtime::Engine* engine = engine_.load();
    const text_json body = parse_json_body(http_req.body);
    try {
      state->spec = chat ? parse_chat_request(body, tokenizer_, limits_) : parse_completion_request(body, tokenizer_, limits_);
    } catch (const v4rt::Error& e) {
      throw ApiError(400, e.what());
    }
    const GenerationSpec& spec = state->spec;
    auto request = std::make_shared<runtime::Request>();
    request->id = next_request_id_++;
    request->priority = spec.priority;
    request->prompt = spec.prompt;
    request->sampling = spec.sampling;
    request->deadline = request->arrival + std::chrono::duration_cast<runtime::Clock::duration>(
                                               std::chrono::duration<double>(config_.request_timeout_s));
    const runtime::SubmitResult submitted = engine->scheduler().submit(request);
    if (submitted.status != 200) {
      ++metrics_.requests_rejected;
      throw ApiError(submitted.status, submitted.message, submitted.status == 413 ? "max_tokens" : "",
                     submitted.status == 429 ? "queue_full" : (submitted.status == 413 ? "kv_budget_exceeded" : ""));
    }
    state->request = request;
    state->output = std::make_unique<GenerationOutput>(tokenizer_, spec);
    state->meta = {(chat ? "chatcmpl-" : "cmpl-") + random_hex(24), int64_t(std::time(nullptr)), limits_.model_name, chat};
  } catch (const ApiError& e) {
    return send_error(res, e);
  }

  runtime::TokenStream& stream = *state->request->stream;
  if (!state->spec.stream) {
    std::vector<runtime::TokenEvent> events;
    std::vector<Delta> deltas;
    runtime::FinishReason reason = runtime::FinishReason::kNone;
    std::string message;
    for (;;) {
      events.clear();
      reason = stream.wait(&events, kWaitSlice, &message);
      if (!state->output->on_tokens(events, &deltas)) {
        stream.cancel();  // a stop string matched
        reason = runtime::FinishReason::kEos;
        break;
      }
      if (reason != runtime::FinishReason::kNone) break;
    }
    if (reason == runtime::FinishReason::kError || reason == runtime::FinishReason::kCancelled)
      return send_error(res, ApiError(503, "generation failed: " + message));
    state->output->finish(reason, &deltas);
    res.set_content(dump(final_json(state->meta, *state->output, stream.prompt_tokens, stream.cached_tokens)),
                    "application/json");
    return;
  }

  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [state](size_t, httplib::DataSink& sink) {
        auto send = [&](const text_json& j) {
          const std::string line = "data: " + dump(j) + "\n\n";
          return sink.write(line.data(), line.size());
        };
        runtime::TokenStream& ts = *state->request->stream;
        if (state->done) {
          sink.done();
          return true;
        }
        if (!state->sent_role) {
          state->sent_role = true;
          if (!send(chunk_json(state->meta, nullptr, "", nullptr))) return false;
        }
        std::vector<runtime::TokenEvent> events;
        std::vector<Delta> deltas;
        std::string message;
        runtime::FinishReason reason = ts.wait(&events, kWaitSlice, &message);
        if (!state->output->on_tokens(events, &deltas)) {
          ts.cancel();
          reason = runtime::FinishReason::kEos;
        }
        if (reason != runtime::FinishReason::kNone && reason != runtime::FinishReason::kError && reason != runtime::FinishReason::kCancelled)
          state->output->finish(reason, &deltas);
        for (const Delta& d : deltas)
          if (!send(chunk_json(state->meta, &d, "", state->output->take_logprobs()))) return false;
        if (reason == runtime::FinishReason::kNone) {
          if (events.empty()) {
            static const char kKeepAlive[] = ": keepalive\n\n";
            if (!sink.write(kKeepAlive, sizeof(kKeepAlive) - 1)) return false;
          }
          return true;
        }
        if (reason == runtime::FinishReason::kError || reason == runtime::FinishReason::kCancelled) {
          // The status line went out with the first chunk; the error event carries the 503.
          send(text_json{{"error", {{"message", "generation failed: " + message}, {"type", "server_error"},
                                     {"param", nullptr}, {"code", 503}}}});
        } else {
          text_json last = chunk_json(state->meta, nullptr, state->output->finish_reason(), state->output->take_logprobs());
          const text_json usage = usage_json(*state->output, ts.prompt_tokens, ts.cached_tokens);
          last["usage"] = usage;
          send(last);
          if (state->spec.include_usage) {
            text_json u = chunk_json(state->meta, nullptr, "", nullptr);
            u["choices"] = text_json::array();
            u["usage"] = usage;
            send(u);
          }
        }
        static const char kDone[] = "data: [DONE]\n\n";
        sink.write(kDone, sizeof(kDone) - 1);
        state->done = true;
        sink.done();
        return true;
      },
      [state](bool) {
        // Whatever happened to the connection, a generation nobody reads any more stops.
        if (state->request) state->request->stream->cancel();
      });
}

}  // namespace v4rt::launch::serve
