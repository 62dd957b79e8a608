// SPDX-License-Identifier: MIT
// `v4rt bench moe-comm`: the expert-parallel exchange of one MoE layer (parallel/ep.h) over the EP
// group of all ranks, at several token counts per rank, beside a raw all-to-allv of the same bytes
// timed in the same run on the same Comm. Dims from a preset (flash: hidden 4096, top-6 of 256
// experts). Run under mpirun: CPU ranks use MpiComm, CUDA ranks NcclComm (StagedComm when ranks
// share a GPU), exactly as the model does (cluster::make_groups).
//
// Per token count T, every iteration is: route (host, deterministic), dispatch (counts all-to-all,
// payload all-to-allv; FP8 + scales with --fp8), the experts replaced by a constant 1.0 output,
// combine (all-to-allv back, per-token sum in ascending expert id). The combined output of token t
// must equal its number of routed experts (checked once per T, on every rank). Times are the
// slowest rank's mean over --iters; "raw" sends the payload bytes of dispatch, then of combine,
// with two all_to_allv calls and nothing else.
#include <CLI/CLI.hpp>
#include <glog/logging.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <sstream>
#include <vector>

#include "cluster/groups.h"
#include "cluster/world.h"
#include "common/check.h"
#include "kernels/backend_factory.h"
#include "launch/backend_option.h"
#include "launch/bench/bench.h"
#include "model/presets.h"
#include "parallel/ep.h"

namespace v4rt::launch {
namespace {

struct MoeCommArgs {
  std::string preset = "flash";
  std::string tokens = "1,8,64,256";
  int iters = 20;
  int warmup = 3;
  bool fp8 = false;
  double timeout_s = 60;
  std::string backend = "cpu";
  int device = 0;
};

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

std::vector<int64_t> parse_list(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    int64_t v = -1;
    try {
      v = std::stoll(item);
    } catch (const std::exception&) {
    }
    V4RT_REQUIRE(v >= 0, "--tokens: '" << item << "' is not a token count");
    out.push_back(v);
  }
  V4RT_REQUIRE(!out.empty(), "--tokens: no token counts");
  return out;
}

// Distinct experts per token from an LCG of (rank, token); every seventh token leaves its last
// slot empty (-1), as a router may.
void route(int rank, int64_t num_tokens, int num_experts, int topk, std::vector<int32_t>* ids, std::vector<float>* w) {
  ids->assign(size_t(num_tokens * topk), -1);
  w->assign(size_t(num_tokens * topk), 0.f);
  for (int64_t t = 0; t < num_tokens; ++t) {
    uint32_t s = uint32_t(rank * 1000003 + t * 7919 + 17);
    int32_t* row = ids->data() + t * topk;
    for (int n = 0; n < topk;) {
      s = s * 1664525u + 1013904223u;
      const int32_t e = int32_t((s >> 8) % uint32_t(num_experts));
      if (std::find(row, row + n, e) == row + n) row[n++] = e;
    }
    if (t % 7 == 6) row[topk - 1] = -1;
    for (int k = 0; k < topk; ++k) (*w)[size_t(t * topk + k)] = 1.f / float(topk);
  }
}

double max_over_ranks(cluster::Comm& host, double v) {
  host.all_reduce(&v, &v, 1, DType::kF64, cluster::ReduceOp::kMax);
  return v;
}

void run_moe_comm(const MoeCommArgs& args) {
  const cluster::WorldInfo& world = cluster::init_world(nullptr, nullptr);
  const model::ModelConfig cfg = model::preset_config(args.preset);
  const std::vector<int64_t> token_counts = parse_list(args.tokens);
  V4RT_REQUIRE(args.iters > 0 && args.warmup >= 0, "--iters must be > 0 and --warmup >= 0");
  V4RT_REQUIRE(cfg.n_routed_experts % world.size == 0,
               "preset " << args.preset << ": " << cfg.n_routed_experts << " experts cannot be split over "
                         << world.size << " ranks");
  int device = args.device + world.local_rank;
  const int gpus = args.backend == "cuda" ? kernels::cuda_device_count() : 0;
  if (gpus > 0) device %= gpus;
  std::unique_ptr<kernels::Backend> be = make_selected_backend(args.backend, device);

  cluster::GroupOptions go;
  go.timeout_s = args.timeout_s;
  go.device = be->device_index();
  go.stream = be->stream_handle();
  cluster::ProcessGroups groups =
      cluster::make_groups({.tp = 1, .sp = 1, .ep = world.size, .dp = world.size}, go);
  cluster::Comm& comm = groups.get(cluster::GroupKind::kEP);
  cluster::Comm& host = groups.get_host(cluster::GroupKind::kWorld);

  const int64_t hidden = cfg.hidden_size;
  const int topk = cfg.num_experts_per_tok;
  parallel::EpConfig ec;
  ec.num_experts = cfg.n_routed_experts;
  ec.hidden = hidden;
  ec.topk = topk;
  ec.dtype = be->act_dtype();
  ec.fp8_wire = args.fp8;
  parallel::ExpertParallel ep(comm, ec, be->stream_handle());
  const int epr = ep.experts_per_rank();
  const int64_t combine_row = hidden * 4;  // F32 expert outputs, as the model sends them

  if (world.rank == 0) {
    std::printf("moe-comm: %s (hidden %lld, top-%d of %d experts), %d ranks, %s Comm, %s backend, dispatch %s, "
                "combine f32; %d iterations after %d warm-up\n",
                args.preset.c_str(), (long long)hidden, topk, cfg.n_routed_experts, world.size,
                std::string(cluster::comm_backend_name(groups.backend(cluster::GroupKind::kEP))).c_str(),
                be->name().c_str(), args.fp8 ? "fp8+scales" : dtype_name(ec.dtype).data(), args.iters, args.warmup);
    std::printf("%8s %12s %12s %12s %10s %14s %10s %8s\n", "tokens", "dispatch_ms", "combine_ms", "d+c_ms", "raw_ms",
                "bytes/rank", "d+c/raw", "check");
  }

  for (const int64_t T : token_counts) {
    std::vector<int32_t> ids;
    std::vector<float> w;
    route(world.rank, T, cfg.n_routed_experts, topk, &ids, &w);
    // Activations: small integers per 128-block (exact in bf16 and in e4m3 with the block scale).
    std::vector<float> xf(size_t(T * hidden));
    for (int64_t i = 0; i < T * hidden; ++i) xf[size_t(i)] = float(int((i * 7 + world.rank) % 17) - 8);
    Buffer x(std::max<size_t>(1, size_t(T * hidden) * dtype_size(ec.dtype)), be->device());
    if (ec.dtype == DType::kBF16) {
      std::vector<uint16_t> xb(xf.size());
      for (size_t i = 0; i < xf.size(); ++i) xb[i] = f32_to_bf16(xf[i]);
      if (!xb.empty()) be->copy_to_device(x.data(), xb.data(), xb.size() * 2);
    } else if (!xf.empty()) {
      be->copy_to_device(x.data(), xf.data(), xf.size() * 4);
    }
    Buffer out(std::max<size_t>(1, size_t(T * hidden) * 4), be->device());

    // Per-peer bytes of the same exchange for the raw all-to-allv (rows_from via one host exchange).
    std::vector<int64_t> rows_to(size_t(world.size), 0), rows_from(size_t(world.size), 0);
    for (int32_t e : ids) {
      if (e >= 0) rows_to[size_t(e / epr)]++;
    }
    host.all_to_all(rows_to.data(), rows_from.data(), 1, DType::kI64);
    auto displs = [](const std::vector<int64_t>& c) {
      std::vector<int64_t> d(c.size(), 0);
      for (size_t i = 1; i < c.size(); ++i) d[i] = d[i - 1] + c[i - 1];
      return d;
    };
    auto times = [](std::vector<int64_t> c, int64_t f) {
      for (int64_t& v : c) v *= f;
      return c;
    };
    const int64_t drow = ep.dispatch_row_bytes();
    const std::vector<int64_t> ds = times(rows_to, drow), dr = times(rows_from, drow);
    const std::vector<int64_t> cs = times(rows_from, combine_row), cr = times(rows_to, combine_row);
    int64_t send_rows = 0, recv_rows = 0;
    for (int p = 0; p < world.size; ++p) {
      send_rows += rows_to[size_t(p)];
      recv_rows += rows_from[size_t(p)];
    }
    // raw_a: dispatch send, combine receive (rows this rank sends); raw_b: the other way round.
    const int64_t widest = std::max(drow, combine_row);
    Buffer raw_a(std::max<size_t>(1, size_t(send_rows * widest)), be->device());
    Buffer raw_b(std::max<size_t>(1, size_t(recv_rows * widest)), be->device());
    Buffer expert_out(std::max<size_t>(1, size_t(recv_rows * combine_row)), be->device());
    if (recv_rows > 0) be->fill(TensorView(expert_out.data(), DType::kF32, {recv_rows, hidden}, be->device()), 1.0f);
    be->synchronize();

    double t_dispatch = 0, t_combine = 0, t_raw = 0;
    for (int it = 0; it < args.warmup + args.iters; ++it) {
      const bool timed = it >= args.warmup;
      host.barrier();
      const double t0 = now_s();
      parallel::DispatchLayout layout;
      parallel::DispatchedBuffers rows = ep.dispatch_buffers(x.data(), ids.data(), w.data(), T, &layout);
      ep.wait_dispatch();
      be->synchronize();
      const double t1 = now_s();
      V4RT_REQUIRE(rows.num_rows == recv_rows, "dispatch delivered " << rows.num_rows << " rows, expected "
                                                                     << recv_rows);
      ep.combine_buffers(expert_out.data(), DType::kF32, layout, ids.data(), w.data(), false,
                         static_cast<float*>(out.data()));
      be->synchronize();
      const double t2 = now_s();
      host.barrier();
      const double t3 = now_s();
      comm.all_to_allv(raw_a.data(), ds, displs(ds), raw_b.data(), dr, displs(dr), DType::kU8);
      comm.all_to_allv(raw_b.data(), cs, displs(cs), raw_a.data(), cr, displs(cr), DType::kU8);
      comm.synchronize();
      const double t4 = now_s();
      if (timed) {
        t_dispatch += t1 - t0;
        t_combine += t2 - t1;
        t_raw += t4 - t3;
      }
    }
    // Check: every token's combined row equals its number of routed experts.
    std::vector<float> got(size_t(T * hidden));
    if (!got.empty()) be->copy_to_host(got.data(), out.data(), got.size() * 4);
    int bad = 0;
    for (int64_t t = 0; t < T && !bad; ++t) {
      float want = 0.f;
      for (int k = 0; k < topk; ++k) want += ids[size_t(t * topk + k)] >= 0 ? 1.f : 0.f;
      for (int64_t c = 0; c < hidden; ++c) bad += got[size_t(t * hidden + c)] != want ? 1 : 0;
    }
    int bad_any = bad;
    host.all_reduce(&bad_any, &bad_any, 1, DType::kI32, cluster::ReduceOp::kMax);
    const double n = double(args.iters);
    const double d_ms = max_over_ranks(host, t_dispatch / n) * 1e3, c_ms = max_over_ranks(host, t_combine / n) * 1e3;
    const double raw_ms = max_over_ranks(host, t_raw / n) * 1e3;
    double bytes = 0;
    for (int p = 0; p < world.size; ++p) {
      if (p != world.rank) bytes += double(ds[size_t(p)] + cs[size_t(p)]) + double(epr) * 8;
    }
    bytes = max_over_ranks(host, bytes);
    if (world.rank == 0) {
      std::printf("%8lld %12.3f %12.3f %12.3f %10.3f %14.0f %10.2f %8s\n", (long long)T, d_ms, c_ms, d_ms + c_ms,
                  raw_ms, bytes, raw_ms > 0 ? (d_ms + c_ms) / raw_ms : 0.0, bad_any ? "FAILED" : "ok");
    }
    V4RT_REQUIRE(bad_any == 0, "moe-comm: the combined output differs from the expected sums at " << T
                                                                                                    << " tokens per rank");
  }
  cluster::finalize_world();
}

}  // namespace

void register_bench_moe_comm(CLI::App& bench) {
  static MoeCommArgs args;
  auto* s = bench.add_subcommand("moe-comm", "EP dispatch + combine time vs a raw all-to-all of the same bytes (mpirun)");
  s->add_option("--preset", args.preset, "Model dims: tiny | flash | pro")
      ->check(CLI::IsMember({"tiny", "flash", "pro"}))->capture_default_str();
  s->add_option("--tokens", args.tokens, "Tokens per rank, comma-separated")->capture_default_str();
  s->add_option("--iters", args.iters, "Timed iterations per token count")->capture_default_str();
  s->add_option("--warmup", args.warmup, "Untimed iterations first")->capture_default_str();
  s->add_flag("--fp8", args.fp8, "Dispatch e4m3 + per-128 scales (the official numerics' wire format)");
  s->add_option("--timeout", args.timeout_s, "Deadline of every collective, seconds")->capture_default_str();
  add_backend_option(s, &args.backend, &args.device);
  s->callback([] { run_moe_comm(args); });
}

}  // namespace v4rt::launch
