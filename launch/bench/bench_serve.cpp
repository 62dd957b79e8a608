// SPDX-License-Identifier: MIT
// `v4rt bench serve`: drives a running `v4rt serve` (any layout, under mpirun or not) over HTTP the
// way a client does, and reports for each concurrency of a sweep TTFT, TPOT, ITL and end-to-end
// latency percentiles, request throughput and input / output / total tokens/s (also per GPU), as a
// table on stdout and as JSON lines (--json-out) that scripts/scaling/plot_serve.py plots.
//
// Each level sends --num-prompts fresh prompts (random token ids, or windows of a tokenized text
// file) to /v1/completions with max_tokens = --output-len and ignore_eos, from --concurrency
// client threads (each with its own keep-alive connection), optionally paced by a Poisson
// --request-rate. A level ends when every request has ended or at its --time-limit: then requests
// in flight are cut (their connections shut down) and counted as failed, those never sent as not
// sent. Every request is accounted for: completed + failed + not_sent = num_prompts, and every
// failure reason is counted and printed.
#include <CLI/CLI.hpp>
#include <httplib.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>

#include "common/check.h"
#include "launch/bench/bench.h"
#include "launch/bench/bench_serve.h"
#include "model/text/tokenizer.h"

namespace v4rt::launch {
namespace {

namespace bs = bench_serve;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

// ---- options and the server ----------------------------------------------------------------

struct BenchServeOptions {
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string url;  // overrides host and port
  std::string api_key;
  std::string model;
  int input_len = 1024;
  int output_len = 128;
  std::vector<int> concurrency{1};
  int num_prompts = 0;  // 0: 4 x concurrency, at least 8, per level
  uint64_t seed = 0;
  std::string dataset = "random";
  std::string dataset_path;
  std::string tokenizer;
  bool stream = true;
  std::string request_rate = "inf";
  double temperature = 0.0;
  double time_limit_s = 0;  // per level; 0: none
  double request_timeout_s = 600;
  double wait_ready_s = 0;
  int gpus = 0;  // 0: the ranks /health reports
  int warmup = 1;
  std::string json_out;
  bool append = false;
  std::string label;
};

double seconds_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

std::string utc_now() {
  char buf[32];
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// The `error.message` of an OpenAI error body, else the body itself (cut short).
std::string error_message(const std::string& body) {
  const json j = json::parse(body, nullptr, false);
  if (!j.is_discarded() && j.is_object() && j.contains("error") && j["error"].is_object() &&
      j["error"].contains("message") && j["error"]["message"].is_string())
    return j["error"]["message"].get<std::string>();
  return body.substr(0, 200);
}

struct Target {
  std::string base_url;
  httplib::Headers headers;
  std::string model;  // empty: the field is left out of the requests
  int ranks = 0;
};

std::unique_ptr<httplib::Client> make_client(const Target& t, double timeout_s) {
  auto c = std::make_unique<httplib::Client>(t.base_url);
  V4RT_REQUIRE(c->is_valid(), "--url " << t.base_url << " is not a valid http://host:port address");
  const auto timeout = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::duration<double>(timeout_s));
  c->set_connection_timeout(std::min(timeout, std::chrono::microseconds(10'000'000)));
  c->set_read_timeout(timeout);
  c->set_write_timeout(timeout);
  c->set_keep_alive(true);
  c->set_tcp_nodelay(true);
  c->set_default_headers(t.headers);
  return c;
}

// GET /health: the model name and the ranks of the job; a clear error when nobody answers. Waits
// up to `wait_ready_s` for a server that is still starting (refused connection, 503 loading).
void probe_server(Target* t, double wait_ready_s) {
  auto c = make_client(*t, 10.0);
  const Clock::time_point until = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                     std::chrono::duration<double>(wait_ready_s));
  auto r = c->Get("/health");
  while ((!r || r->status == 503) && Clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    r = c->Get("/health");
  }
  V4RT_REQUIRE(r, "cannot reach " << t->base_url << "/health: " << httplib::to_string(r.error())
                                  << " (is `v4rt serve` running there? see --url / --host / --port)");
  V4RT_REQUIRE(r->status == 200, t->base_url << "/health answered HTTP " << r->status << ": " << r->body);
  const json j = json::parse(r->body, nullptr, false);
  if (!j.is_discarded() && j.is_object()) {
    if (t->model.empty() && j.contains("model") && j["model"].is_string()) t->model = j["model"].get<std::string>();
    if (j.contains("ranks") && j["ranks"].is_number_integer()) t->ranks = j["ranks"].get<int>();
  }
}

// ---- one request ------------------------------------------------------------------------------

json request_body(const Target& t, const BenchServeOptions& o, const std::vector<int32_t>& prompt) {
  json b{{"prompt", prompt},
         {"max_tokens", o.output_len},
         {"ignore_eos", true},
         {"temperature", o.temperature},
         {"stream", o.stream}};
  if (o.stream) b["stream_options"] = {{"include_usage", true}};
  if (!t.model.empty()) b["model"] = t.model;
  return b;
}

void read_usage(const json& j, bs::RequestResult* r) {
  auto u = j.find("usage");
  if (u == j.end() || !u->is_object()) return;
  if (u->contains("prompt_tokens") && (*u)["prompt_tokens"].is_number_integer())
    r->prompt_tokens = (*u)["prompt_tokens"].get<int64_t>();
  if (u->contains("completion_tokens") && (*u)["completion_tokens"].is_number_integer())
    r->output_tokens = (*u)["completion_tokens"].get<int64_t>();
}

// One streamed request: TTFT at the first chunk with text, ITL between such chunks, the counts
// from the usage of the last chunk. `stopping` cuts it (the level's time limit).
void stream_one(httplib::Client& c, const json& body, const std::atomic<bool>& stopping, bs::RequestResult* r) {
  const Clock::time_point sent = Clock::now();
  Clock::time_point last{};
  int status = 0;
  std::string error_body, stream_error;
  bool done = false, finished = false;
  int64_t text_chunks = 0;
  bs::SseReader sse;
  auto on_data = [&](std::string_view data) {
    if (data == "[DONE]") {
      done = true;
      return;
    }
    const json j = json::parse(data, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      stream_error = "a stream event is not JSON";
      return;
    }
    if (j.contains("error")) {
      stream_error = "error event: " + error_message(std::string(data));
      return;
    }
    read_usage(j, r);
    auto ch = j.find("choices");
    if (ch == j.end() || !ch->is_array() || ch->empty()) return;
    const json& c0 = (*ch)[0];
    if (c0.contains("text") && c0["text"].is_string() && !c0["text"].get_ref<const std::string&>().empty()) {
      const Clock::time_point now = Clock::now();
      if (text_chunks++ == 0) {
        r->ttft_s = seconds_between(sent, now);
      } else {
        r->itl_s.push_back(seconds_between(last, now));
      }
      last = now;
    }
    if (c0.contains("finish_reason") && c0["finish_reason"].is_string()) finished = true;
  };
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.headers = {{"Accept", "text/event-stream"}};
  req.set_header("Content-Type", "application/json");
  req.body = body.dump();
  req.response_handler = [&](const httplib::Response& res) {
    status = res.status;
    return true;
  };
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    if (stopping.load()) return false;
    if (status != 200) {
      error_body.append(data, std::min(n, size_t(4096) - std::min(error_body.size(), size_t(4096))));
      return true;
    }
    sse.feed(std::string_view(data, n), on_data);
    return true;
  };
  const httplib::Result res = c.send(req);
  r->latency_s = seconds_between(sent, Clock::now());
  if (done && finished && stream_error.empty() && status == 200) {
    r->ok = true;
    if (r->output_tokens == 0) r->output_tokens = text_chunks;  // a server that sent no usage
    return;
  }
  if (stopping.load()) {
    r->error = "cut at the time limit";
  } else if (status != 0 && status != 200) {
    r->error = "HTTP " + std::to_string(status) + ": " + error_message(error_body);
  } else if (!stream_error.empty()) {
    r->error = stream_error;
  } else if (!res) {
    r->error = "transport: " + httplib::to_string(res.error());
  } else {
    r->error = "the stream ended without a finish_reason and [DONE]";
  }
}

void post_one(httplib::Client& c, const json& body, const std::atomic<bool>& stopping, bs::RequestResult* r) {
  const Clock::time_point sent = Clock::now();
  const httplib::Result res = c.Post("/v1/completions", body.dump(), "application/json");
  r->latency_s = seconds_between(sent, Clock::now());
  if (!res) {
    r->error = stopping.load() ? "cut at the time limit" : "transport: " + httplib::to_string(res.error());
    return;
  }
  if (res->status != 200) {
    r->error = "HTTP " + std::to_string(res->status) + ": " + error_message(res->body);
    return;
  }
  const json j = json::parse(res->body, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("choices")) {
    r->error = "the response is not a completion object";
    return;
  }
  read_usage(j, r);
  r->ok = true;
}

bs::RequestResult send_one(httplib::Client& c, const Target& t, const BenchServeOptions& o,
                           const std::vector<int32_t>& prompt, const std::atomic<bool>& stopping) {
  bs::RequestResult r;
  r.sent = true;
  r.prompt_tokens = int64_t(prompt.size());
  const json body = request_body(t, o, prompt);
  if (o.stream) {
    stream_one(c, body, stopping, &r);
  } else {
    post_one(c, body, stopping, &r);
  }
  return r;
}

// ---- one concurrency level -------------------------------------------------------------------

// One concurrency level: `concurrency` client threads take the prompts in order, each sent at
// its arrival time; the level ends when all have ended or at the time limit.
bs::LevelSummary run_level(const Target& t, const BenchServeOptions& o, int concurrency,
                           const std::vector<std::vector<int32_t>>& prompts, const std::vector<double>& arrivals) {
  const int n = int(prompts.size());
  const int workers = std::min(concurrency, n);
  std::vector<bs::RequestResult> results(static_cast<size_t>(n));
  std::vector<std::unique_ptr<httplib::Client>> clients;
  for (int w = 0; w < workers; ++w) clients.push_back(make_client(t, o.request_timeout_s));
  std::atomic<int> next{0};
  std::atomic<bool> stopping{false};
  std::mutex mu;
  std::condition_variable cv;
  int running = workers;
  const Clock::time_point start = Clock::now();
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      for (int i; (i = next.fetch_add(1)) < n;) {
        const Clock::time_point at = start + std::chrono::duration_cast<Clock::duration>(
                                                 std::chrono::duration<double>(arrivals[size_t(i)]));
        while (!stopping.load() && Clock::now() < at)
          std::this_thread::sleep_until(std::min(at, Clock::now() + std::chrono::milliseconds(20)));
        if (stopping.load()) break;
        bs::RequestResult r = send_one(*clients[size_t(w)], t, o, prompts[size_t(i)], stopping);
        r.start_s = seconds_between(start, at);
        results[size_t(i)] = std::move(r);
      }
      std::lock_guard<std::mutex> lock(mu);
      --running;
      cv.notify_all();
    });
  }
  bool time_limit_hit = false;
  {
    std::unique_lock<std::mutex> lock(mu);
    const Clock::time_point deadline =
        o.time_limit_s > 0 ? start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.time_limit_s))
                           : Clock::time_point::max();
    if (!cv.wait_until(lock, deadline, [&] { return running == 0; })) {
      // Cut what is in flight: shutting a client's socket down ends its blocked read at once
      // (repeated, for a worker that was between two requests).
      time_limit_hit = true;
      stopping.store(true);
      while (running > 0) {
        for (auto& c : clients) c->stop();
        cv.wait_for(lock, std::chrono::milliseconds(20));
      }
    }
  }
  for (std::thread& th : threads) th.join();
  double duration = 0;
  for (const bs::RequestResult& r : results)
    if (r.sent) duration = std::max(duration, r.start_s + r.latency_s);
  bs::LevelSummary s = bs::summarize(results, duration, o.output_len, o.gpus);
  s.concurrency = concurrency;
  s.request_rate = std::stod(o.request_rate);
  s.time_limit_hit = time_limit_hit;
  return s;
}

// ---- the sweep and the CLI -------------------------------------------------------------------

std::vector<int32_t> tokenize_file(const BenchServeOptions& o) {
  std::ifstream in(o.dataset_path, std::ios::binary);
  V4RT_REQUIRE(in, "--dataset-path " << o.dataset_path << ": cannot open");
  std::stringstream text;
  text << in.rdbuf();
  const model::text::Tokenizer tok(model::text::find_tokenizer_path(o.tokenizer));
  std::vector<int32_t> ids = tok.encode(text.str());
  V4RT_REQUIRE(!ids.empty(), "--dataset-path " << o.dataset_path << " holds no text");
  return ids;
}

void check_options(const BenchServeOptions& o) {
  V4RT_REQUIRE(o.input_len >= 1, "--input-len must be at least 1, got " << o.input_len);
  V4RT_REQUIRE(o.output_len >= 1, "--output-len must be at least 1, got " << o.output_len);
  V4RT_REQUIRE(!o.concurrency.empty(), "--concurrency needs at least one value");
  for (int c : o.concurrency) V4RT_REQUIRE(c >= 1, "--concurrency values must be at least 1, got " << c);
  V4RT_REQUIRE(o.num_prompts >= 0, "--num-prompts must not be negative");
  V4RT_REQUIRE(o.dataset != "file" || !o.dataset_path.empty(), "--dataset file needs --dataset-path FILE");
  double rate = 0;
  try {
    rate = std::stod(o.request_rate);
  } catch (const std::exception&) {
    V4RT_FAIL("--request-rate must be a number of requests/s or 'inf', got '" << o.request_rate << "'");
  }
  V4RT_REQUIRE(rate > 0, "--request-rate must be positive or 'inf', got " << o.request_rate);
  V4RT_REQUIRE(o.time_limit_s >= 0, "--time-limit must not be negative");
  V4RT_REQUIRE(o.request_timeout_s > 0, "--request-timeout must be positive");
  V4RT_REQUIRE(o.gpus >= 0, "--gpus must not be negative");
  V4RT_REQUIRE(o.wait_ready_s >= 0, "--wait-ready must not be negative");
  V4RT_REQUIRE(o.warmup >= 0, "--warmup must not be negative");
}

// One socket per client thread: raise the soft open-file limit (often 1024) toward the hard one
// for a sweep to thousands of concurrent requests, and say so when even that is too low.
void raise_file_limit(int concurrency) {
  const rlim_t need = rlim_t(concurrency) + 64;
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur >= need) return;
  lim.rlim_cur = lim.rlim_max == RLIM_INFINITY ? need : std::min(need, lim.rlim_max);
  setrlimit(RLIMIT_NOFILE, &lim);
  V4RT_REQUIRE(lim.rlim_cur >= need, "--concurrency " << concurrency << " needs " << need
                                     << " open files; the hard limit is " << lim.rlim_max << " (ulimit -n)");
}

void run_bench_serve(BenchServeOptions o) {
  check_options(o);
  raise_file_limit(*std::max_element(o.concurrency.begin(), o.concurrency.end()));
  Target t;
  t.base_url = o.url.empty() ? "http://" + o.host + ":" + std::to_string(o.port) : o.url;
  while (!t.base_url.empty() && t.base_url.back() == '/') t.base_url.pop_back();
  if (!o.api_key.empty()) t.headers.emplace("Authorization", "Bearer " + o.api_key);
  t.model = o.model;
  probe_server(&t, o.wait_ready_s);
  if (o.gpus == 0) o.gpus = std::max(t.ranks, 1);

  // Every level gets prompts of its own (a repeated prompt would be served from the prefix cache),
  // drawn in order from one seeded stream: warm-up, then level by level.
  std::vector<int> level_prompts;
  int total = o.warmup;
  for (int c : o.concurrency) {
    level_prompts.push_back(o.num_prompts > 0 ? o.num_prompts : std::max(8, 4 * c));
    total += level_prompts.back();
  }
  const std::vector<std::vector<int32_t>> prompts =
      o.dataset == "file" ? bs::corpus_prompts(tokenize_file(o), total, o.input_len, o.seed)
                          : bs::random_prompts(total, o.input_len, o.seed);

  bs::RunInfo run;
  run.url = t.base_url;
  run.model = t.model;
  run.label = o.label;
  run.dataset = o.dataset == "file" ? "file:" + o.dataset_path : "random";
  run.date = utc_now();
  run.ranks = t.ranks;
  run.input_len = o.input_len;
  run.output_len = o.output_len;
  run.stream = o.stream;
  run.seed = o.seed;
  std::printf("bench serve: %s  model %s  ranks %d  gpus %d%s%s\n", t.base_url.c_str(), t.model.c_str(), t.ranks,
              o.gpus, o.label.empty() ? "" : "  label ", o.label.c_str());
  std::printf("dataset %s (seed %llu)  input %d  output %d (ignore_eos)  %s  request rate %s/s  time limit %s\n",
              run.dataset.c_str(), static_cast<unsigned long long>(o.seed), o.input_len, o.output_len,
              o.stream ? "streaming" : "not streaming", o.request_rate.c_str(),
              o.time_limit_s > 0 ? (std::to_string(int(o.time_limit_s)) + " s per level").c_str() : "none");

  std::atomic<bool> never{false};
  for (int w = 0; w < o.warmup; ++w) {
    auto c = make_client(t, o.request_timeout_s);
    const bs::RequestResult r = send_one(*c, t, o, prompts[size_t(w)], never);
    V4RT_REQUIRE(r.ok, "the warm-up request failed: " << r.error);
  }

  std::ofstream json_out;
  if (!o.json_out.empty()) {
    json_out.open(o.json_out, o.append ? std::ios::app : std::ios::trunc);
    V4RT_REQUIRE(json_out, "--json-out " << o.json_out << ": cannot open for writing");
  }
  std::printf("\n%s", bs::table_header().c_str());
  std::fflush(stdout);
  size_t first = size_t(o.warmup);
  for (size_t l = 0; l < o.concurrency.size(); ++l) {
    const int n = level_prompts[l];
    const std::vector<std::vector<int32_t>> level(prompts.begin() + long(first), prompts.begin() + long(first) + n);
    first += size_t(n);
    const std::vector<double> arrivals = bs::arrival_times(n, std::stod(o.request_rate), o.seed + 1 + l);
    const bs::LevelSummary s = run_level(t, o, o.concurrency[l], level, arrivals);
    std::printf("%s", bs::table_row(s).c_str());
    for (const auto& [why, count] : s.errors) std::printf("         failed %d x %s\n", count, why.c_str());
    if (s.not_sent > 0) std::printf("         not sent %d (time limit)\n", s.not_sent);
    if (s.output_len_mismatch > 0)
      std::printf("         %d completed requests returned other than %d tokens\n", s.output_len_mismatch, o.output_len);
    std::fflush(stdout);
    if (json_out.is_open()) {
      json_out << bs::level_json(run, s).dump() << "\n";
      json_out.flush();
    }
  }
  std::printf("\nTTFT / TPOT / ITL / E2E in ms (p50/p99); tokens/s of completed requests over the level's wall time;"
              " per GPU = / %d\n", o.gpus);
}

}  // namespace

void register_bench_serve(CLI::App& bench) {
  auto o = std::make_shared<BenchServeOptions>();
  auto* cmd = bench.add_subcommand(
      "serve", "Serving benchmark against a running `v4rt serve`: TTFT, TPOT, ITL, tokens/s per concurrency");
  cmd->add_option("--host", o->host, "Server host (default 127.0.0.1)");
  cmd->add_option("--port", o->port, "Server port (default 8080)");
  cmd->add_option("--url", o->url, "Server base URL, http://host:port (overrides --host/--port)");
  cmd->add_option("--api-key", o->api_key, "Bearer token when the server has server.api_key");
  cmd->add_option("--model", o->model, "Model name sent in the requests (default: what /health reports)");
  cmd->add_option("--input-len", o->input_len, "Prompt tokens per request (default 1024)");
  cmd->add_option("--output-len", o->output_len,
                  "Output tokens per request: max_tokens with ignore_eos, so every request generates exactly "
                  "this many (default 128)");
  cmd->add_option("--concurrency", o->concurrency, "Concurrency levels to sweep, e.g. 1,16,64,256 (default 1)")
      ->delimiter(',');
  cmd->add_option("--num-prompts", o->num_prompts, "Requests per level (default: 4 x concurrency, at least 8)");
  cmd->add_option("--seed", o->seed, "Seed of the prompts and arrival times (default 0)");
  cmd->add_option("--dataset", o->dataset, "random: random token ids; file: windows of a tokenized text file")
      ->check(CLI::IsMember({"random", "file"}));
  cmd->add_option("--dataset-path", o->dataset_path, "Text file of --dataset file (tokenized with --tokenizer)");
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json for --dataset file (default: the usual search order)");
  cmd->add_flag("--stream,!--no-stream", o->stream, "Stream the responses (default; needed for TTFT, TPOT, ITL)");
  cmd->add_option("--request-rate", o->request_rate,
                  "Requests/s offered (Poisson arrivals), or inf: all at once, bounded by the concurrency (default)");
  cmd->add_option("--temperature", o->temperature, "Sampling temperature of the requests (default 0: greedy)");
  cmd->add_option("--time-limit", o->time_limit_s,
                  "Seconds per level; then requests in flight are cut and counted as failed, the rest as not "
                  "sent (default 0: none)");
  cmd->add_option("--request-timeout", o->request_timeout_s,
                  "Seconds a request may wait for the server between two reads (default 600)");
  cmd->add_option("--wait-ready", o->wait_ready_s,
                  "Seconds to wait for a server that is still starting (/health refused or 503) (default 0)");
  cmd->add_option("--gpus", o->gpus, "GPUs the server uses, for the per-GPU figures (default: its ranks, from /health)");
  cmd->add_option("--warmup", o->warmup, "Warm-up requests before the sweep, not counted (default 1)");
  cmd->add_option("--json-out", o->json_out, "Write one JSON line per level to this file (scripts/scaling/plot_serve.py)");
  cmd->add_flag("--append", o->append, "Append to --json-out instead of overwriting it");
  cmd->add_option("--label", o->label, "Free text stored in the JSON lines (e.g. the layout), the plot's series name");
  cmd->callback([o] { run_bench_serve(*o); });
}

}  // namespace v4rt::launch
