// SPDX-License-Identifier: MIT
// Weight-load progress on rank 0: after each unit of the load (model::LoadProgress: embed, head,
// every layer; one shard file each in the release layout) every rank shares its elapsed time and
// bytes over a communicator, and rank 0 prints one line: the unit and its shard, the bytes, GB/s,
// the share of the checkpoint done, the ETA and the slowest rank so far. Loading V4-Pro (805 GB)
// takes minutes; this says how far it is and which rank holds it back.
#pragma once

#include <functional>
#include <span>
#include <string>
#include <vector>

#include "cluster/comm.h"
#include "model/weights.h"

namespace v4rt::launch {

// One rank's figures at the end of a unit (all-gathered as three doubles).
struct RankLoad {
  double elapsed_s = 0;   // since the rank's load started
  double bytes = 0;       // checkpoint bytes the rank loaded so far
  double unit_bytes = 0;  // of them, in this unit
};

// The progress line of `p` (this rank's unit) given every rank's figures (`ranks[r]` of rank r;
// empty on a one-rank job), e.g.
// "load [12/45] layers.9 (model-00011-of-00046.safetensors): 3.41 GB, 41.20 GB in 17.8 s = 2.31 GB/s,
//  27% of the checkpoint, ETA 48 s; slowest rank 5 (2.10 GB/s, 1.6 s behind the fastest)"; the bytes
// are those of all ranks together, the time and the ETA those of the slowest rank.
std::string format_load_progress(const model::LoadProgress& p, std::span<const RankLoad> ranks);

// The observer ModelOptions::load_observer takes: every rank must install it (it runs an
// all-gather over `comm` per unit, when comm is not null and has more than one rank); rank 0 of
// `comm` (or the only rank) hands each line to `sink`. `comm` must outlive the load.
model::LoadObserver load_progress_reporter(cluster::Comm* comm, std::function<void(const std::string&)> sink);

}  // namespace v4rt::launch
