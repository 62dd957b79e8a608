// SPDX-License-Identifier: MIT
// Streaming DeepSeek-V4 output parser (see output_parser.h). Markers are exact byte strings
// found with string_view::find; the hold-back rule keeps the output independent of chunking.
// The malformed-DSML rules it applies are listed in docs/SERVING.md ("Malformed tool calls").
#include "model/text/output_parser.h"

#include <glog/logging.h>

#include <array>
#include <random>

#include "model/text/detokenizer.h"
#include "model/text/special_tokens.h"
#include "model/text/utf8.h"

namespace v4rt::model::text {
namespace {

// Every DSML tag is "<" or "</", the ｜DSML｜ token, then a name: any of them starts markup.
constexpr std::string_view kDsmlOpen = "<｜DSML｜";
constexpr std::string_view kDsmlClose = "</｜DSML｜";
constexpr size_t kMaxTagName = 64;     // longer names are cut here (bounds the hold-back)
constexpr size_t kMaxAttrValue = 4096; // an attribute value without its closing quote by then is bad

// Markers of REASONING and CONTENT; ｜DSML｜ alone is the token without its angle bracket.
constexpr std::array<std::string_view, 6> kTextMarkers = {kDsmlOpen, kDsmlClose, kDsml,
                                                          kThinkEnd, kThinkStart, kEos};
// Markers of BLOCK, INVOKE and AFTER.
constexpr std::array<std::string_view, 3> kMarkupMarkers = {kDsmlOpen, kDsmlClose, kEos};
// VALUE ends at its closer, or implicitly at a tag that cannot be inside a value (§8.2); other
// text, DSML or not, is the value's (it is argument data, never content).
constexpr std::array<std::string_view, 7> kValueMarkers = {
    "</｜DSML｜parameter>", "<｜DSML｜parameter", "<｜DSML｜invoke", "</｜DSML｜invoke>",
    "</｜DSML｜tool_calls>", "</｜DSML｜function_calls>", kEos};

bool is_ws(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }
bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-';
}

std::string_view trim_ws(std::string_view s) {
  while (!s.empty() && is_ws(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_ws(s.back())) s.remove_suffix(1);
  return s;
}

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

// The attributes of a DSML tag from `i` (just after its name) through its '>':
// ( WS KEY WS? "=" WS? QUOTE VALUE QUOTE )* WS? ( ">" | "/>" ). Either quote character is
// accepted. A value holding the ｜DSML｜ token is bad, so a missing quote never swallows markup.
Scan scan_attrs(std::string_view s, size_t i, std::map<std::string, std::string>* attrs,
                size_t* used) {
  auto skip_ws = [&] {
    while (i < s.size() && is_ws(s[i])) ++i;
    return i < s.size();
  };
  for (;;) {
    if (!skip_ws()) return Scan::kMore;
    if (s[i] == '>' || s[i] == '/') {
      if (s[i] == '/' && i + 1 == s.size()) return Scan::kMore;
      if (s[i] == '/' && s[i + 1] != '>') return Scan::kBad;
      *used = i + (s[i] == '/' ? 2 : 1);
      return Scan::kOk;
    }
    const size_t key_begin = i;
    while (i < s.size() && is_name_char(s[i])) ++i;
    if (i == s.size()) return Scan::kMore;
    if (i == key_begin) return Scan::kBad;
    const std::string key(s.substr(key_begin, i - key_begin));
    if (!skip_ws()) return Scan::kMore;
    if (s[i++] != '=') return Scan::kBad;
    if (!skip_ws()) return Scan::kMore;
    const char quote = s[i];
    if (quote != '"' && quote != '\'') return Scan::kBad;
    const size_t close = s.find(quote, i + 1);
    const std::string_view value =
        s.substr(i + 1, close == std::string_view::npos ? std::string_view::npos : close - i - 1);
    if (value.find(kDsml) != std::string_view::npos) return Scan::kBad;
    if (close == std::string_view::npos) return value.size() > kMaxAttrValue ? Scan::kBad : Scan::kMore;
    (*attrs)[key] = std::string(value);
    i = close + 1;
  }
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
  length_limited_ = length_limited;
  buf_ += utf8_sanitize(utf8_tail_);
  utf8_tail_.clear();
  while (step(true)) {
  }
  // Truncated inside an invoke: never reported as complete (§8.3 item 5).
  if (in_call_)
    drop_call(length_limited ? "generation reached the token limit inside it" : "the output ended inside it");
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
    case State::kBlock:
    case State::kInvoke:
    case State::kAfter: return step_markup(eof);
    case State::kValue: return step_value(eof);
    case State::kDone: buf_.clear(); return false;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// REASONING / CONTENT
// ---------------------------------------------------------------------------------------------
// Plain text up to the next marker. A DSML opener of any name starts markup (BLOCK); DSML
// closers, ｜DSML｜ alone, <think> and (in content) </think> are removed.
bool OutputParser::step_text(bool eof, bool reasoning) {
  if (after_drop_ && !guard_join(eof, reasoning)) return false;
  const auto kind = reasoning ? ParseEvent::Kind::kReasoning : ParseEvent::Kind::kContent;
  const std::string_view buf(buf_);
  const auto [pos, which] = find_marker(buf, kTextMarkers);
  if (which < 0) {
    size_t hold = 0;
    if (!eof) {
      hold = partial_suffix(buf, kTextMarkers);
      // Up to two '\n' before the held part may be the separator in front of a DSML block.
      for (int k = 0; k < 2 && hold < buf.size() && buf[buf.size() - hold - 1] == '\n'; ++k) ++hold;
    }
    emit_text(kind, buf.substr(0, buf.size() - hold));
    buf_.erase(0, buf_.size() - hold);
    return false;
  }
  const std::string_view marker = kTextMarkers[which];
  if (marker == kDsmlOpen) {  // a block, or markup that will be dropped as one (§8.3 item 10)
    emit_text(kind, strip_newlines(buf.substr(0, pos), 2));
    buf_.erase(0, pos);
    state_ = State::kBlock;
    return true;
  }
  if (marker == kEos || (reasoning && marker == kThinkEnd)) {
    emit_text(kind, buf.substr(0, pos));
    buf_.erase(0, pos + marker.size());
    state_ = marker == kEos ? State::kDone : State::kContent;
    return true;
  }
  size_t len = marker.size();
  if (marker == kDsmlClose) {  // the closer's name and '>' go with it
    size_t i = pos + len;
    while (i < buf.size() && i - pos - len < kMaxTagName && is_name_char(buf[i])) ++i;
    if (i == buf.size() && i - pos - len <= kMaxTagName && !eof) {  // <=: a '>' may follow a cut name
      emit_text(kind, buf.substr(0, pos));
      buf_.erase(0, pos);
      return false;
    }
    if (i < buf.size() && buf[i] == '>') ++i;
    len = i - pos;
  }
  VLOG(1) << "output parser: stray " << buf.substr(pos, len) << " removed from "
          << (reasoning ? "reasoning" : "content");
  emit_text(kind, buf.substr(0, pos));
  buf_.erase(0, pos + len);
  after_drop_ = true;
  return true;
}

// After markup was removed from text, the text on either side must not join into the ｜DSML｜
// token (e.g. "｜DS" + "</think>" + "ML｜"). The emitted text never holds the token itself (it is
// a marker), so only a token that starts in its last bytes and ends in what follows can form; its
// remainder is removed too. Returns false while the answer needs more text.
bool OutputParser::guard_join(bool eof, bool reasoning) {
  const std::string& emitted = reasoning ? msg_.reasoning_content : msg_.content;
  for (;;) {
    bool erased = false, wait = false;
    for (size_t k = std::min(kDsml.size() - 1, emitted.size()); k > 0 && !erased; --k) {
      if (emitted.compare(emitted.size() - k, k, kDsml, 0, k) != 0) continue;
      const std::string_view rest = kDsml.substr(k);
      if (std::string_view(buf_).starts_with(rest)) {
        VLOG(1) << "output parser: removed text that would join into the DSML token";
        buf_.erase(0, rest.size());
        erased = true;
      } else if (!eof && buf_.size() < rest.size() && rest.starts_with(buf_)) {
        wait = true;
      }
    }
    if (erased) continue;
    if (wait) return false;
    after_drop_ = false;
    return true;
  }
}

// ---------------------------------------------------------------------------------------------
// BLOCK (between invokes), INVOKE (between parameters), AFTER (after a block closer)
// ---------------------------------------------------------------------------------------------
// Text up to the next '<' is not markup: dropped in BLOCK and AFTER, kept as the invoke's body in
// INVOKE (a JSON-object body is a call's arguments). At '<': ⟨EOS⟩, a DSML tag, or more text.
bool OutputParser::step_markup(bool eof) {
  const size_t lt = buf_.find('<');
  if (lt != 0) {
    const size_t n = lt == std::string::npos ? buf_.size() : lt;
    markup_text(std::string_view(buf_).substr(0, n));
    buf_.erase(0, n);
    return lt != std::string::npos;
  }
  const std::string_view buf(buf_);
  if (buf.starts_with(kEos)) {
    buf_.erase(0, kEos.size());
    if (state_ == State::kInvoke) drop_call("the output ended before the invoke was closed");
    state_ = State::kDone;
    return true;
  }
  const bool closing = buf.starts_with(kDsmlClose);
  if (closing || buf.starts_with(kDsmlOpen)) {
    const size_t begin = (closing ? kDsmlClose : kDsmlOpen).size();
    size_t end = begin;
    while (end < buf.size() && end - begin < kMaxTagName && is_name_char(buf[end])) ++end;
    if (end == buf.size() && end - begin <= kMaxTagName && !eof) return false;  // <=: a '>' may follow a cut name
    return on_tag(eof, closing, buf.substr(begin, end - begin), end);
  }
  if (!eof && is_marker_prefix(buf, kMarkupMarkers)) return false;
  size_t next = buf.find('<', 1);  // a '<' that starts no marker is text
  if (next == std::string_view::npos) next = buf.size();
  markup_text(buf.substr(0, next));
  buf_.erase(0, next);
  return true;
}

void OutputParser::markup_text(std::string_view text) {
  if (text.empty()) return;
  if (state_ == State::kInvoke) {
    call_.body.append(text);
  } else if (!trim_ws(text).empty()) {
    VLOG(1) << "output parser: text inside or after a tool-call block dropped";
  }
}

// One DSML tag at the front of buf_, its name read up to `name_end`.
bool OutputParser::on_tag(bool eof, bool closing, std::string_view name, size_t name_end) {
  const std::string_view buf(buf_);
  // A closer goes through its name and an optional '>'; an opener that is skipped goes through
  // its '>' or up to the next '<' (text that follows it here is not kept in any case).
  auto drop_closer = [&] {
    buf_.erase(0, name_end + (name_end < buf.size() && buf[name_end] == '>' ? 1 : 0));
    return true;
  };
  auto drop_opener = [&] {
    const size_t gt = buf.find_first_of("<>", 1);
    buf_.erase(0, gt == std::string_view::npos ? buf.size() : gt + (buf[gt] == '>' ? 1 : 0));
    return true;
  };
  const std::string tag(name);

  if (state_ == State::kAfter) {  // another block may follow; closers are dropped
    if (closing) return drop_closer();
    state_ = State::kBlock;
    return true;
  }

  if (state_ == State::kBlock) {
    if (closing && tag != "invoke" && tag != "parameter") {  // tool_calls, or any wrapper's closer
      state_ = State::kAfter;
      return drop_closer();
    }
    if (closing) return drop_closer();  // a stray closer
    if (tag != "invoke") {  // a nested or second wrapper, or a parameter outside an invoke
      if (tag == "parameter") VLOG(1) << "output parser: parameter outside an invoke dropped";
      return drop_opener();
    }
    std::map<std::string, std::string> attrs;
    size_t used = 0;
    const Scan s = scan_attrs(buf, name_end, &attrs, &used);
    if (s == Scan::kMore && !eof) return false;
    if (s == Scan::kMore) {  // the stream ends inside the invoke's header
      warn_dropped(attrs["name"], length_limited_ ? "generation reached the token limit inside it"
                                                  : "the output ended inside it");
      buf_.clear();
      return false;
    }
    state_ = State::kInvoke;
    if (s == Scan::kBad) {
      start_call(attrs["name"], "its invoke tag is malformed");
      return drop_opener();
    }
    const std::string call_name = attrs["name"];
    start_call(call_name, call_name.empty() ? "its invoke tag has no name" : "");
    buf_.erase(0, used);
    return true;
  }

  // INVOKE
  if (!closing && tag == "invoke") {  // a dropped </invoke>: close implicitly
    close_call();
    state_ = State::kBlock;
    return true;
  }
  if (closing && tag == "invoke") {
    close_call();
    state_ = State::kBlock;
    return drop_closer();
  }
  if (closing && tag == "parameter") return drop_closer();  // after a value, or stray
  if (closing && (tag == "tool_calls" || tag == "function_calls")) {  // a dropped </invoke>
    close_call();
    state_ = State::kAfter;
    return drop_closer();
  }
  if (tag != "parameter") {
    if (call_.malformed.empty())
      call_.malformed = std::string("an unknown ") + (closing ? "closing " : "") + "tag '" + tag +
                        "' is inside it";
    return closing ? drop_closer() : drop_opener();
  }
  std::map<std::string, std::string> attrs;
  size_t used = 0;
  const Scan s = scan_attrs(buf, name_end, &attrs, &used);
  if (s == Scan::kMore && !eof) return false;
  if (s == Scan::kMore) {  // the call is dropped by finish()
    buf_.clear();
    return false;
  }
  if (s == Scan::kBad) {
    if (call_.malformed.empty()) call_.malformed = "a parameter tag is malformed";
    return drop_opener();
  }
  Param p;
  const auto key = attrs.find("name");
  const auto flag = attrs.find("string");
  if (key != attrs.end()) p.key = key->second;
  if (flag != attrs.end()) p.is_string = flag->second != "false";
  if (call_.malformed.empty()) {
    if (p.key.empty()) {
      call_.malformed = "a parameter has no name";
    } else if (flag != attrs.end() && flag->second != "true" && flag->second != "false") {
      call_.malformed = "parameter \"" + p.key + "\" has string=\"" + flag->second +
                        "\" (must be \"true\" or \"false\")";
    }
  }
  call_.params.push_back(std::move(p));
  buf_.erase(0, used);
  state_ = State::kValue;
  return true;
}

// VALUE: parameter text up to its closer or a tag that closes it implicitly. The tag is left for
// INVOKE, which consumes the parameter's closer.
bool OutputParser::step_value(bool eof) {
  const std::string_view buf(buf_);
  const auto [pos, which] = find_marker(buf, kValueMarkers);
  std::string& raw = call_.params.back().raw;
  if (which < 0) {
    const size_t hold = eof ? 0 : partial_suffix(buf, kValueMarkers);
    raw.append(buf.substr(0, buf.size() - hold));
    buf_.erase(0, buf_.size() - hold);
    return false;  // at the end of the stream the call is dropped by finish()
  }
  raw.append(buf.substr(0, pos));
  buf_.erase(0, pos);
  state_ = State::kInvoke;
  return true;
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

void OutputParser::start_call(std::string name, std::string malformed) {
  in_call_ = true;
  call_ = Call{};
  call_.name = std::move(name);
  call_.malformed = std::move(malformed);
}

// The invoke closed: build the arguments (§6.3), or drop the call when they cannot be read.
void OutputParser::close_call() {
  in_call_ = false;
  const Call c = std::move(call_);
  call_ = Call{};
  if (!opt_.tool_calls_enabled)
    return warn_dropped(c.name, "tool calls are disabled for this request (no tools, or tool_choice \"none\")");
  if (!c.malformed.empty()) return warn_dropped(c.name, c.malformed);
  const std::string_view body = trim_ws(c.body);
  std::string args;
  if (!body.empty()) {
    // Text that is not a parameter: a JSON object is the arguments (a common model slip, which
    // other engines accept too); anything else leaves the arguments unknown.
    Json probe;
    if (!c.params.empty()) return warn_dropped(c.name, "it holds text that is not a parameter");
    if (!json_try_parse(body, &probe) || !probe.is_object())
      return warn_dropped(c.name, "its body is neither parameters nor a JSON object");
    args = std::string(body);
  } else if (c.params.empty()) {
    args = "{}";
  } else {
    std::set<std::string> seen;
    args = "{";
    for (const Param& p : c.params) {
      if (!seen.insert(p.key).second)
        return warn_dropped(c.name, "parameter \"" + p.key + "\" appears twice");
      if (args.size() > 1) args += ", ";
      json_quote_to(p.key, &args);
      args += ": ";
      Json probe;
      if (p.is_string) {
        json_quote_to(p.raw, &args);
      } else if (json_try_parse(p.raw, &probe)) {
        args += p.raw;  // verbatim, as the reference does (§6.3)
      } else {
        VLOG(1) << "output parser: string=\"false\" value is not JSON; sent as a string";
        json_quote_to(p.raw, &args);
      }
    }
    args += "}";
    // §8.3 item 7: a lone wrapper parameter holding the real arguments, when the tool's schema
    // has no property of that name.
    const Param& first = c.params.front();
    if (c.params.size() == 1 && (first.key == "arguments" || first.key == "input")) {
      const auto it = tool_props_.find(c.name);
      Json inner;
      if (it != tool_props_.end() && !it->second.count(first.key) &&
          json_try_parse(first.raw, &inner) && inner.is_object())
        args = first.raw;
    }
  }
  ToolCall tc{opt_.make_id(), c.name, std::move(args)};
  const int index = static_cast<int>(msg_.tool_calls.size());
  if (out_) {
    ParseEvent start = make_event(ParseEvent::Kind::kToolCallStart, "", index);
    start.id = tc.id;
    start.name = tc.name;
    out_->push_back(std::move(start));
    out_->push_back(make_event(ParseEvent::Kind::kToolCallArgs, tc.arguments, index));
  }
  msg_.tool_calls.push_back(std::move(tc));
}

void OutputParser::drop_call(const std::string& reason) {
  if (!in_call_) return;
  in_call_ = false;
  warn_dropped(call_.name, reason);
  call_ = Call{};
}

void OutputParser::warn_dropped(const std::string& name, const std::string& reason) {
  std::string w = name.empty() ? "a tool call with no readable name was dropped: "
                               : "tool call " + json_quote(name) + " was dropped: ";
  w += reason;
  VLOG(1) << "output parser: " << w;
  msg_.warnings.push_back(std::move(w));
}

ParsedMessage parse_completion(std::string_view text, const ParserOptions& options,
                               bool length_limited) {
  OutputParser parser(options);
  parser.feed(text);
  parser.finish(length_limited);
  return parser.message();
}

}  // namespace v4rt::model::text
