// SPDX-License-Identifier: MIT
// Request validation for the OpenAI endpoints. Fields the server does not use but clients commonly
// send (user, metadata, ...) are ignored; fields it cannot honour (n > 1, best_of > 1, penalties,
// logit_bias, a JSON response_format, echo, forced tool choice) are refused with 400 rather than
// silently dropped.
#include "launch/serve/openai_api.h"

#include <nlohmann/json.hpp>

#include <random>

#include "common/check.h"
#include "model/text/special_tokens.h"

namespace v4rt::launch::serve {

namespace text = model::text;

namespace {

constexpr int kMaxStopStrings = 4;
constexpr int kMaxTopLogprobs = 20;

[[noreturn]] void bad(const std::string& param, const std::string& message, const std::string& code = "invalid_value") {
  throw ApiError(400, message, param, code);
}

const text_json* field(const text_json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

bool get_bool(const text_json& body, const char* name, bool dflt) {
  const text_json* v = field(body, name);
  if (!v) return dflt;
  if (!v->is_boolean()) bad(name, std::string("'") + name + "' must be a boolean", "invalid_type");
  return v->get<bool>();
}

int64_t get_int(const text_json& body, const char* name, int64_t dflt, int64_t lo, int64_t hi) {
  const text_json* v = field(body, name);
  if (!v) return dflt;
  if (!v->is_number_integer()) bad(name, std::string("'") + name + "' must be an integer", "invalid_type");
  const int64_t x = v->is_number_unsigned() ? int64_t(std::min<uint64_t>(v->get<uint64_t>(), uint64_t(INT64_MAX)))
                                            : v->get<int64_t>();
  if (x < lo || x > hi)
    bad(name, std::string("'") + name + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                  std::to_string(x));
  return x;
}

double get_number(const text_json& body, const char* name, double dflt) {
  const text_json* v = field(body, name);
  if (!v) return dflt;
  if (!v->is_number()) bad(name, std::string("'") + name + "' must be a number", "invalid_type");
  return v->get<double>();
}

// Fields shared by both endpoints: model, sampling, stop, logprobs, stream, priority, test hook.
void parse_common(const text_json& body, const ApiLimits& limits, const text::Tokenizer& tokenizer,
                  GenerationSpec* spec, bool chat) {
  if (const text_json* m = field(body, "model")) {
    if (!m->is_string()) bad("model", "'model' must be a string", "invalid_type");
    if (m->get<std::string>() != limits.model_name)
      throw ApiError(404, "The model '" + m->get<std::string>() + "' does not exist; this server serves '" +
                              limits.model_name + "'",
                     "model", "model_not_found");
  }
  if (get_int(body, "n", 1, 1, 1 << 20) != 1) bad("n", "only n = 1 is supported");
  for (const char* penalty : {"presence_penalty", "frequency_penalty"})
    if (get_number(body, penalty, 0.0) != 0.0) bad(penalty, std::string("'") + penalty + "' is not supported (must be 0)");
  if (const text_json* lb = field(body, "logit_bias")) {
    if (!lb->is_object()) bad("logit_bias", "'logit_bias' must be an object", "invalid_type");
    if (!lb->empty()) bad("logit_bias", "'logit_bias' is not supported");
  }
  if (const text_json* rf = field(body, "response_format")) {
    if (!rf->is_object() || !rf->contains("type") || !(*rf)["type"].is_string())
      bad("response_format", "'response_format' must be {\"type\": ...}", "invalid_type");
    if ((*rf)["type"].get<std::string>() != "text")
      bad("response_format", "'response_format' type '" + (*rf)["type"].get<std::string>() +
                                 "' is not supported (only 'text'; JSON output is not enforced)");
  }
  runtime::SamplingParams& sp = spec->sampling;
  sp.temperature = get_number(body, "temperature", limits.defaults.temperature);
  if (!(sp.temperature >= 0.0 && sp.temperature <= 2.0)) bad("temperature", "'temperature' must be in [0, 2]");
  sp.top_p = get_number(body, "top_p", limits.defaults.top_p);
  if (!(sp.top_p > 0.0 && sp.top_p <= 1.0)) bad("top_p", "'top_p' must be in (0, 1]");
  if (const text_json* s = field(body, "seed")) {
    if (!s->is_number_integer()) bad("seed", "'seed' must be an integer", "invalid_type");
    sp.seed = s->is_number_unsigned() ? s->get<uint64_t>() : uint64_t(s->get<int64_t>());
  } else {
    sp.seed = std::random_device{}() * 0x9E3779B97F4A7C15ull ^ std::random_device{}();
  }
  const char* max_key = field(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  sp.max_tokens = int(get_int(body, max_key, limits.defaults.max_tokens, 1, 1 << 30));
  sp.ignore_eos = get_bool(body, "ignore_eos", false);  // vLLM/SGLang extension: fixed output lengths
  if (chat) {
    sp.logprobs = get_bool(body, "logprobs", false);
    sp.top_logprobs = int(get_int(body, "top_logprobs", 0, 0, kMaxTopLogprobs));
    if (sp.top_logprobs > 0 && !sp.logprobs) bad("top_logprobs", "'top_logprobs' needs 'logprobs': true");
  } else if (const text_json* lp = field(body, "logprobs")) {  // completions: an integer count
    if (!lp->is_number_integer()) bad("logprobs", "'logprobs' must be an integer", "invalid_type");
    sp.logprobs = true;
    sp.top_logprobs = int(get_int(body, "logprobs", 0, 0, 5));
  }
  if (const text_json* stop = field(body, "stop")) {
    if (stop->is_string()) {
      spec->stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      if (stop->size() > size_t(kMaxStopStrings)) bad("stop", "'stop' holds at most 4 strings");
      for (const auto& s : *stop) {
        if (!s.is_string()) bad("stop", "'stop' must be a string or an array of strings", "invalid_type");
        spec->stop.push_back(s.get<std::string>());
      }
    } else {
      bad("stop", "'stop' must be a string or an array of strings", "invalid_type");
    }
    for (const std::string& s : spec->stop)
      if (s.empty()) bad("stop", "stop strings must not be empty");
  }
  spec->stream = get_bool(body, "stream", false);
  if (const text_json* so = field(body, "stream_options")) {
    if (!so->is_object()) bad("stream_options", "'stream_options' must be an object", "invalid_type");
    spec->include_usage = get_bool(*so, "include_usage", false);
  }
  spec->priority = int(get_int(body, "priority", 0, -1000000, 1000000));
  if (const text_json* forced = field(body, "test_hook_forced_output")) {
    if (!limits.test_hook_forced_output)
      bad("test_hook_forced_output", "'test_hook_forced_output' is a test hook; enable debug.test_hook_forced_output");
    if (!forced->is_string()) bad("test_hook_forced_output", "'test_hook_forced_output' must be a string", "invalid_type");
    sp.forced = true;
    sp.forced_tokens = tokenizer.encode(forced->get<std::string>(), /*allow_special=*/true);
  }
}

// Context limit: 413 for a prompt that leaves no room; max_tokens is clamped to what is left.
void apply_context_limit(const ApiLimits& limits, GenerationSpec* spec) {
  const int64_t n = int64_t(spec->prompt.size());
  if (n >= limits.max_context)
    throw ApiError(413, "the prompt has " + std::to_string(n) + " tokens; the context limit is " +
                            std::to_string(limits.max_context) + " tokens (prompt + completion)",
                   spec->chat ? "messages" : "prompt", "context_length_exceeded");
  spec->sampling.max_tokens = int(std::min<int64_t>(spec->sampling.max_tokens, limits.max_context - n));
}

bool thinking_from_request(const text_json& body) {
  bool thinking = true;  // §9.1: on by default
  if (const text_json* t = field(body, "thinking")) {
    if (t->is_boolean()) {
      thinking = t->get<bool>();
    } else if (t->is_object() && t->contains("type") && (*t)["type"].is_string()) {
      const std::string type = (*t)["type"].get<std::string>();
      if (type != "enabled" && type != "disabled") bad("thinking", "'thinking.type' must be 'enabled' or 'disabled'");
      thinking = type == "enabled";
    } else {
      bad("thinking", "'thinking' must be {\"type\": \"enabled\"|\"disabled\"} or a boolean", "invalid_type");
    }
  }
  if (const text_json* kw = field(body, "chat_template_kwargs")) {
    if (!kw->is_object()) bad("chat_template_kwargs", "'chat_template_kwargs' must be an object", "invalid_type");
    for (const char* key : {"thinking", "enable_thinking"})
      if (const text_json* v = field(*kw, key)) {
        if (!v->is_boolean()) bad(std::string("chat_template_kwargs.") + key, "must be a boolean", "invalid_type");
        thinking = v->get<bool>();
      }
  }
  return thinking;
}

}  // namespace

ApiError::ApiError(int status, std::string message, std::string param, std::string code, std::string type)
    : std::runtime_error(std::move(message)), status_(status), param_(std::move(param)), code_(std::move(code)),
      type_(std::move(type)) {
  if (type_.empty()) {
    switch (status_) {
      case 401: type_ = "authentication_error"; break;
      case 404: type_ = "not_found_error"; break;
      case 429: type_ = "rate_limit_error"; break;
      case 503: type_ = "service_unavailable_error"; break;
      default: type_ = status_ >= 500 ? "server_error" : "invalid_request_error";
    }
  }
}

std::string ApiError::json() const {
  text_json e = {{"message", what()},
                 {"type", type_},
                 {"param", param_.empty() ? text_json(nullptr) : text_json(param_)},
                 {"code", code_.empty() ? text_json(nullptr) : text_json(code_)}};
  return text_json{{"error", e}}.dump(-1, ' ', false, text_json::error_handler_t::replace);
}

text_json parse_json_body(const std::string& body) {
  // JSON text holds no raw NUL byte (inside strings it must be escaped); the parser would take one
  // for the end of input and ignore what follows.
  if (const size_t nul = body.find('\0'); nul != std::string::npos)
    throw ApiError(400, "the request body is not valid JSON: a NUL byte at offset " + std::to_string(nul), "",
                   "invalid_json");
  text_json j;
  if (!text::json_try_parse(body, &j)) {
    // Let nlohmann name the position of the first error.
    std::string detail;
    try {
      const nlohmann::json probe = nlohmann::json::parse(body);
      (void)probe;
    } catch (const nlohmann::json::exception& e) {
      detail = std::string(": ") + e.what();
    }
    throw ApiError(400, "the request body is not valid JSON" + detail, "", "invalid_json");
  }
  if (!j.is_object()) throw ApiError(400, "the request body must be a JSON object", "", "invalid_json");
  return j;
}

GenerationSpec parse_chat_request(const text_json& body, const text::Tokenizer& tokenizer, const ApiLimits& limits) {
  GenerationSpec spec;
  spec.chat = true;
  parse_common(body, limits, tokenizer, &spec, true);
  const text_json* messages = field(body, "messages");
  if (!messages) bad("messages", "'messages' is required", "missing_field");
  if (!messages->is_array()) bad("messages", "'messages' must be an array", "invalid_type");
  if (messages->empty()) bad("messages", "'messages' must not be empty");
  for (size_t i = 0; i < messages->size(); ++i) {
    const text_json& m = (*messages)[i];
    const std::string at = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) bad(at, at + " must be an object", "invalid_type");
    if (!m.contains("role") || !m["role"].is_string()) bad(at + ".role", at + ".role must be a string", "invalid_type");
  }

  text_json tools = nullptr;
  if (const text_json* t = field(body, "tools")) {
    if (!t->is_array()) bad("tools", "'tools' must be an array", "invalid_type");
    for (size_t i = 0; i < t->size(); ++i) {
      const text_json& tool = (*t)[i];
      const std::string at = "tools[" + std::to_string(i) + "]";
      if (!tool.is_object() || !tool.contains("function") || !tool["function"].is_object())
        bad(at, at + " must be {\"type\": \"function\", \"function\": {...}}", "invalid_type");
      if (!tool["function"].contains("name") || !tool["function"]["name"].is_string())
        bad(at + ".function.name", at + ".function.name must be a string", "invalid_type");
    }
    if (!t->empty()) tools = *t;
  }
  bool tool_calls_enabled = !tools.is_null();
  if (const text_json* tc = field(body, "tool_choice")) {
    if (tc->is_string()) {
      const std::string v = tc->get<std::string>();
      if (v == "none") {
        tool_calls_enabled = false;
      } else if (v == "required") {
        bad("tool_choice", "tool_choice 'required' is not supported (the V4 prompt format cannot force a call)");
      } else if (v != "auto") {
        bad("tool_choice", "'tool_choice' must be 'auto', 'none' or 'required'");
      }
    } else if (tc->is_object()) {
      bad("tool_choice", "a named tool_choice is not supported (the V4 prompt format cannot force a call)");
    } else {
      bad("tool_choice", "'tool_choice' must be a string", "invalid_type");
    }
  }

  bool thinking = thinking_from_request(body);
  text::ChatOptions co;
  if (const text_json* e = field(body, "reasoning_effort")) {
    if (!e->is_string()) bad("reasoning_effort", "'reasoning_effort' must be a string", "invalid_type");
    const std::string effort = e->get<std::string>();
    if (effort == "none") {
      thinking = false;
    } else {
      try {
        co.effort = text::effort_prefix_for(effort, limits.dialect);
      } catch (const v4rt::Error& err) {
        bad("reasoning_effort", err.what());
      }
    }
  }
  co.thinking = thinking;
  if (!thinking) co.effort = text::EffortPrefix::kNone;

  text::ChatPrompt prompt;
  try {
    prompt = text::chat_encode(*messages, tools, co);
  } catch (const v4rt::Error& err) {
    bad("messages", err.what());
  }
  if (!prompt.generation_prompt)
    bad("messages", "the conversation must end with a user, tool or developer message");
  const std::vector<text::TextSpan> spans = prompt.spans();
  spec.prompt = tokenizer.encode_spans(spans, prompt.message_ends, &spec.boundaries);
  spec.thinking = prompt.ends_in_reasoning;
  spec.parser.thinking = prompt.ends_in_reasoning;
  spec.parser.tool_calls_enabled = tool_calls_enabled;
  spec.parser.tools = tools;
  apply_context_limit(limits, &spec);
  return spec;
}

GenerationSpec parse_completion_request(const text_json& body, const text::Tokenizer& tokenizer,
                                        const ApiLimits& limits) {
  GenerationSpec spec;
  spec.chat = false;
  parse_common(body, limits, tokenizer, &spec, false);
  if (get_bool(body, "echo", false)) bad("echo", "'echo' is not supported");
  if (get_int(body, "best_of", 1, 1, 1 << 20) != 1) bad("best_of", "only best_of = 1 is supported");
  if (const text_json* s = field(body, "suffix"); s && !(s->is_string() && s->get<std::string>().empty()))
    bad("suffix", "'suffix' is not supported");
  const text_json* p = field(body, "prompt");
  if (!p) bad("prompt", "'prompt' is required", "missing_field");
  spec.prompt.push_back(int32_t(text::kBosId));
  auto add_ids = [&](const text_json& arr) {
    for (const auto& id : arr) {
      if (!id.is_number_integer()) bad("prompt", "'prompt' token ids must be integers", "invalid_type");
      const int64_t v = id.get<int64_t>();
      if (v < 0 || v >= tokenizer.vocab_size()) bad("prompt", "token id " + std::to_string(v) + " is outside the vocabulary");
      spec.prompt.push_back(int32_t(v));
    }
  };
  if (p->is_string()) {
    tokenizer.encode_to(p->get<std::string>(), false, &spec.prompt);
  } else if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) {
    tokenizer.encode_to((*p)[0].get<std::string>(), false, &spec.prompt);
  } else if (p->is_array() && !p->empty() && (*p)[0].is_number_integer()) {
    spec.prompt.clear();
    add_ids(*p);
  } else if (p->is_array() && p->size() > 1) {
    bad("prompt", "only one prompt per request is supported");
  } else {
    bad("prompt", "'prompt' must be a string or an array of token ids", "invalid_type");
  }
  if (spec.prompt.empty()) bad("prompt", "'prompt' must not be empty");
  apply_context_limit(limits, &spec);
  return spec;
}

}  // namespace v4rt::launch::serve
