// SPDX-License-Identifier: MIT
// GenerationOutput (tokens -> deltas), stop strings, and the OpenAI response / chunk JSON.
#include "launch/serve/output.h"

#include <glog/logging.h>

#include <algorithm>

#include "model/text/special_tokens.h"

namespace v4rt::launch::serve {

namespace text = model::text;

namespace {

Delta make_delta(Delta::Kind kind, std::string text, int index = -1) {
  Delta d;
  d.kind = kind;
  d.text = std::move(text);
  d.index = index;
  return d;
}

}  // namespace

std::string StopFilter::feed(std::string_view t) {
  if (stopped_) return "";
  held_.append(t);
  size_t cut = std::string::npos;
  for (const std::string& s : stops_) cut = std::min(cut, held_.find(s));
  if (cut != std::string::npos) {
    std::string out = held_.substr(0, cut);
    held_.clear();
    stopped_ = true;
    return out;
  }
  // Keep the longest suffix that is a proper prefix of a stop string.
  size_t keep = 0;
  for (const std::string& s : stops_)
    for (size_t l = std::min(s.size() - 1, held_.size()); l > keep; --l)
      if (held_.compare(held_.size() - l, l, s, 0, l) == 0) {
        keep = l;
        break;
      }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopFilter::flush() {
  if (stopped_) return "";
  std::string out = std::move(held_);
  held_.clear();
  return out;
}

GenerationOutput::GenerationOutput(const text::Tokenizer& tokenizer, const GenerationSpec& spec)
    : tokenizer_(tokenizer),
      chat_(spec.chat),
      thinking_(spec.chat && spec.thinking),
      logprobs_(spec.sampling.logprobs),
      detok_(tokenizer),
      stop_(spec.stop),
      in_reasoning_(spec.chat && spec.thinking) {
  if (chat_) parser_ = std::make_unique<text::OutputParser>(spec.parser);
}

text_json GenerationOutput::logprob_entry(const runtime::TokenEvent& ev) const {
  auto one = [&](int32_t id, float lp) {
    const std::string& b = tokenizer_.token_bytes(id);
    text_json bytes = text_json::array();
    for (unsigned char c : b) bytes.push_back(int(c));
    return text_json{{"token", text::utf8_sanitize(b)}, {"logprob", lp}, {"bytes", bytes}};
  };
  text_json e = one(ev.token, ev.logprob);
  text_json top = text_json::array();
  for (const auto& [id, lp] : ev.top) top.push_back(one(id, lp));
  e["top_logprobs"] = top;
  return e;
}

void GenerationOutput::add_content(std::string_view t, std::vector<Delta>* deltas) {
  const std::string safe = stop_.feed(t);
  if (safe.empty()) return;
  content_ += safe;
  if (!deltas->empty() && deltas->back().kind == Delta::Kind::kContent) {
    deltas->back().text += safe;
  } else {
    deltas->push_back(make_delta(Delta::Kind::kContent, safe));
  }
}

void GenerationOutput::route(std::vector<text::ParseEvent>& events, std::vector<Delta>* deltas) {
  for (text::ParseEvent& e : events) {
    if (stop_.stopped()) break;
    switch (e.kind) {
      case text::ParseEvent::Kind::kReasoning:
        reasoning_ += e.text;
        if (!deltas->empty() && deltas->back().kind == Delta::Kind::kReasoning) {
          deltas->back().text += e.text;
        } else {
          deltas->push_back(make_delta(Delta::Kind::kReasoning, std::move(e.text)));
        }
        break;
      case text::ParseEvent::Kind::kContent: add_content(e.text, deltas); break;
      case text::ParseEvent::Kind::kToolCallStart:
        deltas->push_back({Delta::Kind::kToolCallStart, "", e.index, e.id, e.name});
        break;
      case text::ParseEvent::Kind::kToolCallArgs:
        deltas->push_back(make_delta(Delta::Kind::kToolCallArgs, std::move(e.text), e.index));
        break;
    }
  }
  events.clear();
}

bool GenerationOutput::on_tokens(const std::vector<runtime::TokenEvent>& tokens, std::vector<Delta>* deltas) {
  std::vector<text::ParseEvent> events;
  for (const runtime::TokenEvent& ev : tokens) {
    if (stop_.stopped()) return false;
    ++completion_tokens_;
    if (in_reasoning_) {
      ++reasoning_tokens_;
      if (ev.token == text::kThinkEndId || ev.token == text::kDsmlId) in_reasoning_ = false;
    }
    if (logprobs_) pending_logprobs_.push_back(logprob_entry(ev));
    const std::string piece = detok_.push(ev.token);
    if (piece.empty()) continue;
    if (parser_) {
      parser_->feed(piece, &events);
      route(events, deltas);
    } else {
      add_content(piece, deltas);
    }
  }
  return !stop_.stopped();
}

void GenerationOutput::finish(runtime::FinishReason reason, std::vector<Delta>* deltas) {
  if (reason == runtime::FinishReason::kEos && !stop_.stopped()) ++completion_tokens_;  // the EOS token
  const bool length = reason == runtime::FinishReason::kLength || reason == runtime::FinishReason::kTimeout;
  std::vector<text::ParseEvent> events;
  const std::string tail = detok_.flush();
  if (parser_) {
    if (!tail.empty()) parser_->feed(tail, &events);
    parser_->finish(length, &events);
    route(events, deltas);
    // A call the model started but whose arguments could not be read is never sent (not even
    // as {}); the response says so instead (docs/SERVING.md, "Malformed tool calls").
    for (const std::string& w : parser_->message().warnings) {
      LOG(WARNING) << "serve: " << w;
      warning_ += (warning_.empty() ? "" : "; ") + w;
    }
    if (!warning_.empty()) deltas->push_back(make_delta(Delta::Kind::kWarning, warning_));
  } else if (!tail.empty()) {
    add_content(tail, deltas);
  }
  const std::string held = stop_.flush();
  if (!held.empty()) {
    content_ += held;
    deltas->push_back(make_delta(Delta::Kind::kContent, held));
  }
  if (stop_.stopped()) {
    finish_reason_ = "stop";
  } else if (length) {
    finish_reason_ = "length";
  } else if (parser_) {
    finish_reason_ = parser_->message().finish_reason;
  } else {
    finish_reason_ = "stop";
  }
}

text_json GenerationOutput::take_logprobs() {
  if (!logprobs_) return nullptr;
  text_json out = std::move(pending_logprobs_);
  pending_logprobs_ = text_json::array();
  return out;
}

namespace {

// Chat logprob entries -> the legacy completions form.
text_json completion_logprobs(const text_json& entries) {
  text_json tokens = text_json::array(), lps = text_json::array(), tops = text_json::array();
  for (const auto& e : entries) {
    tokens.push_back(e["token"]);
    lps.push_back(e["logprob"]);
    text_json top = text_json::object();
    for (const auto& t : e["top_logprobs"]) top[t["token"].get<std::string>()] = t["logprob"];
    tops.push_back(top);
  }
  return text_json{{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}};
}

text_json base(const ResponseMeta& meta, const char* object) {
  return text_json{{"id", meta.id}, {"object", object}, {"created", meta.created}, {"model", meta.model}};
}

}  // namespace

text_json usage_json(const GenerationOutput& out, int64_t prompt_tokens, int64_t cached_tokens) {
  text_json u{{"prompt_tokens", prompt_tokens},
              {"completion_tokens", out.completion_tokens()},
              {"total_tokens", prompt_tokens + out.completion_tokens()},
              {"prompt_tokens_details", {{"cached_tokens", cached_tokens}}}};
  if (out.parsed()) u["completion_tokens_details"] = {{"reasoning_tokens", out.reasoning_tokens()}};
  return u;
}

text_json chunk_json(const ResponseMeta& meta, const Delta* delta, const std::string& finish_reason, text_json logprobs) {
  text_json choice{{"index", 0}};
  const bool has_lp = !logprobs.is_null() && !logprobs.empty();
  if (meta.chat) {
    text_json d = text_json::object();
    if (!delta) {
      if (finish_reason.empty()) d = {{"role", "assistant"}, {"content", ""}};
    } else if (delta->kind == Delta::Kind::kReasoning) {
      d["reasoning_content"] = delta->text;
    } else if (delta->kind == Delta::Kind::kContent) {
      d["content"] = delta->text;
    } else if (delta->kind == Delta::Kind::kWarning) {
      choice["warning"] = delta->text;  // the delta stays empty
    } else if (delta->kind == Delta::Kind::kToolCallStart) {
      d["tool_calls"] = text_json::array({{{"index", delta->index},
                                           {"id", delta->id},
                                           {"type", "function"},
                                           {"function", {{"name", delta->name}, {"arguments", ""}}}}});
    } else {
      d["tool_calls"] = text_json::array({{{"index", delta->index}, {"function", {{"arguments", delta->text}}}}});
    }
    choice["delta"] = d;
    choice["logprobs"] = has_lp ? text_json{{"content", logprobs}} : text_json(nullptr);
  } else {
    choice["text"] = delta ? delta->text : "";
    choice["logprobs"] = has_lp ? completion_logprobs(logprobs) : text_json(nullptr);
  }
  choice["finish_reason"] = finish_reason.empty() ? text_json(nullptr) : text_json(finish_reason);
  text_json j = base(meta, meta.chat ? "chat.completion.chunk" : "text_completion");
  j["choices"] = text_json::array({choice});
  return j;
}

text_json final_json(const ResponseMeta& meta, GenerationOutput& out, int64_t prompt_tokens, int64_t cached_tokens) {
  text_json choice{{"index", 0}};
  const text_json lp = out.take_logprobs();
  if (meta.chat) {
    const text::ParsedMessage* pm = out.parsed();
    text_json msg{{"role", "assistant"}};
    const bool has_calls = pm && !pm->tool_calls.empty();
    msg["content"] = out.content().empty() && has_calls ? text_json(nullptr) : text_json(out.content());
    if (out.thinking()) msg["reasoning_content"] = out.reasoning();
    if (has_calls) {
      text_json calls = text_json::array();
      for (const text::ToolCall& c : pm->tool_calls)
        calls.push_back({{"id", c.id}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
      msg["tool_calls"] = calls;
    }
    choice["message"] = msg;
    choice["logprobs"] = lp.is_null() ? lp : text_json{{"content", lp}};
  } else {
    choice["text"] = out.content();
    choice["logprobs"] = lp.is_null() ? lp : completion_logprobs(lp);
  }
  choice["finish_reason"] = out.finish_reason();
  if (!out.warning().empty()) choice["warning"] = out.warning();
  text_json j = base(meta, meta.chat ? "chat.completion" : "text_completion");
  j["choices"] = text_json::array({choice});
  j["usage"] = usage_json(out, prompt_tokens, cached_tokens);
  return j;
}

}  // namespace v4rt::launch::serve
