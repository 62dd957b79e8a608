// SPDX-License-Identifier: MIT
// Per-rank start-up of the model commands (see model_run.h).
#include "launch/model_run.h"
#include "launch/load_progress.h"

#include <CLI/CLI.hpp>
#include <glog/logging.h>

#include <cstdio>
#include <sstream>

#include "cluster/world.h"
#include "common/check.h"
#include "kernels/backend_factory.h"
#include "model/distributed.h"
#include "launch/runtime_config.h"

namespace v4rt::launch {

void add_prefill_chunk_option(CLI::App* app, int* prefill_chunk) {
  app->add_option("--prefill-chunk", *prefill_chunk,
                  "Most prompt tokens of one sequence per step: chunked prefill (overrides the config's "
                  "`prefill_chunk:`, default 8192; 0: no limit but the step's token budget)")
      ->check(CLI::NonNegativeNumber);
}

int resolve_prefill_chunk(int flag, const std::string& config) {
  if (flag >= 0) return flag;
  return config.empty() ? RuntimeConfig{}.prefill_chunk : launch::load_runtime_config(config).prefill_chunk;
}

ModelRun::ModelRun(const RunOptions& options) {
  try {
    start(options);
  } catch (const std::exception& e) {
    // A bad config or checkpoint. Under a multi-rank job the error may be this rank's alone while
    // its peers wait in a collective of the start-up, so the job ends here (naming the error).
    if (mpi_ && cluster::world().size > 1) cluster::abort_world(std::string("start-up failed: ") + e.what());
    release();
    if (mpi_) cluster::finalize_world();
    throw;
  }
}

void ModelRun::start(const RunOptions& options) {
  const launch::RuntimeConfig rc = options.config.empty() ? launch::RuntimeConfig{} : launch::load_runtime_config(options.config);
  const parallel::Layout& layout = rc.parallel;
  mpi_ = cluster::launched_by_mpirun();
  int world_size = 1, device = options.device;
  if (mpi_) {
    const cluster::WorldInfo& world = cluster::init_world(nullptr, nullptr);
    world_rank_ = world.rank;
    world_size = world.size;
    device += world.local_rank;
    // More ranks than GPUs on a node: ranks share GPUs round-robin (the groups then stage their
    // collectives through the host, with a warning; see docs/COMM.md).
    const int gpus = options.backend == "cuda" ? kernels::cuda_device_count() : 0;
    if (gpus > 0) device %= gpus;
  }
  kernels::BackendOptions bo = launch::backend_options(rc, device);
  bo.cuda_graphs = rc.cuda_graphs && options.graphs;
  backend_ = kernels::make_backend(options.backend, bo);
  ckpt_ = model::Checkpoint::open(options.model_dir);
  model::ModelOptions mo;
  mo.numerics = model::parse_numerics(options.numerics);
  if (layout.world() != world_size) {
    // Let validate() phrase it, naming the layout's keys.
    parallel::validate(layout, model::model_dims(ckpt_->config(), *backend_, world_size,
                                                 mo.numerics == model::Numerics::kOfficial));
  }
  if (mpi_) {
    // Each group's Comm for this backend: MPI on CPU ranks, NCCL (or the staged Comm when ranks
    // share a GPU) on CUDA ranks, ordered on the backend's stream.
    cluster::GroupOptions go;
    go.timeout_s = options.timeout_s;
    go.device = backend_->device_index();
    go.stream = backend_->stream_handle();
    groups_ = std::make_unique<cluster::ProcessGroups>(cluster::make_groups(parallel::group_shape(layout), go));
    mo.parallel = model::make_parallel_context(layout, ckpt_->config(), *backend_, *groups_,
                                               mo.numerics == model::Numerics::kOfficial);
    if (world_rank_ == 0) {
      LOG(INFO) << "layout: tp " << layout.tp << ", sp " << layout.sp << " (blocks of " << layout.sp_block
                << " entries), ep " << layout.ep << ", dp " << layout.dp << " over " << world_size << " ranks";
    }
  }
  // Rank 0 logs a line per loaded unit (shard) with the slowest rank (launch/load_progress.h); the
  // ranks meet once per unit on their own communicator, lifted after the load. A checkpoint under
  // 1 GiB loads in moments: its lines go to the verbose log only (-v 1), keeping errors one line.
  std::unique_ptr<cluster::Comm> load_comm;
  if (mpi_ && world_size > 1) load_comm = cluster::make_world_comm(cluster::CommOptions{"load", 1800});
  uint64_t ckpt_bytes = 0;
  for (const auto& [name, t] : ckpt_->tensors()) ckpt_bytes += t.bytes;
  const bool large = ckpt_bytes >= (uint64_t(1) << 30);
  mo.load_observer = load_progress_reporter(load_comm.get(), [large](const std::string& line) {
    if (large) {
      LOG(INFO) << line;
    } else {
      VLOG(1) << line;
    }
  });
  model_ = model::Model::load(*ckpt_, mo, *backend_);
  load_comm.reset();
  if (options.mtp) mtp_ = model::Mtp::load(*ckpt_, *model_);  // throws on every rank without the block
  std::unique_ptr<cluster::Comm> plan_comm;
  if (mpi_) {
    // Every rank has loaded its shards (loading may take long, each rank at its own pace).
    cluster::CommOptions lo;
    lo.name = "load";
    lo.timeout_s = options.load_timeout_s;
    cluster::make_world_comm(lo)->barrier();
    cluster::CommOptions po;
    po.name = "plan";
    po.timeout_s = options.timeout_s;
    plan_comm = cluster::make_world_comm(po);
  }
  runtime::LinkOptions link_options;
  link_options.plan_timeout_s = options.timeout_s;
  link_ = std::make_unique<runtime::PlanLink>(std::move(plan_comm), link_options);
  executor_ = std::make_unique<runtime::Executor>(*model_, mtp_.get());
  if (link_->leader()) {
    leader_ = std::make_unique<runtime::Leader>(*executor_, *link_);
  } else {
    follower_ = std::make_unique<runtime::Follower>(*executor_, *link_);
  }
}

runtime::Leader& ModelRun::lead() {
  CHECK(leader_) << "world rank " << world_rank_ << " follows; it does not lead";
  return *leader_;
}

int64_t ModelRun::follow() {
  CHECK(follower_) << "world rank 0 leads; it does not follow";
  return follower_->run();
}

int64_t ModelRun::num_steps() const { return leader_ ? leader_->steps() : follower_ ? follower_->steps() : 0; }

void ModelRun::release() {
  leader_.reset();
  follower_.reset();
  executor_.reset();
  link_.reset();
  mtp_.reset();
  model_.reset();
  groups_.reset();
}

std::string ModelRun::byte_report() {
  reported_ = true;
  const model::ParallelContext& par = model_->parallel();
  const double steps = double(std::max<int64_t>(num_steps(), 1));
  auto bytes = [](const cluster::Comm* c) { return c ? double(c->counters().total_bytes()) : 0.0; };
  // Per step: plan broadcast, TP, SP, EP (the groups may coincide; each is counted as its role).
  std::vector<double> mine = {double(num_steps()), bytes(link_->comm()) / steps,
                              par.layout.tp > 1 ? bytes(par.tp) / steps : 0.0,
                              par.layout.sp > 1 ? bytes(par.sp) / steps : 0.0,
                              par.layout.ep > 1 ? bytes(par.ep) / steps : 0.0};
  LOG(INFO) << "bytes sent per step (" << mine[0] << " steps): plan " << mine[1] << ", tp " << mine[2] << ", sp "
            << mine[3] << ", ep " << mine[4];
  cluster::Comm* plan_comm = link_->comm();
  const int n = plan_comm ? plan_comm->size() : 1;
  std::vector<double> all(mine.size() * size_t(n));
  if (plan_comm) {
    plan_comm->all_gather(mine.data(), all.data(), int64_t(mine.size()), DType::kF64);
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
  if (leader_ && leader_->link_failed()) {
    // A follower no longer answers: no collective with it can complete; the job ends here.
    cluster::abort_world("a follower rank stopped answering the plan link", 2);
  }
  if (leader_) leader_->stop();
  if (mpi_ && !reported_) {
    const std::string report = byte_report();
    if (!report.empty()) std::fprintf(stderr, "%s", report.c_str());
  }
  release();
  if (mpi_) cluster::finalize_world();
}

}  // namespace v4rt::launch
