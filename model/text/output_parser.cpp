// SPDX-License-Identifier: MIT
// Streaming DeepSeek-V4 output parser (see output_parser.h). Markers are exact byte strings
// found with string_view::find; the hold-back rule keeps the output independent of chunking.
#include "model/text/output_parser.h"

#include <glog/logging.h>

#include <array>
#include <random>

#include "model/text/detokenizer.h"
#include "model/text/special_tokens.h"
#include "model/text/utf8.h"

namespace v4rt::model::text {
namespace {

constexpr std::string_view kTcOpen = "<｜DSML｜tool_calls>";
constexpr std::string_view kTcClose = "</｜DSML｜tool_calls>";
constexpr std::string_view kInvokeOpen = "<｜DSML｜invoke";
constexpr std::string_view kInvokeClose = "</｜DSML｜invoke>";
constexpr std::string_view kParamOpen = "<｜DSML｜parameter";
constexpr std::string_view kParamClose = "</｜DSML｜parameter>";
constexpr std::string_view kDsmlOpenTag = "<｜DSML｜";
constexpr std::string_view kDsmlCloseTag = "</｜DSML｜";

// Markers per state, in the order they are tried when two start at the same position.
constexpr std::array<std::string_view, 4> kReasoningMarkers = {kThinkEnd, kTcOpen, kEos,
                                                               kThinkStart};
constexpr std::array<std::string_view, 6> kContentMarkers = {kTcOpen,       kThinkEnd,
                                                             kParamClose,   kInvokeClose,
                                                             kTcClose,      kEos};
constexpr std::array<std::string_view, 4> kBlockMarkers = {kInvokeOpen, kTcClose, kEos,
                                                           kDsmlOpenTag};
constexpr std::array<std::string_view, 7> kInvokeMarkers = {kParamOpen, kInvokeClose, kTcClose,
                                                            kInvokeOpen, kEos, kDsmlOpenTag,
                                                            kDsmlCloseTag};
constexpr std::array<std::string_view, 6> kValueMarkers = {kParamClose, kParamOpen, kInvokeOpen,
                                                           kInvokeClose, kTcClose, kEos};

bool is_ws(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

// Earliest marker occurrence: {position, marker index}, or {npos, -1}.
template <size_t N>
std::pair<size_t, int> find_marker(std::string_view buf, const std::array<std::string_view, N>& m) {
  std::pair<size_t, int> best{std::string_view::npos, -1};
  for (size_t k = 0; k < N; ++k) {
    const size_t p = buf.find(m[k]);
    if (p < best.first) best = {p, static_cast<int>(k)};
  }
  return best;
}

// Longest suffix of buf that is a proper prefix of some marker.
template <size_t N>
size_t partial_suffix(std::string_view buf, const std::array<std::string_view, N>& m) {
  size_t longest = 0;
  for (const auto& mk : m) longest = std::max(longest, mk.size() - 1);
  for (size_t k = std::min(longest, buf.size()); k > 0; --k) {
    const std::string_view suffix = buf.substr(buf.size() - k);
    for (const auto& mk : m)
      if (mk.size() > k && mk.starts_with(suffix)) return k;
  }
  return 0;
}

// True when buf is a proper prefix of some marker (more text may complete it).
template <size_t N>
bool is_marker_prefix(std::string_view buf, const std::array<std::string_view, N>& m) {
  for (const auto& mk : m)
    if (buf.size() < mk.size() && mk.starts_with(buf)) return true;
  return false;
}

std::string_view strip_newlines(std::string_view s, int max) {
  while (max-- > 0 && !s.empty() && s.back() == '\n') s.remove_suffix(1);
  return s;
}

// Tag-attribute scanner with a three-way answer: matched, needs more text, malformed.
enum class Scan { kOk, kMore, kBad };
struct Cursor {
  std::string_view s;
  size_t i = 0;
  void skip_ws() {
    while (i < s.size() && is_ws(s[i])) ++i;
  }
  Scan lit(std::string_view t) {
    const size_t n = std::min(t.size(), s.size() - i);
    if (s.substr(i, n) != t.substr(0, n)) return Scan::kBad;
    if (n < t.size()) return Scan::kMore;
    i += n;
    return Scan::kOk;
  }
  Scan quoted_until(std::string* out) {  // up to the next '"', which is consumed
    const size_t q = s.find('"', i);
    if (q == std::string_view::npos) return s.size() - i > 4096 ? Scan::kBad : Scan::kMore;
    *out = std::string(s.substr(i, q - i));
    i = q + 1;
    return Scan::kOk;
  }
};

#define V4RT_SCAN(expr)                   \
  do {                                    \
    const Scan r_ = (expr);               \
    if (r_ != Scan::kOk) return r_;       \
  } while (0)

// <｜DSML｜invoke name="NAME">
Scan scan_invoke(std::string_view buf, std::string* name, size_t* used) {
  Cursor c{buf, kInvokeOpen.size()};
  c.skip_ws();
  if (c.i == buf.size()) return Scan::kMore;
  V4RT_SCAN(c.lit("name=\""));
  V4RT_SCAN(c.quoted_until(name));
  c.skip_ws();
  V4RT_SCAN(c.i == buf.size() ? Scan::kMore : Scan::kOk);
  V4RT_SCAN(c.lit(">"));
  *used = c.i;
  return Scan::kOk;
}

// <｜DSML｜parameter name="KEY" string="true|false">   (a missing string attribute means true)
Scan scan_param(std::string_view buf, std::string* key, bool* is_string, size_t* used) {
  Cursor c{buf, kParamOpen.size()};
  c.skip_ws();
  if (c.i == buf.size()) return Scan::kMore;
  V4RT_SCAN(c.lit("name=\""));
  V4RT_SCAN(c.quoted_until(key));
  c.skip_ws();
  if (c.i == buf.size()) return Scan::kMore;
  *is_string = true;
  if (buf[c.i] != '>') {
    V4RT_SCAN(c.lit("string=\""));
    std::string flag;
    V4RT_SCAN(c.quoted_until(&flag));
    if (flag != "true" && flag != "false") return Scan::kBad;
    *is_string = flag == "true";
    c.skip_ws();
    if (c.i == buf.size()) return Scan::kMore;
  }
  V4RT_SCAN(c.lit(">"));
  *used = c.i;
  return Scan::kOk;
}

ParseEvent make_event(ParseEvent::Kind kind, std::string_view text, int index = -1) {
  ParseEvent e;
  e.kind = kind;
  e.text = std::string(text);
  e.index = index;
  return e;
}

std::string random_call_id() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  static const char kHex[] = "0123456789abcdef";
  std::string id = "call_";
  for (int i = 0; i < 24; ++i) id.push_back(kHex[rng() & 15]);
  return id;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Message
// ---------------------------------------------------------------------------------------------
Json ParsedMessage::to_json() const {
  Json m = Json::object();
  m["role"] = "assistant";
  m["content"] = (content.empty() && !tool_calls.empty()) ? Json() : Json(content);
  if (thinking) m["reasoning_content"] = reasoning_content;
  if (!tool_calls.empty()) {
    Json calls = Json::array();
    for (const auto& tc : tool_calls) {
      Json c = Json::object();
      c["id"] = tc.id;
      c["type"] = "function";
      c["function"] = Json::object();
      c["function"]["name"] = tc.name;
      c["function"]["arguments"] = tc.arguments;
      calls.push_back(std::move(c));
    }
    m["tool_calls"] = std::move(calls);
  }
  return m;
}

// ---------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------
OutputParser::OutputParser(ParserOptions options) : opt_(std::move(options)) {
  state_ = opt_.thinking ? State::kReasoning : State::kContent;
  msg_.thinking = opt_.thinking;
  if (!opt_.make_id) opt_.make_id = random_call_id;
  if (opt_.tools.is_array()) {
    for (const auto& t : opt_.tools) {
      if (!t.is_object() || !t.contains("function") || !t["function"].is_object()) continue;
      const Json& f = t["function"];
      if (!f.contains("name") || !f["name"].is_string()) continue;
      const std::string name = f["name"].get<std::string>();  // named: no temporary key under a reference
      auto& props = tool_props_[name];
      if (f.contains("parameters") && f["parameters"].is_object() &&
          f["parameters"].contains("properties") && f["parameters"]["properties"].is_object()) {
        for (const auto& [k, v] : f["parameters"]["properties"].items()) props.insert(k);
      }
    }
  }
}

void OutputParser::feed(std::string_view text, std::vector<ParseEvent>* events) {
  if (finished_) return;
  out_ = events;
  utf8_tail_.append(text);
  const size_t hold = utf8_incomplete_tail(utf8_tail_);
  // Bytes that cannot form a character become U+FFFD, so every output is valid UTF-8 (JSON-safe).
  buf_ += utf8_sanitize(std::string_view(utf8_tail_).substr(0, utf8_tail_.size() - hold));
  utf8_tail_.erase(0, utf8_tail_.size() - hold);
  while (step(false)) {
  }
  out_ = nullptr;
}

void OutputParser::finish(bool length_limited, std::vector<ParseEvent>* events) {
  if (finished_) return;
  out_ = events;
  buf_ += utf8_sanitize(utf8_tail_);
  utf8_tail_.clear();
  while (step(true)) {
  }
  if (in_call_) drop_call();  // truncated inside an invoke: never reported as complete
  buf_.clear();
  finished_ = true;
  out_ = nullptr;
  if (length_limited) {
    msg_.finish_reason = "length";
  } else {
    msg_.finish_reason = msg_.tool_calls.empty() ? "stop" : "tool_calls";
  }
}

bool OutputParser::step(bool eof) {
  switch (state_) {
    case State::kReasoning: return step_text(eof, true);
    case State::kContent: return step_text(eof, false);
    case State::kBlock: return step_markup(eof, false);
    case State::kInvoke: return step_markup(eof, true);
    case State::kValue: return step_value(eof);
    case State::kAfter: return step_after(eof);
    case State::kDone: buf_.clear(); return false;
  }
  return false;
}

// REASONING / CONTENT: plain text up to the next marker.
bool OutputParser::step_text(bool eof, bool reasoning) {
  const auto kind = reasoning ? ParseEvent::Kind::kReasoning : ParseEvent::Kind::kContent;
  const std::string_view buf(buf_);
  auto [pos, which] = reasoning ? find_marker(buf, kReasoningMarkers) : find_marker(buf, kContentMarkers);
  if (which < 0) {
    size_t hold = 0;
    if (!eof) {
      hold = reasoning ? partial_suffix(buf, kReasoningMarkers) : partial_suffix(buf, kContentMarkers);
      // Up to two '\n' before the held part may be the separator in front of a DSML block.
      for (int k = 0; k < 2 && hold < buf.size() && buf[buf.size() - hold - 1] == '\n'; ++k) ++hold;
    }
    emit_text(kind, buf.substr(0, buf.size() - hold));
    buf_.erase(0, buf_.size() - hold);
    return false;
  }
  const std::string_view marker = reasoning ? kReasoningMarkers[which] : kContentMarkers[which];
  std::string_view text = buf.substr(0, pos);
  State next = state_;
  if (marker == kTcOpen) {
    text = strip_newlines(text, 2);
    next = State::kBlock;
  } else if (marker == kThinkEnd) {
    next = State::kContent;  // in CONTENT a stray </think> is dropped
    if (!reasoning) VLOG(1) << "output parser: stray </think> in content removed";
  } else if (marker == kEos) {
    next = State::kDone;
  } else if (!reasoning) {
    VLOG(1) << "output parser: stray " << marker << " outside a tool-call block removed";
  }
  emit_text(kind, text);
  buf_.erase(0, pos + marker.size());
  state_ = next;
  return true;
}

// BLOCK (between invokes) and INVOKE (between parameters).
bool OutputParser::step_markup(bool eof, bool in_invoke) {
  if (!in_stray_) {  // whitespace between tags is layout; inside a stray-text run it is text
    size_t ws = 0;
    while (ws < buf_.size() && is_ws(buf_[ws])) ++ws;
    buf_.erase(0, ws);
  }
  if (buf_.empty()) return false;
  if (buf_[0] != '<') return emit_stray_text();
  in_stray_ = false;
  const std::string_view buf(buf_);
  if (!in_invoke && buf.starts_with(kInvokeOpen)) {
    std::string name;
    size_t used = 0;
    const Scan s = scan_invoke(buf, &name, &used);
    if (s == Scan::kMore && !eof) return false;
    if (s != Scan::kOk) return skip_bad_tag(eof);
    buf_.erase(0, used);
    start_call(name);
    state_ = State::kInvoke;
    return true;
  }
  if (in_invoke && buf.starts_with(kParamOpen)) {
    std::string key;
    bool is_string = true;
    size_t used = 0;
    const Scan s = scan_param(buf, &key, &is_string, &used);
    if (s == Scan::kMore && !eof) return false;
    if (s != Scan::kOk) return skip_bad_tag(eof);
    buf_.erase(0, used);
    begin_param(key, is_string);
    state_ = State::kValue;
    return true;
  }
  if (in_invoke && buf.starts_with(kInvokeClose)) {
    buf_.erase(0, kInvokeClose.size());
    close_call();
    state_ = State::kBlock;
    return true;
  }
  if (in_invoke && buf.starts_with(kInvokeOpen)) {  // a dropped </invoke>: close implicitly
    close_call();
    state_ = State::kBlock;
    return true;
  }
  if (buf.starts_with(kTcClose) || buf.starts_with(kEos)) {
    if (in_invoke) close_call();
    const bool eos = buf.starts_with(kEos);
    buf_.erase(0, eos ? kEos.size() : kTcClose.size());
    state_ = eos ? State::kDone : State::kAfter;
    return true;
  }
  const bool prefix = in_invoke ? is_marker_prefix(buf, kInvokeMarkers)
                                : is_marker_prefix(buf, kBlockMarkers);
  if (prefix) {
    if (!eof) return false;
    buf_.clear();  // an unfinished tag at the end of the stream
    return false;
  }
  if (buf.starts_with(kDsmlOpenTag) || buf.starts_with(kDsmlCloseTag)) return skip_bad_tag(eof);
  return emit_stray_text();
}

// Drops a malformed DSML tag through its '>' (or the rest of the text at the end of stream).
bool OutputParser::skip_bad_tag(bool eof) {
  const size_t gt = buf_.find('>');
  if (gt == std::string::npos) {
    if (!eof) return false;
    VLOG(1) << "output parser: unfinished DSML tag dropped at end of stream";
    buf_.clear();
    return false;
  }
  VLOG(1) << "output parser: malformed DSML tag dropped: " << buf_.substr(0, gt + 1);
  buf_.erase(0, gt + 1);
  return true;
}

// Text inside a block that is not markup degrades to content (up to the next '<'). A run that
// reaches the end of the buffer continues in the next feed, whitespace included.
bool OutputParser::emit_stray_text() {
  size_t end = buf_.find('<', 1);
  in_stray_ = end == std::string::npos;
  if (in_stray_) end = buf_.size();
  VLOG(1) << "output parser: stray text inside a tool-call block kept as content";
  emit_text(ParseEvent::Kind::kContent, std::string_view(buf_).substr(0, end));
  buf_.erase(0, end);
  return true;
}

// VALUE: parameter text up to its closer (or an opener/closer that implies it).
bool OutputParser::step_value(bool eof) {
  const std::string_view buf(buf_);
  auto [pos, which] = find_marker(buf, kValueMarkers);
  if (which < 0) {
    if (eof) {  // truncated mid-parameter: the call is incomplete
      buf_.clear();
      return false;
    }
    const size_t hold = partial_suffix(buf, kValueMarkers);
    append_value(buf.substr(0, buf.size() - hold));
    buf_.erase(0, buf_.size() - hold);
    return false;
  }
  append_value(buf.substr(0, pos));
  const bool closer = kValueMarkers[which] == kParamClose;
  if (!closer) VLOG(1) << "output parser: parameter closed implicitly by " << kValueMarkers[which];
  buf_.erase(0, pos + (closer ? kParamClose.size() : 0));
  end_param();
  state_ = State::kInvoke;
  return true;
}

// AFTER: only EOS may follow the block; anything else is dropped.
bool OutputParser::step_after(bool eof) {
  const size_t pos = buf_.find(kEos);
  std::string_view dropped(buf_);
  if (pos != std::string::npos) dropped = dropped.substr(0, pos);
  size_t hold = 0;
  if (pos == std::string::npos && !eof) {
    hold = partial_suffix(dropped, std::array<std::string_view, 1>{kEos});
    dropped = dropped.substr(0, dropped.size() - hold);
  }
  if (dropped.find_first_not_of(" \t\r\n") != std::string_view::npos)
    VLOG(1) << "output parser: text after the tool-call block dropped";
  if (pos != std::string::npos) {
    buf_.clear();
    state_ = State::kDone;
    return false;
  }
  buf_.erase(0, buf_.size() - hold);
  return false;
}

// ---------------------------------------------------------------------------------------------
// Output assembly
// ---------------------------------------------------------------------------------------------
void OutputParser::emit_text(ParseEvent::Kind kind, std::string_view text) {
  if (text.empty()) return;
  (kind == ParseEvent::Kind::kReasoning ? msg_.reasoning_content : msg_.content).append(text);
  if (!out_) return;
  if (!out_->empty() && out_->back().kind == kind) {
    out_->back().text.append(text);
  } else {
    out_->push_back(make_event(kind, text));
  }
}

void OutputParser::start_call(const std::string& name) {
  in_call_ = true;
  call_ = Call{};
  call_.index = num_calls_++;
  call_.name = name;
  if (!opt_.tool_calls_enabled) return;
  call_.id = opt_.make_id();
  if (out_) {
    ParseEvent e = make_event(ParseEvent::Kind::kToolCallStart, "", call_.index);
    e.id = call_.id;
    e.name = name;
    out_->push_back(std::move(e));
  }
}

void OutputParser::append_args(std::string_view fragment) {
  if (fragment.empty()) return;
  call_.args.append(fragment);
  if (!opt_.tool_calls_enabled || call_.buffered || !out_) return;
  if (!out_->empty() && out_->back().kind == ParseEvent::Kind::kToolCallArgs &&
      out_->back().index == call_.index) {
    out_->back().text.append(fragment);
  } else {
    out_->push_back(make_event(ParseEvent::Kind::kToolCallArgs, fragment, call_.index));
  }
}

void OutputParser::begin_param(const std::string& key, bool is_string) {
  if (call_.num_params == 0 && (key == "arguments" || key == "input")) {
    auto it = tool_props_.find(call_.name);
    call_.buffered = it != tool_props_.end() && !it->second.count(key);
  }
  std::string prefix = call_.num_params == 0 ? "{" : ", ";
  json_quote_to(key, &prefix);
  prefix += ": ";
  if (is_string) prefix += '"';
  append_args(prefix);
  ++call_.num_params;
  value_is_string_ = is_string;
  value_raw_.clear();
}

void OutputParser::append_value(std::string_view raw) {
  if (call_.num_params == 1) call_.first_value.append(raw);
  if (!value_is_string_) {
    value_raw_.append(raw);
    return;
  }
  std::string escaped;
  json_escape_to(raw, &escaped);
  append_args(escaped);
}

void OutputParser::end_param() {
  if (value_is_string_) {
    append_args("\"");
    return;
  }
  Json probe;
  if (json_try_parse(value_raw_, &probe)) {
    append_args(value_raw_);  // verbatim, as the reference does (§6.3)
  } else {
    VLOG(1) << "output parser: string=\"false\" value is not JSON; sent as a string";
    append_args(json_quote(value_raw_));
  }
}

void OutputParser::close_call() {
  append_args(call_.num_params == 0 ? "{}" : "}");
  in_call_ = false;
  if (!opt_.tool_calls_enabled) {
    VLOG(1) << "output parser: tool call " << call_.name << " dropped (tool calls disabled)";
    return;
  }
  if (call_.buffered) {  // §8.3 item 7: a lone wrapper parameter holding the real arguments
    Json inner;
    if (call_.num_params == 1 && json_try_parse(call_.first_value, &inner) && inner.is_object())
      call_.args = call_.first_value;
    call_.buffered = false;
    const std::string all = std::move(call_.args);
    call_.args.clear();
    append_args(all);
  }
  msg_.tool_calls.push_back({call_.id, call_.name, call_.args});
}

void OutputParser::drop_call() {
  VLOG(1) << "output parser: unfinished tool call " << call_.name << " dropped";
  in_call_ = false;
}

ParsedMessage parse_completion(std::string_view text, const ParserOptions& options,
                               bool length_limited) {
  OutputParser parser(options);
  parser.feed(text);
  parser.finish(length_limited);
  return parser.message();
}

}  // namespace v4rt::model::text
