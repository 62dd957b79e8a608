// SPDX-License-Identifier: MIT
// The scheduler's prefix-cache options from the runtime YAML (server.prefix_cache and the
// prefix_cache section), shared by serve and batch.
#pragma once

#include "launch/runtime_config.h"
#include "runtime/scheduler.h"

namespace v4rt::launch {

inline runtime::PrefixCacheOptions prefix_cache_options(const RuntimeConfig& rc) {
  runtime::PrefixCacheOptions o;
  o.enabled = rc.server.prefix_cache;
  o.block_tokens = rc.prefix_cache.block_tokens;
  o.every_n = rc.prefix_cache.every_n;
  o.budget_fraction = rc.prefix_cache.budget_fraction;
  return o;
}

}  // namespace v4rt::launch
