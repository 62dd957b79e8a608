// SPDX-License-Identifier: MIT
// StepPlan byte encoding (see step_plan.h).
//
// Encoding (little-endian): u32 magic "V4SP", u32 version 5, u64 step_idx, u8 shutdown,
// u64 num_resolves, {u64 seq, i32 accepted}[num_resolves],
// u64 num_stores, {u64 seq, i64 upto, i64 block_tokens, u64 num_points, {u64 id, i64 position}[],
//                  u64 num_blocks, {u64 id, i64 index, i64 end}[]}[num_stores],
// u64 num_resumes, {u64 dst, i64 position, u64 point, u64 num_blocks, u64 blocks[]}[num_resumes],
// u64 num_drafts, {u64 seq, i32 level, i32 depth, i32 token}[num_drafts], u64 num_chunks,
// {u64 seq, i64 start_pos, i32 num_tokens, u8 want_logits, u8 kind, u8 take_point
//  [, u64 seed, f32 temperature, f32 top_p, i32 top_k, i32 n_logprobs when want_logits = 3]}[num_chunks],
// u64 num_tokens, i32 tokens[num_tokens], u64 num_frees, u64 frees[num_frees],
// u64 num_releases, u64 releases[num_releases].
#include "runtime/step_plan.h"

#include <cmath>
#include <cstring>

#include "common/check.h"

namespace v4rt::runtime {

namespace {

constexpr uint32_t kPlanMagic = 0x50533456;  // "V4SP"
constexpr uint32_t kPlanVersion = 5;  // 4: prefix cache ops (stores, resumes, frees, take_point);
                                      // 5: want_logits 3 (device draw)
constexpr int32_t kMaxPlanLogprobs = 20;  // OpenAI's top_logprobs limit

class Writer {
 public:
  template <typename T>
  void put(T v) {
    const size_t at = out.size();
    out.resize(at + sizeof(T));
    std::memcpy(out.data() + at, &v, sizeof(T));
  }
  std::vector<uint8_t> out;
};

class Reader {
 public:
  explicit Reader(std::span<const uint8_t> bytes) : bytes_(bytes) {}
  template <typename T>
  T get(const char* field) {
    V4RT_REQUIRE(pos_ + sizeof(T) <= bytes_.size(), "step plan: truncated at field '" << field << "'");
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  uint64_t count(const char* field, size_t element_bytes) {
    const uint64_t n = get<uint64_t>(field);
    V4RT_REQUIRE(n <= (bytes_.size() - pos_) / element_bytes, "step plan: count of '" << field << "' (" << n
                                                                   << ") exceeds the remaining bytes");
    return n;
  }
  bool at_end() const { return pos_ == bytes_.size(); }

 private:
  std::span<const uint8_t> bytes_;
  size_t pos_ = 0;
};

void read_store(Reader& r, PlanStore* s) {
  s->seq = r.get<uint64_t>("stores.seq");
  s->upto = r.get<int64_t>("stores.upto");
  s->block_tokens = r.get<int64_t>("stores.block_tokens");
  V4RT_REQUIRE(s->upto > 0 && s->block_tokens > 0, "step plan: store of sequence " << s->seq << " up to " << s->upto
                                                       << " with blocks of " << s->block_tokens << " tokens");
  s->points.resize(r.count("stores.points", 16));
  for (PlanStorePoint& p : s->points) {
    p.id = r.get<uint64_t>("stores.points.id");
    p.position = r.get<int64_t>("stores.points.position");
    V4RT_REQUIRE(p.id != 0 && p.position > 0 && p.position <= s->upto,
                 "step plan: store of sequence " << s->seq << ": point " << p.id << " at " << p.position
                                                 << " outside (0, " << s->upto << "]");
  }
  s->blocks.resize(r.count("stores.blocks", 24));
  for (PlanStoreBlock& b : s->blocks) {
    b.id = r.get<uint64_t>("stores.blocks.id");
    b.index = r.get<int64_t>("stores.blocks.index");
    b.end = r.get<int64_t>("stores.blocks.end");
    V4RT_REQUIRE(b.id != 0 && b.index >= 0 && b.end > b.index * s->block_tokens &&
                     b.end <= (b.index + 1) * s->block_tokens && b.end <= s->upto,
                 "step plan: store of sequence " << s->seq << ": block " << b.id << " (index " << b.index
                                                 << ", end " << b.end << ") outside its block or past " << s->upto);
  }
}

void read_resume(Reader& r, PlanResume* x) {
  x->dst = r.get<uint64_t>("resumes.dst");
  x->position = r.get<int64_t>("resumes.position");
  x->point = r.get<uint64_t>("resumes.point");
  V4RT_REQUIRE(x->position > 0 && x->point != 0,
               "step plan: resume of sequence " << x->dst << " at " << x->position << " from point " << x->point);
  x->blocks.resize(r.count("resumes.blocks", 8));
  for (uint64_t& b : x->blocks) b = r.get<uint64_t>("resumes.blocks");
}

void read_sample(Reader& r, PlanChunk& c) {
  PlanSample& s = c.sample;
  s.seed = r.get<uint64_t>("chunks.sample.seed");
  s.temperature = r.get<float>("chunks.sample.temperature");
  s.top_p = r.get<float>("chunks.sample.top_p");
  s.top_k = r.get<int32_t>("chunks.sample.top_k");
  s.n_logprobs = r.get<int32_t>("chunks.sample.n_logprobs");
  V4RT_REQUIRE(c.kind == ChunkKind::kPlain || c.kind == ChunkKind::kHidden,
               "step plan: verify chunk of sequence " << c.seq << " cannot draw on the device");
  V4RT_REQUIRE(std::isfinite(s.temperature) && s.top_p > 0.0f && s.top_p <= 1.0f && s.n_logprobs >= 0 &&
                   s.n_logprobs <= kMaxPlanLogprobs,
               "step plan: chunk of sequence " << c.seq << " draws with temperature " << s.temperature << ", top_p "
                                               << s.top_p << ", " << s.n_logprobs << " logprobs");
}

}  // namespace

void StepPlan::add_chunk(SeqId seq, int64_t start_pos, std::span<const int32_t> chunk_tokens, uint8_t want_logits,
                         ChunkKind kind) {
  chunks.push_back({seq, start_pos, int32_t(chunk_tokens.size()), want_logits, kind, 0, {}});
  tokens.insert(tokens.end(), chunk_tokens.begin(), chunk_tokens.end());
}

std::vector<uint8_t> serialize_plan(const StepPlan& plan) {
  Writer w;
  w.put(kPlanMagic);
  w.put(kPlanVersion);
  w.put(plan.step_idx);
  w.put(plan.shutdown);
  w.put(uint64_t(plan.resolves.size()));
  for (const PlanResolve& r : plan.resolves) {
    w.put(r.seq);
    w.put(r.accepted);
  }
  w.put(uint64_t(plan.stores.size()));
  for (const PlanStore& s : plan.stores) {
    w.put(s.seq);
    w.put(s.upto);
    w.put(s.block_tokens);
    w.put(uint64_t(s.points.size()));
    for (const PlanStorePoint& p : s.points) {
      w.put(p.id);
      w.put(p.position);
    }
    w.put(uint64_t(s.blocks.size()));
    for (const PlanStoreBlock& b : s.blocks) {
      w.put(b.id);
      w.put(b.index);
      w.put(b.end);
    }
  }
  w.put(uint64_t(plan.resumes.size()));
  for (const PlanResume& r : plan.resumes) {
    w.put(r.dst);
    w.put(r.position);
    w.put(r.point);
    w.put(uint64_t(r.blocks.size()));
    for (uint64_t b : r.blocks) w.put(b);
  }
  w.put(uint64_t(plan.drafts.size()));
  for (const PlanDraft& d : plan.drafts) {
    w.put(d.seq);
    w.put(d.level);
    w.put(d.depth);
    w.put(d.token);
  }
  w.put(uint64_t(plan.chunks.size()));
  for (const PlanChunk& c : plan.chunks) {
    w.put(c.seq);
    w.put(c.start_pos);
    w.put(c.num_tokens);
    w.put(c.want_logits);
    w.put(uint8_t(c.kind));
    w.put(c.take_point);
    if (c.want_logits != kSampleLast) continue;
    w.put(c.sample.seed);
    w.put(c.sample.temperature);
    w.put(c.sample.top_p);
    w.put(c.sample.top_k);
    w.put(c.sample.n_logprobs);
  }
  w.put(uint64_t(plan.tokens.size()));
  for (int32_t t : plan.tokens) w.put(t);
  w.put(uint64_t(plan.frees.size()));
  for (uint64_t id : plan.frees) w.put(id);
  w.put(uint64_t(plan.releases.size()));
  for (SeqId s : plan.releases) w.put(s);
  return std::move(w.out);
}

StepPlan deserialize_plan(std::span<const uint8_t> bytes) {
  Reader r(bytes);
  V4RT_REQUIRE(r.get<uint32_t>("magic") == kPlanMagic, "step plan: bad magic");
  const uint32_t version = r.get<uint32_t>("version");
  V4RT_REQUIRE(version == kPlanVersion, "step plan: version " << version << ", expected " << kPlanVersion);
  StepPlan p;
  p.step_idx = r.get<uint64_t>("step_idx");
  p.shutdown = r.get<uint8_t>("shutdown");
  p.resolves.resize(r.count("resolves", 12));
  for (PlanResolve& x : p.resolves) {
    x.seq = r.get<uint64_t>("resolves.seq");
    x.accepted = r.get<int32_t>("resolves.accepted");
    V4RT_REQUIRE(x.accepted >= 0, "step plan: sequence " << x.seq << " resolves " << x.accepted << " drafts");
  }
  p.stores.resize(r.count("stores", 40));
  for (PlanStore& s : p.stores) read_store(r, &s);
  p.resumes.resize(r.count("resumes", 32));
  for (PlanResume& x : p.resumes) read_resume(r, &x);
  p.drafts.resize(r.count("drafts", 20));
  for (PlanDraft& d : p.drafts) {
    d.seq = r.get<uint64_t>("drafts.seq");
    d.level = r.get<int32_t>("drafts.level");
    d.depth = r.get<int32_t>("drafts.depth");
    d.token = r.get<int32_t>("drafts.token");
    V4RT_REQUIRE(d.level >= 1 && d.level <= d.depth && d.token >= 0,
                 "step plan: draft of sequence " << d.seq << " at level " << d.level << " of " << d.depth
                                                 << " with token " << d.token);
  }
  p.chunks.resize(r.count("chunks", 23));
  int64_t total = 0;
  for (PlanChunk& c : p.chunks) {
    c.seq = r.get<uint64_t>("chunks.seq");
    c.start_pos = r.get<int64_t>("chunks.start_pos");
    c.num_tokens = r.get<int32_t>("chunks.num_tokens");
    c.want_logits = r.get<uint8_t>("chunks.want_logits");
    const uint8_t kind = r.get<uint8_t>("chunks.kind");
    c.take_point = r.get<uint8_t>("chunks.take_point");
    V4RT_REQUIRE(c.take_point <= 1, "step plan: chunk of sequence " << c.seq << " has take_point " << int(c.take_point));
    V4RT_REQUIRE(c.num_tokens > 0 && c.start_pos >= 0, "step plan: chunk of sequence " << c.seq << " has "
                                                           << c.num_tokens << " tokens at " << c.start_pos);
    V4RT_REQUIRE(kind <= uint8_t(ChunkKind::kVerify) && c.want_logits <= kSampleLast &&
                     (kind != uint8_t(ChunkKind::kVerify) || c.want_logits == kLogitsAll),
                 "step plan: chunk of sequence " << c.seq << " has kind " << int(kind) << " and want_logits "
                                                 << int(c.want_logits));
    c.kind = ChunkKind(kind);
    if (c.want_logits == kSampleLast) read_sample(r, c);
    total += c.num_tokens;
  }
  p.tokens.resize(r.count("tokens", 4));
  V4RT_REQUIRE(int64_t(p.tokens.size()) == total,
               "step plan: " << p.tokens.size() << " tokens for chunks that hold " << total);
  for (int32_t& t : p.tokens) t = r.get<int32_t>("tokens");
  p.frees.resize(r.count("frees", 8));
  for (uint64_t& id : p.frees) id = r.get<uint64_t>("frees");
  p.releases.resize(r.count("releases", 8));
  for (SeqId& s : p.releases) s = r.get<uint64_t>("releases");
  V4RT_REQUIRE(r.at_end(), "step plan: trailing bytes");
  return p;
}

}  // namespace v4rt::runtime
