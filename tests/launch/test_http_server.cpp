// SPDX-License-Identifier: MIT
// The HTTP server in-process on the tiny model, over loopback: health and models, OpenAI-style
// errors for bad requests (the server keeps serving after each), Bearer authentication, streamed
// and non-streamed results of one seeded request being identical (text, tool calls, logprobs,
// usage), cancellation when a streaming client disconnects, 429 on a full queue, the request
// timeout, a body over the size limit, an exclusive port and a listen backlog for many
// simultaneous connects. Then abuse: non-streaming clients that disconnect, slow-header and idle
// connections by the hundred (a load test that stops by itself), connection bounds, chunked bodies
// over the limit, streams that fail, and bodies or fields the server must refuse.
#include <gtest/gtest.h>
#include <httplib.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "common/check.h"
#include "runtime/engine.h"
#include "runtime/leader.h"
#include "launch/serve/http_server.h"
#include "model/text/json_format.h"
#include "serve_test_util.h"

namespace v4rt::launch::serve {
namespace {

using namespace v4rt::runtime;  // the scheduler, engine and step plans under test

using Json = model::text::Json;
using namespace std::chrono_literals;

const char* kKey = "test-key";

// One server + engine on the shared tiny model; only one exists at a time.
class ServerUnderTest {
 public:
  ServerUnderTest(model::Model& m, const model::text::Tokenizer& tok, launch::ServerConfig cfg) : config_(cfg) {
    SchedulerOptions so;
    so.max_batch_tokens = cfg.max_batch_tokens;
    so.max_running = cfg.max_running;
    so.max_queue = cfg.max_queue;
    so.kv_budget_bytes = int64_t(256) << 20;
    rank_ = std::make_unique<SoloRank>(m);
    engine_ = std::make_unique<Engine>(rank_->leader, so, &metrics);
    server_ = std::make_unique<HttpServer>(cfg, tok, metrics);
    port = server_->bind("127.0.0.1", 0);
    listener_ = std::thread([this] { server_->listen(); });
    engine_->start();
    ApiLimits limits;
    limits.model_name = "tiny";
    limits.max_context = cfg.max_context;
    limits.defaults.max_tokens = 8;
    limits.test_hook_forced_output = true;
    server_->set_ready(engine_.get(), limits);
  }
  ~ServerUnderTest() {
    engine_->stop();
    server_->stop();
    listener_.join();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(60, 0);
    if (!config_.api_key.empty()) c.set_bearer_token_auth(config_.api_key.c_str());
    return c;
  }
  Engine& engine() { return *engine_; }
  HttpServer& server() { return *server_; }
  Metrics metrics;
  int port = 0;

 private:
  launch::ServerConfig config_;
  std::unique_ptr<SoloRank> rank_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<HttpServer> server_;
  std::thread listener_;
};

class HttpServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tiny_ = new testing::LoadedModel(testing::load_tiny("tiny_http"));
    tok_ = new model::text::Tokenizer(model::text::find_tokenizer_path());
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete tiny_;
  }
  static launch::ServerConfig base_config() {
    launch::ServerConfig c;
    c.api_key = kKey;
    c.max_context = 512;
    c.max_batch_tokens = 256;
    return c;
  }
  std::unique_ptr<ServerUnderTest> start(launch::ServerConfig c = base_config()) {
    return std::make_unique<ServerUnderTest>(*tiny_->model, *tok_, c);
  }
  static testing::LoadedModel* tiny_;
  static model::text::Tokenizer* tok_;
};
testing::LoadedModel* HttpServerTest::tiny_ = nullptr;
model::text::Tokenizer* HttpServerTest::tok_ = nullptr;

Json chat_body(const std::string& user, int max_tokens = 4) {
  return Json{{"model", "tiny"}, {"messages", Json::array({{{"role", "user"}, {"content", user}}})}, {"max_tokens", max_tokens}};
}

httplib::Result post(httplib::Client& c, const std::string& path, const std::string& body) {
  return c.Post(path.c_str(), body, "application/json");
}

// Status and the error object of a rejected request.
void expect_error(httplib::Client& c, const std::string& body, int status, const std::string& param,
                  const std::string& path = "/v1/chat/completions") {
  auto r = post(c, path, body);
  ASSERT_TRUE(r) << "no response";
  EXPECT_EQ(r->status, status) << r->body;
  const Json j = Json::parse(r->body);
  ASSERT_TRUE(j.contains("error")) << r->body;
  EXPECT_TRUE(j["error"]["message"].is_string());
  EXPECT_TRUE(j["error"]["type"].is_string());
  if (!param.empty()) {
    EXPECT_EQ(j["error"]["param"], param) << r->body;
  }
}

void expect_still_serving(httplib::Client& c) {
  auto r = post(c, "/v1/chat/completions", chat_body("still there?", 2).dump());
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
}

struct SseResult {
  std::string reasoning, content, finish_reason;
  std::string warning;  // choices[0].warning of any chunk (a dropped tool call)
  std::map<int, Json> calls;  // index -> {id, name, arguments}
  std::vector<std::string> logprob_tokens;
  Json usage;
  bool done = false;
  int chunks = 0;
  std::string error;           // the message of an error event
  int events_after_end = 0;    // events after [DONE] or after an error event
};

// Streams a request; `stop_after` > 0 closes the connection after that many data events.
SseResult stream(httplib::Client& c, const Json& body, int stop_after = 0) {
  SseResult out;
  std::string buf;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/chat/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    buf.append(data, n);
    size_t end;
    while ((end = buf.find("\n\n")) != std::string::npos) {
      const std::string ev = buf.substr(0, end);
      buf.erase(0, end + 2);
      if (ev.rfind("data: ", 0) != 0) continue;
      const std::string payload = ev.substr(6);
      if (out.done || !out.error.empty()) ++out.events_after_end;
      if (payload == "[DONE]") {
        out.done = true;
        continue;
      }
      ++out.chunks;
      const Json j = Json::parse(payload);
      if (j.contains("error")) out.error = j["error"]["message"].get<std::string>();
      if (j.contains("usage") && !j["usage"].is_null()) out.usage = j["usage"];
      if (j.contains("choices") && !j["choices"].empty()) {
        const Json& ch = j["choices"][0];
        const Json& d = ch["delta"];
        if (d.contains("reasoning_content")) out.reasoning += d["reasoning_content"].get<std::string>();
        if (d.contains("content")) out.content += d["content"].get<std::string>();
        if (d.contains("tool_calls"))
          for (const Json& tc : d["tool_calls"]) {
            Json& call = out.calls[tc["index"].get<int>()];
            if (tc.contains("id")) call["id"] = tc["id"];
            if (tc["function"].contains("name")) call["name"] = tc["function"]["name"];
            call["arguments"] = call.value("arguments", std::string()) + tc["function"]["arguments"].get<std::string>();
          }
        if (!ch["logprobs"].is_null())
          for (const Json& e : ch["logprobs"]["content"]) out.logprob_tokens.push_back(e["token"].get<std::string>());
        if (!ch["finish_reason"].is_null()) out.finish_reason = ch["finish_reason"].get<std::string>();
        if (ch.contains("warning")) out.warning += ch["warning"].get<std::string>();
      }
      if (stop_after > 0 && out.chunks >= stop_after) return false;
    }
    return true;
  };
  c.send(req);
  return out;
}

TEST_F(HttpServerTest, HealthModelsAndAuth) {
  auto s = start();
  httplib::Client anon("127.0.0.1", s->port);
  auto h = anon.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);  // no key needed
  EXPECT_EQ(Json::parse(h->body)["status"], "ok");
  auto denied = anon.Get("/v1/models");
  ASSERT_TRUE(denied);
  EXPECT_EQ(denied->status, 401);
  EXPECT_EQ(Json::parse(denied->body)["error"]["type"], "authentication_error");
  anon.set_bearer_token_auth("wrong");
  EXPECT_EQ(anon.Post("/v1/chat/completions", chat_body("hi").dump(), "application/json")->status, 401);
  httplib::Client c = s->client();
  auto m = c.Get("/v1/models");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->status, 200);
  EXPECT_EQ(Json::parse(m->body)["data"][0]["id"], "tiny");
  auto metrics = c.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_NE(metrics->body.find("v4rt_requests_total{endpoint=\"/v1/models\",status=\"200\"} 1"), std::string::npos);
  EXPECT_NE(metrics->body.find("v4rt_time_to_first_token_seconds_bucket"), std::string::npos);
  auto missing = c.Get("/v1/nothing");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  EXPECT_TRUE(Json::parse(missing->body).contains("error"));
}

// The prefix cache as a client sees it: usage.prompt_tokens_details.cached_tokens for another user
// with the same system prompt (up to the end of the system message, counted here with the
// tokenizer), the same prompt sent again (all but its last token), a thinking-mode next turn
// without tools (the previous turn's prompt up to its <｜Assistant｜>: the reasoning is dropped), and
// the /metrics lines that count them.
TEST_F(HttpServerTest, PrefixCacheCachedTokensAndMetrics) {
  auto s = start();
  httplib::Client c = s->client();
  std::string system;
  for (int i = 0; i < 12; ++i) system += "You are a careful assistant who answers briefly. ";
  const auto ask = [&](const Json& messages) {
    auto r = post(c, "/v1/chat/completions", Json{{"model", "tiny"}, {"messages", messages}, {"max_tokens", 2}}.dump());
    EXPECT_TRUE(r && r->status == 200) << (r ? r->body : "no response");
    return r ? Json::parse(r->body)["usage"] : Json();
  };
  const auto cached = [](const Json& usage) { return usage["prompt_tokens_details"]["cached_tokens"].get<int64_t>(); };
  const Json first_turn = Json::array({{{"role", "system"}, {"content", system}},
                                       {{"role", "user"}, {"content", "What is the capital of France?"}}});
  const Json u1 = ask(first_turn);
  EXPECT_EQ(cached(u1), 0);
  const int64_t first_len = u1["prompt_tokens"].get<int64_t>();

  const Json other_user = ask(Json::array({{{"role", "system"}, {"content", system}},
                                           {{"role", "user"}, {"content", "How tall is Mont Blanc?"}}}));
  EXPECT_EQ(cached(other_user), 1 + int64_t(tok_->encode(system).size()));  // BOS + the system message

  EXPECT_EQ(cached(ask(first_turn)), first_len - 1);

  Json next_turn = first_turn;
  next_turn.push_back({{"role", "assistant"}, {"content", "Paris."}, {"reasoning_content", "France: Paris."}});
  next_turn.push_back({{"role", "user"}, {"content", "And of Italy?"}});
  EXPECT_EQ(cached(ask(next_turn)), first_len - 1);

  auto m = c.Get("/metrics");
  ASSERT_TRUE(m);
  for (const char* line : {"v4rt_prefix_cache_lookups_total 4", "v4rt_prefix_cache_hits_total 3",
                           "v4rt_prefix_cache_evicted_points_total 0"})
    EXPECT_NE(m->body.find(line), std::string::npos) << line << "\n" << m->body;
  const int64_t reused = cached(other_user) + 2 * (first_len - 1);
  EXPECT_NE(m->body.find("v4rt_prefix_cache_reused_tokens_total " + std::to_string(reused)), std::string::npos)
      << m->body;
  for (const char* gauge : {"v4rt_prefix_cache_bytes ", "v4rt_prefix_cache_points ", "v4rt_prefix_cache_blocks "}) {
    const size_t at = m->body.find(std::string("\n") + gauge);
    ASSERT_NE(at, std::string::npos) << gauge;
    EXPECT_GT(std::stoll(m->body.substr(at + 1 + std::string(gauge).size())), 0) << gauge;
  }
}

// A second server cannot take the port of a running one (no SO_REUSEPORT), and hundreds of
// clients connecting at once fit the listen backlog: every one of them is answered.
TEST_F(HttpServerTest, PortIsExclusiveAndBacklogHoldsManyConnects) {
  auto s = start();
  Metrics other_metrics;
  HttpServer other(base_config(), *tok_, other_metrics);
  EXPECT_THROW(other.bind("127.0.0.1", s->port), v4rt::Error);
  constexpr int kClients = 200;
  std::atomic<int> ok{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&] {
      httplib::Client c("127.0.0.1", s->port);
      c.set_connection_timeout(10, 0);
      auto h = c.Get("/health");
      if (h && h->status == 200) ++ok;
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok.load(), kClients);
}

// A body over server.max_body_mb gets a 413 JSON error; the server keeps serving.
TEST_F(HttpServerTest, BodyOverTheLimitGives413) {
  launch::ServerConfig cfg = base_config();
  cfg.max_body_mb = 1;
  auto s = start(cfg);
  httplib::Client c = s->client();
  Json big = chat_body(std::string((size_t(1) << 20) + 1000, 'a'));
  auto r = post(c, "/v1/chat/completions", big.dump());
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  const Json j = Json::parse(r->body);
  ASSERT_TRUE(j.contains("error")) << r->body;
  EXPECT_NE(j["error"]["message"].get<std::string>().find("too large"), std::string::npos) << r->body;
  httplib::Client again = s->client();
  auto ok = post(again, "/v1/chat/completions", chat_body("hi").dump());
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
}

TEST_F(HttpServerTest, BadRequestInvalidJson) {
  auto s = start();
  httplib::Client c = s->client();
  auto r = post(c, "/v1/chat/completions", "{\"model\": \"tiny\", \"messages\": [");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(Json::parse(r->body)["error"]["code"], "invalid_json");
  expect_still_serving(c);
}

TEST_F(HttpServerTest, BadRequestWrongTypes) {
  auto s = start();
  httplib::Client c = s->client();
  Json b = chat_body("hi");
  b["messages"] = "hi";
  expect_error(c, b.dump(), 400, "messages");
  b = chat_body("hi");
  b["max_tokens"] = "ten";
  expect_error(c, b.dump(), 400, "max_tokens");
  b = chat_body("hi");
  b["stream"] = "yes";
  expect_error(c, b.dump(), 400, "stream");
  b = chat_body("hi");
  b["messages"][0]["role"] = 3;
  expect_error(c, b.dump(), 400, "messages[0].role");
  expect_error(c, Json{{"model", "tiny"}, {"prompt", 5}}.dump(), 400, "prompt", "/v1/completions");
  expect_error(c, Json{{"model", "tiny"}, {"prompt", "hi"}, {"ignore_eos", "yes"}}.dump(), 400, "ignore_eos",
               "/v1/completions");
  expect_still_serving(c);
}

TEST_F(HttpServerTest, BadRequestUnknownModel) {
  auto s = start();
  httplib::Client c = s->client();
  Json b = chat_body("hi");
  b["model"] = "gpt-17";
  expect_error(c, b.dump(), 404, "model");
  expect_still_serving(c);
}

TEST_F(HttpServerTest, BadRequestPromptOverContext) {
  auto s = start();
  httplib::Client c = s->client();
  std::string long_text;
  for (int i = 0; i < 700; ++i) long_text += "word ";
  auto r = post(c, "/v1/chat/completions", chat_body(long_text).dump());
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_EQ(Json::parse(r->body)["error"]["code"], "context_length_exceeded");
  expect_still_serving(c);
}

TEST_F(HttpServerTest, BadRequestInvalidSampling) {
  auto s = start();
  httplib::Client c = s->client();
  for (const auto& [key, value] : std::vector<std::pair<std::string, Json>>{
           {"temperature", 3.5}, {"temperature", -1}, {"top_p", 0}, {"top_p", 1.5}, {"n", 2}, {"max_tokens", 0},
           {"top_logprobs", 50}}) {
    Json b = chat_body("hi");
    b[key] = value;
    expect_error(c, b.dump(), 400, key);
  }
  expect_still_serving(c);
}

TEST_F(HttpServerTest, StreamedAndNonStreamedAreIdentical) {
  auto s = start();
  httplib::Client c = s->client();
  Json b = chat_body("Tell me something.", 12);
  b["seed"] = 1234;
  b["temperature"] = 0.9;
  b["logprobs"] = true;
  b["top_logprobs"] = 2;
  auto r = post(c, "/v1/chat/completions", b.dump());
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const Json full = Json::parse(r->body);
  const Json& msg = full["choices"][0]["message"];
  b["stream"] = true;
  const SseResult st = stream(c, b);
  EXPECT_TRUE(st.done);
  EXPECT_EQ(st.reasoning, msg["reasoning_content"].get<std::string>());
  EXPECT_FALSE(st.reasoning.empty());  // thinking mode by default: the output is reasoning
  EXPECT_EQ(st.content, msg["content"].get<std::string>());
  EXPECT_EQ(st.finish_reason, full["choices"][0]["finish_reason"]);
  std::vector<std::string> lp;
  for (const Json& e : full["choices"][0]["logprobs"]["content"]) lp.push_back(e["token"].get<std::string>());
  EXPECT_EQ(st.logprob_tokens, lp);
  EXPECT_EQ(int(lp.size()), full["usage"]["completion_tokens"].get<int>() - (st.finish_reason == "stop"));
  EXPECT_EQ(st.usage["completion_tokens"], full["usage"]["completion_tokens"]);
  EXPECT_EQ(st.usage["prompt_tokens"], full["usage"]["prompt_tokens"]);
}

TEST_F(HttpServerTest, ForcedToolCallStreamedAndNonStreamed) {
  auto s = start();
  httplib::Client c = s->client();
  Json b = chat_body("Weather in Lyon?", 100);
  b["tools"] = Json::array({{{"type", "function"},
                             {"function", {{"name", "get_weather"},
                                           {"parameters", {{"type", "object"},
                                                           {"properties", {{"city", {{"type", "string"}}}}}}}}}}});
  b["test_hook_forced_output"] =
      "Need the weather.</think>Checking.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n"
      "<｜DSML｜parameter name=\"city\" string=\"true\">Lyon & \"Paris\"</｜DSML｜parameter>\n</｜DSML｜invoke>\n"
      "</｜DSML｜tool_calls>";
  auto r = post(c, "/v1/chat/completions", b.dump());
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const Json full = Json::parse(r->body);
  const Json& msg = full["choices"][0]["message"];
  EXPECT_EQ(full["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_EQ(msg["reasoning_content"], "Need the weather.");
  EXPECT_EQ(msg["content"], "Checking.");
  ASSERT_EQ(msg["tool_calls"].size(), 1u);
  EXPECT_EQ(msg["tool_calls"][0]["function"]["name"], "get_weather");
  EXPECT_EQ(Json::parse(msg["tool_calls"][0]["function"]["arguments"].get<std::string>()),
            (Json{{"city", "Lyon & \"Paris\""}}));
  b["stream"] = true;
  const SseResult st = stream(c, b);
  EXPECT_EQ(st.finish_reason, "tool_calls");
  EXPECT_EQ(st.reasoning, "Need the weather.");
  EXPECT_EQ(st.content, "Checking.");
  ASSERT_EQ(st.calls.size(), 1u);
  EXPECT_EQ(st.calls.at(0)["name"], "get_weather");
  EXPECT_EQ(st.calls.at(0)["arguments"], msg["tool_calls"][0]["function"]["arguments"]);
  EXPECT_TRUE(st.calls.at(0)["id"].get<std::string>().rfind("call_", 0) == 0);
}

// A call whose arguments cannot be read is never sent (not even as {}): finish_reason stays
// "stop" and a `warning` names the call, streamed and not; no DSML reaches content either way.
TEST_F(HttpServerTest, MalformedToolCallDroppedWithWarning) {
  auto s = start();
  httplib::Client c = s->client();
  Json b = chat_body("Weather in Beijing?", 100);
  b["tools"] = Json::array({{{"type", "function"}, {"function", {{"name", "get_weather"}}}}});
  b["test_hook_forced_output"] =
      "Need the weather.</think>Checking.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">"
      "city is Beijing</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
  auto r = post(c, "/v1/chat/completions", b.dump());
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const Json full = Json::parse(r->body);
  const Json& choice = full["choices"][0];
  EXPECT_EQ(choice["finish_reason"], "stop");
  EXPECT_EQ(choice["message"]["content"], "Checking.");
  EXPECT_FALSE(choice["message"].contains("tool_calls"));
  ASSERT_TRUE(choice.contains("warning")) << r->body;
  EXPECT_NE(choice["warning"].get<std::string>().find("\"get_weather\""), std::string::npos);
  EXPECT_EQ(r->body.find("DSML"), std::string::npos);
  b["stream"] = true;
  const SseResult st = stream(c, b);
  EXPECT_EQ(st.finish_reason, "stop");
  EXPECT_EQ(st.content, "Checking.");
  EXPECT_TRUE(st.calls.empty());
  EXPECT_EQ(st.warning, choice["warning"].get<std::string>());
  // With a readable JSON-object body the call goes through.
  b["stream"] = false;
  b["test_hook_forced_output"] =
      "Need the weather.</think><｜DSML｜invoke name=\"get_weather\">{\"city\": \"Beijing\"}</｜DSML｜invoke>";
  r = post(c, "/v1/chat/completions", b.dump());
  ASSERT_TRUE(r);
  const Json ok = Json::parse(r->body);
  EXPECT_EQ(ok["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_FALSE(ok["choices"][0].contains("warning"));
  EXPECT_EQ(ok["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{\"city\": \"Beijing\"}");
}

TEST_F(HttpServerTest, DisconnectCancelsTheGeneration) {
  auto s = start();
  httplib::Client c = s->client();
  Json b = chat_body("Go on and on.", 400);
  b["stream"] = true;
  const SseResult st = stream(c, b, 3);
  EXPECT_FALSE(st.done);
  const auto until = Clock::now() + 10s;
  while (s->metrics.requests_cancelled == 0 && Clock::now() < until) std::this_thread::sleep_for(50ms);
  EXPECT_EQ(s->metrics.requests_cancelled, 1u);
  EXPECT_LT(s->metrics.generation_tokens, 200u);
  expect_still_serving(c);
}

TEST_F(HttpServerTest, QueueFullGives429AndTimeoutEndsWithLength) {
  launch::ServerConfig cfg = base_config();
  cfg.max_running = 1;
  cfg.max_queue = 1;
  cfg.request_timeout_s = 3;
  auto s = start(cfg);
  SseResult first;
  std::thread t1([&] {
    httplib::Client c = s->client();
    Json b = chat_body("long one", 400);
    b["stream"] = true;
    first = stream(c, b);
  });
  const auto until = Clock::now() + 10s;
  while (s->metrics.gauges().num_running < 1 && Clock::now() < until) std::this_thread::sleep_for(10ms);
  std::atomic<int> second_status{0};
  std::thread t2([&] {
    httplib::Client c = s->client();
    auto r = post(c, "/v1/chat/completions", chat_body("queued", 1).dump());
    second_status = r ? r->status : -1;
  });
  while (s->metrics.gauges().num_waiting < 1 && Clock::now() < until) std::this_thread::sleep_for(10ms);
  httplib::Client c = s->client();
  expect_error(c, chat_body("third").dump(), 429, "");
  t1.join();
  t2.join();
  EXPECT_EQ(first.finish_reason, "length");  // the 3 s timeout ends the 400-token generation
  EXPECT_TRUE(first.done);
  // The queued request's own 3 s may also run out before or just after it gets its turn.
  EXPECT_GE(s->metrics.requests_timed_out, 1u);
  EXPECT_EQ(second_status, 200);
}


// ----- clients that misbehave, on raw sockets ---------------------------------------------------

int connect_to(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool send_all(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    const ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += size_t(n);
  }
  return true;
}

// What the server sends until it closes the connection or `timeout` passes.
std::string read_until_close(int fd, std::chrono::milliseconds timeout) {
  std::string out;
  const auto until = Clock::now() + timeout;
  char buf[4096];
  while (Clock::now() < until) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    out.append(buf, size_t(n));
  }
  return out;
}

int status_of(const std::string& response) {
  if (response.rfind("HTTP/1.1 ", 0) != 0 || response.size() < 12) return -1;
  return std::atoi(response.substr(9, 3).c_str());
}

std::string request_head(const std::string& path, const std::string& framing) {
  return "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + std::string(kKey) +
         "\r\nContent-Type: application/json\r\n" + framing + "\r\n\r\n";
}

std::string request_text(const std::string& path, const std::string& body) {
  return request_head(path, "Content-Length: " + std::to_string(body.size())) + body;
}

template <class Pred>
bool wait_for(Pred pred, std::chrono::milliseconds timeout) {
  const auto until = Clock::now() + timeout;
  while (!pred() && Clock::now() < until) std::this_thread::sleep_for(10ms);
  return pred();
}

// Six non-streaming requests that could each run for thousands of tokens fill max_running 2 +
// max_queue 4 (or the KV budget); their clients close right after sending. Each generation is cancelled (the server
// notices the closed connection between tokens) and the next client is served, not refused.
TEST_F(HttpServerTest, NonStreamingDisconnectCancelsTheGeneration) {
  launch::ServerConfig cfg = base_config();
  cfg.max_running = 2;
  cfg.max_queue = 6;  // all six fit the queue even if they all arrive before the engine runs one
  cfg.max_context = 4096;
  auto s = start(cfg);
  std::vector<int> fds;
  for (int i = 0; i < 6; ++i) {
    const int fd = connect_to(s->port);
    ASSERT_GE(fd, 0);
    Json b = chat_body("Go on " + std::to_string(i), 100000);
    std::string words;  // forced output: thousands of tokens and no early EOS (random weights may sample one)
    for (int w = 0; w < 3000; ++w) words += "go ";
    b["test_hook_forced_output"] = words;
    ASSERT_TRUE(send_all(fd, request_text("/v1/chat/completions", b.dump())));
    fds.push_back(fd);
  }
  // Admitted: running or waiting (the KV budget may hold one of them back as a 429).
  auto admitted = [&] {
    const SchedulerGauges g = s->metrics.gauges();  // one snapshot: a request moves from waiting to running
    return g.num_running + g.num_waiting;
  };
  EXPECT_TRUE(wait_for([&] { return admitted() + int64_t(s->metrics.requests_rejected) >= 6; }, 30s));
  const uint64_t held = uint64_t(admitted());
  EXPECT_GE(held, 5u);
  for (int fd : fds) ::close(fd);
  EXPECT_TRUE(wait_for([&] { return s->metrics.requests_cancelled >= held; }, 30s))
      << "cancelled " << s->metrics.requests_cancelled << " of " << held;
  EXPECT_EQ(s->metrics.requests_cancelled, held);
  httplib::Client c = s->client();
  expect_still_serving(c);
}

// Load test: 150 clients sending their headers one byte at a time and 300 idle connections hold
// no worker (22 here): /health and a chat request are answered while they are open, and the
// receive deadline then ends every one of them with 408. Bounded: the trickle stops after 40
// rounds, every wait has a timeout.
TEST_F(HttpServerTest, SlowAndIdleConnectionsDoNotStarveTheServer) {
  launch::ServerConfig cfg = base_config();
  cfg.max_running = 2;
  cfg.max_queue = 4;
  cfg.receive_timeout_s = 4;
  cfg.max_connections = 4096;
  cfg.max_connections_per_client = 4096;
  auto s = start(cfg);
  constexpr int kSlow = 150, kIdle = 300;
  std::vector<int> slow, idle;
  for (int i = 0; i < kSlow; ++i) {
    slow.push_back(connect_to(s->port));
    ASSERT_GE(slow.back(), 0);
  }
  for (int i = 0; i < kIdle; ++i) {
    idle.push_back(connect_to(s->port));
    ASSERT_GE(idle.back(), 0);
  }
  const std::string head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n";  // never ends
  std::atomic<bool> stop{false};
  std::thread trickle([&] {
    for (size_t round = 0; round < 40 && !stop; ++round) {
      for (int fd : slow) (void)::send(fd, head.data() + round % head.size(), 1, MSG_NOSIGNAL | MSG_DONTWAIT);
      std::this_thread::sleep_for(250ms);
    }
  });
  httplib::Client anon("127.0.0.1", s->port);
  anon.set_connection_timeout(10, 0);
  anon.set_read_timeout(10, 0);
  auto h = anon.Get("/health");
  ASSERT_TRUE(h) << "no /health answer with " << kSlow << " slow and " << kIdle << " idle connections open";
  EXPECT_EQ(h->status, 200);
  httplib::Client c = s->client();
  c.set_connection_timeout(10, 0);
  auto r = post(c, "/v1/chat/completions", chat_body("still there?", 2).dump());
  ASSERT_TRUE(r) << "no chat answer";
  EXPECT_EQ(r->status, 200) << r->body;
  int timed_out = 0;
  for (int fd : slow) timed_out += status_of(read_until_close(fd, 20s)) == 408;
  stop = true;
  trickle.join();
  EXPECT_EQ(timed_out, kSlow);
  EXPECT_GE(s->server().receive_timeouts(), uint64_t(kSlow));
  auto m = c.Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_NE(m->body.find("v4rt_receive_timeouts_total "), std::string::npos);
  for (int fd : slow) ::close(fd);
  for (int fd : idle) ::close(fd);
  expect_still_serving(c);
}

// Connections over server.max_connections_per_client get 429 at once, over max_connections 503;
// a slot frees when a connection closes.
TEST_F(HttpServerTest, ConnectionBoundsRefuseTheExcessAtOnce) {
  for (const bool per_client : {true, false}) {
    launch::ServerConfig cfg = base_config();
    cfg.max_connections_per_client = per_client ? 8 : 100;
    cfg.max_connections = per_client ? 100 : 8;
    auto s = start(cfg);
    std::vector<int> held;
    for (int i = 0; i < 8; ++i) {
      held.push_back(connect_to(s->port));
      ASSERT_GE(held.back(), 0);
    }
    const int extra = connect_to(s->port);
    ASSERT_GE(extra, 0);
    const std::string response = read_until_close(extra, 10s);
    ::close(extra);
    EXPECT_EQ(status_of(response), per_client ? 429 : 503) << response;
    EXPECT_NE(response.find(per_client ? "max_connections_per_client" : "max_connections"), std::string::npos);
    EXPECT_GE(s->server().refused_connections(), 1u);
    for (int fd : held) ::close(fd);
    EXPECT_TRUE(wait_for(
        [&] {
          httplib::Client anon("127.0.0.1", s->port);
          auto h = anon.Get("/health");
          return h && h->status == 200;
        },
        10s));
  }
}

// A chunked body is held to server.max_body_mb while it arrives: 413 after about 1 MiB of an
// 8 MiB body, not after reading and tokenizing all of it.
TEST_F(HttpServerTest, ChunkedBodyOverTheLimitIsRefusedWhileReading) {
  launch::ServerConfig cfg = base_config();
  cfg.max_body_mb = 1;
  auto s = start(cfg);
  const int fd = connect_to(s->port);
  ASSERT_GE(fd, 0);
  std::thread sender([&] {
    auto chunk = [](const std::string& data) {
      char size[32];
      std::snprintf(size, sizeof(size), "%zx\r\n", data.size());
      return size + data + "\r\n";
    };
    if (!send_all(fd, request_head("/v1/chat/completions", "Transfer-Encoding: chunked"))) return;
    if (!send_all(fd, chunk(R"({"model": "tiny", "messages": [{"role": "user", "content": ")"))) return;
    const std::string filler(64 << 10, 'a');
    for (int i = 0; i < 128; ++i)
      if (!send_all(fd, chunk(filler))) return;
    (void)send_all(fd, chunk(R"("}]})") + "0\r\n\r\n");
  });
  const std::string response = read_until_close(fd, 60s);
  ::shutdown(fd, SHUT_RDWR);
  sender.join();
  ::close(fd);
  EXPECT_EQ(status_of(response), 413) << response.substr(0, 300);
  EXPECT_NE(response.find("body_too_large"), std::string::npos) << response.substr(0, 300);
  httplib::Client c = s->client();
  expect_still_serving(c);
}

// A stream ends with exactly one of: the final chunk and [DONE], or an error event (no [DONE]).
TEST_F(HttpServerTest, StreamEndsWithDoneOrWithOneErrorEvent) {
  auto s = start();
  {
    httplib::Client c = s->client();
    Json b = chat_body("short", 3);
    b["stream"] = true;
    const SseResult ok = stream(c, b);
    EXPECT_TRUE(ok.done);
    EXPECT_EQ(ok.error, "");
    EXPECT_EQ(ok.events_after_end, 0);
  }
  SseResult failed;
  std::thread t([&] {
    httplib::Client c = s->client();
    Json b = chat_body("long one", 400);
    b["stream"] = true;
    failed = stream(c, b);
  });
  EXPECT_TRUE(wait_for([&] { return s->metrics.generation_tokens >= 5; }, 30s));
  s->engine().scheduler().fail_all("a rank stopped answering");
  t.join();
  EXPECT_FALSE(failed.done);
  EXPECT_NE(failed.error.find("a rank stopped answering"), std::string::npos) << failed.error;
  EXPECT_EQ(failed.events_after_end, 0);
  EXPECT_TRUE(s->server().drain(10s));
}

TEST_F(HttpServerTest, BadRequestTrailingBytesAndUnsupportedFields) {
  auto s = start();
  httplib::Client c = s->client();
  std::string body = chat_body("hi").dump();
  body += std::string("\0garbage", 8);
  auto r = post(c, "/v1/chat/completions", body);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400) << r->body;
  EXPECT_EQ(Json::parse(r->body)["error"]["code"], "invalid_json");
  Json b = chat_body("hi");
  b["logit_bias"] = Json{{"100", 5}};
  expect_error(c, b.dump(), 400, "logit_bias");
  b = chat_body("hi");
  b["response_format"] = Json{{"type", "json_object"}};
  expect_error(c, b.dump(), 400, "response_format");
  expect_error(c, Json{{"model", "tiny"}, {"prompt", "hi"}, {"best_of", 3}}.dump(), 400, "best_of", "/v1/completions");
  b = chat_body("hi");
  b["response_format"] = Json{{"type", "text"}};
  b["logit_bias"] = Json::object();
  EXPECT_EQ(post(c, "/v1/chat/completions", b.dump())->status, 200);
  std::string long_text;
  for (int i = 0; i < 700; ++i) long_text += "word ";
  expect_error(c, Json{{"model", "tiny"}, {"prompt", long_text}}.dump(), 413, "prompt", "/v1/completions");
  expect_still_serving(c);
}

}  // namespace
}  // namespace v4rt::launch::serve
