// SPDX-License-Identifier: MIT
// Plan broadcast, the step driver and the per-rank start-up of the model commands (see driver.h).
#include "launch/driver.h"
#include "launch/load_progress.h"

#include <glog/logging.h>
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "cluster/mpi_comm.h"
#include "cluster/world.h"
#include "common/check.h"
#include "kernels/backend_factory.h"
#include "model/distributed.h"
#include "model/runtime_config.h"

namespace v4rt::launch {

// ------------------------------------------------------------------------------------------------
// PlanChannel
// ------------------------------------------------------------------------------------------------

PlanChannel::PlanChannel(cluster::Comm* world) : world_(world && world->size() > 1 ? world : nullptr) {}

void PlanChannel::send(std::span<const uint8_t> bytes) {
  CHECK(leader()) << "only world rank 0 sends plans";
  if (!world_) return;
  int64_t size = int64_t(bytes.size());
  world_->broadcast(&size, 1, DType::kI64, 0);
  if (size > 0) world_->broadcast(const_cast<uint8_t*>(bytes.data()), size, DType::kU8, 0);
}

std::vector<uint8_t> PlanChannel::receive() {
  CHECK(!leader()) << "world rank 0 sends plans, it does not receive them";
  int64_t size = 0;
  world_->broadcast(&size, 1, DType::kI64, 0);
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  if (size > 0) world_->broadcast(bytes.data(), size, DType::kU8, 0);
  return bytes;
}

// ------------------------------------------------------------------------------------------------
// ForwardPlan encoding
// ------------------------------------------------------------------------------------------------

std::vector<uint8_t> encode_plan(const ForwardPlan& plan) {
  std::vector<int32_t> w = {plan.stop ? 1 : 0, int32_t(plan.chunks.size()), int32_t(plan.release.size()),
                            int32_t(plan.resolve.size()), int32_t(plan.drafts.size())};
  for (const ForwardChunk& c : plan.chunks) {
    const int32_t flags = (c.all_logits ? 1 : 0) | (c.hidden ? 2 : 0) | (c.verify ? 4 : 0);
    w.insert(w.end(), {c.sequence, flags, int32_t(c.tokens.size())});
    w.insert(w.end(), c.tokens.begin(), c.tokens.end());
  }
  w.insert(w.end(), plan.release.begin(), plan.release.end());
  for (const ResolveOp& r : plan.resolve) w.insert(w.end(), {r.sequence, r.accepted});
  for (const DraftOp& d : plan.drafts) w.insert(w.end(), {d.sequence, d.level, d.depth, d.token});
  std::vector<uint8_t> bytes(w.size() * sizeof(int32_t));
  std::memcpy(bytes.data(), w.data(), bytes.size());
  return bytes;
}

ForwardPlan decode_plan(std::span<const uint8_t> bytes) {
  V4RT_REQUIRE(bytes.size() % 4 == 0 && bytes.size() >= 20, "step plan: " << bytes.size() << " bytes is not a plan");
  std::vector<int32_t> w(bytes.size() / 4);
  std::memcpy(w.data(), bytes.data(), bytes.size());
  size_t at = 0;
  auto next = [&](const char* what) {
    V4RT_REQUIRE(at < w.size(), "step plan truncated at " << what);
    return w[at++];
  };
  ForwardPlan plan;
  plan.stop = next("stop") != 0;
  const int32_t num_chunks = next("num_chunks"), num_release = next("num_release");
  const int32_t num_resolve = next("num_resolve"), num_drafts = next("num_drafts");
  V4RT_REQUIRE(num_chunks >= 0 && num_release >= 0 && num_resolve >= 0 && num_drafts >= 0, "step plan: negative counts");
  for (int32_t i = 0; i < num_chunks; ++i) {
    ForwardChunk c;
    c.sequence = next("sequence");
    const int32_t flags = next("flags");
    V4RT_REQUIRE(flags >= 0 && flags < 8, "step plan: chunk " << i << " has flags " << flags);
    c.all_logits = (flags & 1) != 0;
    c.hidden = (flags & 2) != 0;
    c.verify = (flags & 4) != 0;
    const int32_t n = next("num_tokens");
    V4RT_REQUIRE(n >= 0 && at + size_t(n) <= w.size(), "step plan: chunk " << i << " of " << n << " tokens truncated");
    c.tokens.assign(w.begin() + ptrdiff_t(at), w.begin() + ptrdiff_t(at + size_t(n)));
    at += size_t(n);
    plan.chunks.push_back(std::move(c));
  }
  for (int32_t i = 0; i < num_release; ++i) plan.release.push_back(next("release"));
  for (int32_t i = 0; i < num_resolve; ++i) {
    ResolveOp r;
    r.sequence = next("resolve sequence");
    r.accepted = next("resolve accepted");
    plan.resolve.push_back(r);
  }
  for (int32_t i = 0; i < num_drafts; ++i) {
    DraftOp d;
    d.sequence = next("draft sequence");
    d.level = next("draft level");
    d.depth = next("draft depth");
    d.token = next("draft token");
    V4RT_REQUIRE(d.level >= 1 && d.level <= d.depth, "step plan: draft level " << d.level << " of " << d.depth);
    plan.drafts.push_back(d);
  }
  V4RT_REQUIRE(at == w.size(), "step plan: " << (w.size() - at) << " trailing words");
  return plan;
}

// ------------------------------------------------------------------------------------------------
// Driver
// ------------------------------------------------------------------------------------------------

Driver::~Driver() {
  if (leader() && !stopped_) stop();
}

void Driver::run(const ForwardPlan& plan, std::vector<std::vector<float>>* logits,
                 std::vector<std::vector<float>>* draft_logits) {
  for (const ResolveOp& r : plan.resolve) table_.resolve(uint64_t(r.sequence), r.accepted);
  if (draft_logits) draft_logits->assign(plan.drafts.size(), {});
  for (size_t i = 0; i < plan.drafts.size(); ++i) {
    const DraftOp& d = plan.drafts[i];
    table_.draft(uint64_t(d.sequence), d.level, d.depth, d.token, draft_logits ? &(*draft_logits)[i] : nullptr);
  }
  std::vector<model::StepChunk> chunks;
  for (const ForwardChunk& c : plan.chunks) {
    const ChunkKind kind = c.verify ? ChunkKind::kVerify : c.hidden ? ChunkKind::kHidden : ChunkKind::kPlain;
    chunks.push_back(table_.chunk(uint64_t(c.sequence), c.tokens, c.all_logits, kind));
  }
  if (!chunks.empty()) model_.step(chunks, logits);
  for (const ForwardChunk& c : plan.chunks)  // collective MTP forwards, in chunk order on every rank
    if (c.hidden) table_.after_step(uint64_t(c.sequence));
  for (int32_t id : plan.release) table_.release(uint64_t(id));
  ++steps_;
}

void Driver::step(const ForwardPlan& plan, std::vector<std::vector<float>>* logits,
                  std::vector<std::vector<float>>* draft_logits) {
  CHECK(leader() && !stopped_) << "Driver::step runs on the leader, before stop()";
  CHECK(!plan.stop);
  if (pending_resolve_.empty()) {
    channel_.send(encode_plan(plan));
    run(plan, logits, draft_logits);
    return;
  }
  ForwardPlan p = plan;
  p.resolve.insert(p.resolve.begin(), pending_resolve_.begin(), pending_resolve_.end());
  pending_resolve_.clear();
  channel_.send(encode_plan(p));
  run(p, logits, draft_logits);
}

std::vector<int32_t> SpeculativeTurn::emitted() const {
  std::vector<int32_t> out(drafts.begin(), drafts.begin() + accepted);
  out.push_back(after);
  return out;
}

void Driver::speculate(int depth, std::span<SpeculativeTurn> turns, const ForwardPlan& extra,
                       std::vector<std::vector<float>>* extra_logits) {
  CHECK(mtp()) << "speculative decoding needs the MTP block";
  CHECK_GE(depth, 1);
  using Clock = std::chrono::steady_clock;
  const Clock::time_point t0 = Clock::now();
  std::vector<std::vector<float>> draft_logits;
  for (SpeculativeTurn& t : turns) {
    CHECK(t.sampler);
    t.drafts.clear();
  }
  for (int level = 1; level <= depth && !turns.empty(); ++level) {
    ForwardPlan p;
    for (const SpeculativeTurn& t : turns)
      p.drafts.push_back({t.sequence, level, depth, level == 1 ? t.next : t.drafts.back()});
    step(p, nullptr, &draft_logits);
    for (size_t i = 0; i < turns.size(); ++i) turns[i].drafts.push_back(turns[i].sampler->draft(draft_logits[i]));
  }
  const Clock::time_point t1 = Clock::now();
  ForwardPlan v;
  for (const SpeculativeTurn& t : turns) {
    ForwardChunk c;
    c.sequence = t.sequence;
    c.all_logits = true;
    c.verify = true;
    c.tokens.push_back(t.next);
    c.tokens.insert(c.tokens.end(), t.drafts.begin(), t.drafts.end());
    v.chunks.push_back(std::move(c));
  }
  v.chunks.insert(v.chunks.end(), extra.chunks.begin(), extra.chunks.end());
  v.release = extra.release;
  std::vector<std::vector<float>> logits;
  step(v, &logits);
  CHECK_EQ(logits.size(), v.chunks.size());
  for (size_t i = 0; i < turns.size(); ++i) {
    SpeculativeTurn& t = turns[i];
    t.logits = std::move(logits[i]);
    const model::SpeculativeSampler::Verdict verdict = t.sampler->verify(t.logits, t.drafts);
    t.accepted = verdict.accepted;
    t.after = verdict.next;
    pending_resolve_.push_back({t.sequence, t.accepted});
    spec_stats_.steps += 1;
    spec_stats_.drafted += depth;
    spec_stats_.accepted += t.accepted;
    spec_stats_.emitted += t.accepted + 1;
  }
  if (extra_logits) extra_logits->assign(std::make_move_iterator(logits.begin() + ptrdiff_t(turns.size())),
                                         std::make_move_iterator(logits.end()));
  spec_stats_.draft_s += std::chrono::duration<double>(t1 - t0).count();
  spec_stats_.verify_s += std::chrono::duration<double>(Clock::now() - t1).count();
}

void Driver::stop() {
  if (stopped_) return;
  stopped_ = true;
  ForwardPlan plan;
  plan.stop = true;
  channel_.send(encode_plan(plan));
}

int64_t Driver::follow() {
  CHECK(!leader()) << "the leader drives; it does not follow";
  for (;;) {
    const ForwardPlan plan = decode_plan(channel_.receive());
    if (plan.stop) break;
    run(plan, nullptr, nullptr);  // logits are the leader's
  }
  return steps_;
}

// ------------------------------------------------------------------------------------------------
// ModelRun
// ------------------------------------------------------------------------------------------------

// Set by mpirun / mpiexec (Open MPI, MPICH/PMI, PMIx) in every process it starts.
bool launched_by_mpirun() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"}) {
    if (std::getenv(var)) return true;
  }
  return false;
}

ModelRun::ModelRun(const RunOptions& options) {
  try {
    start(options);
  } catch (const std::exception& e) {
    // A bad config or checkpoint. Under a multi-rank job the error may be this rank's alone while
    // its peers wait in a collective of the start-up, so the job ends here (naming the error).
    if (mpi_ && cluster::world().size > 1) cluster::abort_world(std::string("start-up failed: ") + e.what());
    driver_.reset();
    mtp_.reset();
    model_.reset();
    plan_comm_.reset();
    groups_.reset();
    if (mpi_) cluster::finalize_world();
    throw;
  }
}

void ModelRun::start(const RunOptions& options) {
  parallel::Layout layout;
  if (!options.config.empty()) layout = model::load_runtime_config(options.config).parallel;
  mpi_ = launched_by_mpirun();
  int world_size = 1, device = options.device;
  if (mpi_) {
    const cluster::WorldInfo& world = cluster::init_world(nullptr, nullptr);
    world_rank_ = world.rank;
    world_size = world.size;
    device += world.local_rank;
  }
  backend_ = kernels::make_backend(options.backend, device);
  ckpt_ = model::Checkpoint::open(options.model_dir);
  model::ModelOptions mo;
  mo.numerics = model::parse_numerics(options.numerics);
  if (layout.world() != world_size) {
    // Let validate() phrase it, naming the layout's keys.
    parallel::validate(layout, model::model_dims(ckpt_->config(), *backend_, world_size,
                                                 mo.numerics == model::Numerics::kOfficial));
  }
  if (mpi_) {
    groups_ = std::make_unique<cluster::ProcessGroups>(cluster::make_mpi_groups(parallel::group_shape(layout), options.timeout_s));
    mo.parallel = model::make_parallel_context(layout, ckpt_->config(), *backend_, *groups_,
                                               mo.numerics == model::Numerics::kOfficial);
    cluster::CommOptions po;
    po.name = "plan";
    po.timeout_s = 0;  // the leader may idle between steps (a server waiting for requests)
    plan_comm_ = std::make_unique<cluster::MpiComm>(MPI_COMM_WORLD, po);
    if (world_rank_ == 0) {
      LOG(INFO) << "layout: tp " << layout.tp << ", sp " << layout.sp << " (blocks of " << layout.sp_block
                << " entries), ep " << layout.ep << ", dp " << layout.dp << " over " << world_size << " ranks";
    }
  }
  channel_ = std::make_unique<PlanChannel>(plan_comm_.get());
  // Rank 0 logs a line per loaded unit (shard) with the slowest rank (launch/load_progress.h); the
  // ranks meet once per unit on their own communicator, lifted only after the load.
  std::unique_ptr<cluster::MpiComm> load_comm;
  if (mpi_ && world_size > 1) load_comm = std::make_unique<cluster::MpiComm>(MPI_COMM_WORLD, cluster::CommOptions{"load", 1800});
  mo.load_observer = load_progress_reporter(load_comm.get(), [](const std::string& line) { LOG(INFO) << line; });
  model_ = model::Model::load(*ckpt_, mo, *backend_);
  load_comm.reset();
  if (options.mtp) mtp_ = model::Mtp::load(*ckpt_, *model_);  // throws on every rank without the block
  driver_ = std::make_unique<Driver>(*model_, *channel_);
  driver_->set_mtp(mtp_.get());
}

std::string ModelRun::byte_report() {
  reported_ = true;
  const model::ParallelContext& par = model_->parallel();
  const double steps = double(std::max<int64_t>(driver_->steps(), 1));
  auto bytes = [](const cluster::Comm* c) { return c ? double(c->counters().total_bytes()) : 0.0; };
  // Per step: plan broadcast, TP, SP, EP (the groups may coincide; each is counted as its role).
  std::vector<double> mine = {double(driver_->steps()), bytes(plan_comm_.get()) / steps,
                              par.layout.tp > 1 ? bytes(par.tp) / steps : 0.0,
                              par.layout.sp > 1 ? bytes(par.sp) / steps : 0.0,
                              par.layout.ep > 1 ? bytes(par.ep) / steps : 0.0};
  LOG(INFO) << "bytes sent per step (" << mine[0] << " steps): plan " << mine[1] << ", tp " << mine[2] << ", sp "
            << mine[3] << ", ep " << mine[4];
  const int n = plan_comm_ ? plan_comm_->size() : 1;
  std::vector<double> all(mine.size() * size_t(n));
  if (plan_comm_) {
    plan_comm_->all_gather(mine.data(), all.data(), int64_t(mine.size()), DType::kF64);
  } else {
    all = mine;
  }
  if (!leader()) return "";
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(0);
  for (int r = 0; r < n; ++r) {
    const double* v = &all[size_t(r) * mine.size()];
    os << "rank " << r << ": bytes sent per step (" << v[0] << " steps): plan " << v[1] << ", tp " << v[2]
       << ", sp " << v[3] << ", ep " << v[4] << ", total " << (v[1] + v[2] + v[3] + v[4]) << "\n";
  }
  return os.str();
}

ModelRun::~ModelRun() {
  if (leader()) driver_->stop();
  if (mpi_ && !reported_) {
    const std::string report = byte_report();
    if (!report.empty()) std::fprintf(stderr, "%s", report.c_str());
  }
  driver_.reset();
  mtp_.reset();
  model_.reset();
  plan_comm_.reset();
  groups_.reset();
  if (mpi_) cluster::finalize_world();
}

}  // namespace v4rt::launch
