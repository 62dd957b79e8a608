// SPDX-License-Identifier: MIT
// HttpServer: routes, authentication, request bodies, errors, and the generation loop behind the
// non-streaming and SSE responses.
//
// SSE framing: every event is `data: <json>\n\n`; while a generation has nothing new for a second
// the server writes a `: keepalive` comment. A stream ends with exactly one of: the final chunk
// (finish_reason, usage) followed by `data: [DONE]\n\n`, or one error event (no [DONE]). Whether
// streaming or not, a client whose connection closes has its generation cancelled.
#include "launch/serve/http_server.h"

#include <httplib.h>
#include <strings.h>
#include <sys/socket.h>

#include <chrono>
#include <cinttypes>
#include <ctime>
#include <functional>
#include <random>

#include "common/check.h"
#include <glog/logging.h>
#include "launch/serve/http_connections.h"
#include "launch/serve/output.h"

namespace v4rt::launch::serve {

using runtime::Engine;
using runtime::FinishReason;
using runtime::Metrics;
using runtime::TokenEvent;
using runtime::TokenStream;

namespace {

constexpr auto kWaitSlice = std::chrono::milliseconds(1000);
constexpr int kListenBacklog = 1024;  // connections the kernel queues before accept()
// Workers beyond the scheduler's running + queued requests (which may each hold one for a whole
// generation), for /health, /metrics, rejections and requests being parsed.
constexpr int kSpareWorkers = 16;

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

// Compares a presented secret with the expected one in time that depends only on the expected
// length, so response times do not reveal how many leading bytes matched.
bool same_secret(const std::string& presented, const std::string& expected) {
  unsigned char diff = presented.size() != expected.size();
  for (size_t i = 0; i < expected.size(); ++i)
    diff |= static_cast<unsigned char>((i < presented.size() ? presented[i] : 0) ^ expected[i]);
  return diff == 0;
}

// The request's connection ends after its response (a body left unread, a refused request).
void close_after_response() {
  if (Connection* c = current_connection()) c->close_after_response();
}

// cpp-httplib's accept loop hands each connection to the task queue; this one runs the hand-off
// (GatedServer::process_and_close_socket: admission into the gate) on the accept thread itself.
class InlineQueue : public httplib::TaskQueue {
 public:
  void enqueue(std::function<void()> fn) override { fn(); }
  void shutdown() override {}
};

enum class Ending { kFinished, kFailed, kClientGone };

}  // namespace

// cpp-httplib's Server with its per-connection thread replaced by the ConnectionGate: an accepted
// socket goes to the gate; the gate's workers call serve() once per complete request header.
class GatedServer : public httplib::Server {
 public:
  void set_gate(ConnectionGate* gate) { gate_ = gate; }
  // One request on `c`; false: close the connection.
  bool serve(Connection& c, bool last_request) {
    bool closed = false;
    const bool ok = process_request(c, last_request, closed, nullptr);
    return ok && !closed;
  }

 private:
  bool process_and_close_socket(socket_t sock) override {
    gate_->admit(sock);
    return true;
  }
  ConnectionGate* gate_ = nullptr;
};

// One generation and what its response needs.
struct GenerationState {
  GenerationSpec spec;
  std::shared_ptr<runtime::Request> request;
  std::unique_ptr<GenerationOutput> output;
  ResponseMeta meta;
  std::string message;  // the failure, for kFailed
};

namespace {

// The one generation loop of both response kinds. Waits for tokens in slices, turns them into
// deltas and hands each to `emit` (false: the client is gone); between tokens it checks that the
// client's connection is still open and, after a slice without tokens, calls `idle` (the SSE
// keep-alive; false: the client is gone). A gone client cancels the generation.
Ending run_generation(GenerationState& st, const std::function<bool(const Delta&)>& emit,
                      const std::function<bool()>& idle) {
  TokenStream& ts = *st.request->stream;
  Connection* conn = current_connection();
  std::vector<TokenEvent> events;
  std::vector<Delta> deltas;
  auto gone = [&] {
    ts.cancel();
    return Ending::kClientGone;
  };
  for (;;) {
    events.clear();
    deltas.clear();
    FinishReason reason = ts.wait(&events, kWaitSlice, &st.message);
    if (!st.output->on_tokens(events, &deltas)) {
      ts.cancel();  // a stop string matched
      reason = FinishReason::kEos;
    }
    const bool failed = reason == FinishReason::kError || reason == FinishReason::kCancelled;
    if (reason != FinishReason::kNone && !failed) st.output->finish(reason, &deltas);
    for (const Delta& d : deltas)
      if (!emit(d)) return gone();
    if (failed) return Ending::kFailed;
    if (reason != FinishReason::kNone) return Ending::kFinished;
    if (conn && !conn->client_alive()) return gone();
    if (events.empty() && !idle()) return gone();
  }
}

text_json error_event(const std::string& message) {
  return text_json{{"error", {{"message", "generation failed: " + message}, {"type", "server_error"},
                              {"param", nullptr}, {"code", 503}}}};
}

}  // namespace

HttpServer::HttpServer(const launch::ServerConfig& config, const model::text::Tokenizer& tokenizer, Metrics& metrics)
    : config_(config), tokenizer_(tokenizer), metrics_(metrics), server_(std::make_unique<GatedServer>()) {
  ConnectionLimits limits;
  limits.max_connections = config_.max_connections;
  limits.max_connections_per_client = config_.max_connections_per_client;
  limits.receive_timeout_s = config_.receive_timeout_s;
  limits.workers = config_.max_running + config_.max_queue + kSpareWorkers;
  gate_ = std::make_unique<ConnectionGate>(
      limits, [this](Connection& c, bool last) { return server_->serve(c, last); },
      [](int status, const std::string& message) { return ApiError(status, message).json(); });
  GatedServer& s = *server_;
  s.set_gate(gate_.get());
  s.new_task_queue = [] { return new InlineQueue; };
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

  // Runs once the headers are in, before any body byte is read: what can be refused from the
  // headers alone is refused here, and a refused request's connection closes (its body is unread).
  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    using R = httplib::Server::HandlerResponse;
    if (!config_.api_key.empty() && req.path != "/health") {
      const std::string auth = req.get_header_value("Authorization");
      if (!same_secret(auth, "Bearer " + config_.api_key)) {
        close_after_response();
        send_error(res, ApiError(401,
                                 auth.empty() ? "missing API key (send 'Authorization: Bearer <key>')" : "invalid API key",
                                 "", "invalid_api_key"));
        return R::Handled;
      }
    }
    if (req.method != "POST") return R::Unhandled;
    const bool chunked = strcasecmp(req.get_header_value("Transfer-Encoding").c_str(), "chunked") == 0;
    const size_t limit = size_t(config_.max_body_mb) << 20;
    if (req.has_header("Content-Length")) {
      const std::string text = req.get_header_value("Content-Length");
      char* end = nullptr;
      const unsigned long long length = std::strtoull(text.c_str(), &end, 10);
      if (text.empty() || *end != '\0' || text[0] == '-') {
        close_after_response();
        send_error(res, ApiError(400, "Content-Length '" + text + "' is not a number"));
        return R::Handled;
      }
      if (length > limit) {
        close_after_response();
        send_error(res, ApiError(413, "the request body is too large: " + text + " bytes; server.max_body_mb is " +
                                          std::to_string(config_.max_body_mb) + " MiB", "", "body_too_large"));
        return R::Handled;
      }
    } else if (!chunked) {
      close_after_response();
      send_error(res, ApiError(411, "a POST body needs Content-Length or Transfer-Encoding: chunked"));
      return R::Handled;
    }
    if (req.is_multipart_form_data()) {
      close_after_response();
      send_error(res, ApiError(415, "the request body must be JSON (Content-Type: application/json)"));
      return R::Handled;
    }
    return R::Unhandled;
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
    std::string text = metrics_.prometheus_text();
    auto add = [&text](const char* name, const char* type, const char* help, uint64_t value) {
      text += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " +
              std::to_string(value) + "\n";
    };
    add("v4rt_open_connections", "gauge", "HTTP connections open (waiting for a request or being served)",
        uint64_t(gate_->open_connections()));
    add("v4rt_connections_refused_total", "counter",
        "connections refused at once over server.max_connections or max_connections_per_client",
        gate_->refused_connections());
    add("v4rt_receive_timeouts_total", "counter", "requests not received within server.receive_timeout_s (408)",
        gate_->receive_timeouts());
    res.set_content(text, "text/plain; version=0.0.4");
  });
  s.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) { handle_models(res); });
  // The bodies are read here, not by the library, so that server.max_body_mb holds for chunked
  // bodies too (the library checks only Content-Length) while the body arrives.
  for (const bool chat : {true, false}) {
    s.Post(chat ? "/v1/chat/completions" : "/v1/completions",
           [this, chat](const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& reader) {
             const size_t limit = size_t(config_.max_body_mb) << 20;
             std::string body;
             bool too_large = false;
             const bool ok = reader([&](const char* data, size_t n) {
               if (body.size() + n > limit) {
                 too_large = true;
                 return false;
               }
               body.append(data, n);
               return true;
             });
             if (ok) return handle_generate(req, res, body, chat);
             close_after_response();
             const Connection* c = current_connection();
             if (too_large) {
               send_error(res, ApiError(413, "the request body is too large: over server.max_body_mb (" +
                                                 std::to_string(config_.max_body_mb) + " MiB)", "", "body_too_large"));
             } else if (c && c->receive_timed_out()) {
               send_error(res, ApiError(408, "the request body did not arrive within server.receive_timeout_s"));
             } else {
               send_error(res, ApiError(400, "the request body could not be read (malformed chunked encoding?)"));
             }
           });
  }
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
  if (gate_) gate_->stop();
}

uint64_t HttpServer::refused_connections() const { return gate_->refused_connections(); }
uint64_t HttpServer::receive_timeouts() const { return gate_->receive_timeouts(); }

bool HttpServer::drain(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(drain_mu_);
  return drain_cv_.wait_for(lock, timeout, [this] { return active_generations_ == 0; });
}

void HttpServer::end_generation() {
  {
    std::lock_guard<std::mutex> lock(drain_mu_);
    --active_generations_;
  }
  drain_cv_.notify_all();
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

void HttpServer::handle_generate(const httplib::Request&, httplib::Response& res, const std::string& body_text,
                                 bool chat) {
  auto state = std::make_shared<GenerationState>();
  try {
    std::string why;
    if (!serving(&why)) throw ApiError(503, why);
    Engine* engine = engine_.load();
    const text_json body = parse_json_body(body_text);
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
    request->boundaries = spec.boundaries;
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
  start_generation(std::move(state), res);
}

void HttpServer::start_generation(std::shared_ptr<GenerationState> state, httplib::Response& res) {
  {
    std::lock_guard<std::mutex> lock(drain_mu_);
    ++active_generations_;
  }
  if (!state->spec.stream) {
    const Ending ending = run_generation(
        *state, [](const Delta&) { return true; }, [] { return true; });
    end_generation();
    if (ending == Ending::kClientGone) {
      close_after_response();
      return send_error(res, ApiError(499, "the client closed the connection; the generation was cancelled"));
    }
    if (ending == Ending::kFailed) return send_error(res, ApiError(503, "generation failed: " + state->message));
    const TokenStream& ts = *state->request->stream;
    res.set_content(dump(final_json(state->meta, *state->output, ts.prompt_tokens, ts.cached_tokens)),
                    "application/json");
    return;
  }

  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  // The provider runs the whole generation in its first call; the library calls it again only if
  // it returned without sink.done(), which it never does.
  res.set_chunked_content_provider(
      "text/event-stream",
      [state](size_t, httplib::DataSink& sink) {
        auto send = [&](const text_json& j) {
          const std::string line = "data: " + dump(j) + "\n\n";
          return sink.write(line.data(), line.size());
        };
        if (!send(chunk_json(state->meta, nullptr, "", nullptr))) {
          state->request->stream->cancel();
          return false;
        }
        const Ending ending = run_generation(
            *state,
            [&](const Delta& d) { return send(chunk_json(state->meta, &d, "", state->output->take_logprobs())); },
            [&] {
              static const char kKeepAlive[] = ": keepalive\n\n";
              return sink.write(kKeepAlive, sizeof(kKeepAlive) - 1);
            });
        if (ending == Ending::kClientGone) return false;
        if (ending == Ending::kFailed) {
          // The status line went out with the first chunk; the error event carries the 503 and
          // ends the stream.
          send(error_event(state->message));
        } else {
          const TokenStream& ts = *state->request->stream;
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
          static const char kDone[] = "data: [DONE]\n\n";
          sink.write(kDone, sizeof(kDone) - 1);
        }
        sink.done();
        return true;
      },
      [this, state](bool) {
        // Whatever happened to the connection, a generation nobody reads any more stops.
        state->request->stream->cancel();
        end_generation();
      });
}

}  // namespace v4rt::launch::serve
