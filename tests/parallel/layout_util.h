// SPDX-License-Identifier: MIT
// The layouts the sharded-model tests run under: tp/sp/ep/dp as given, with SP blocks of 4
// compressed entries so the tiny models' short contexts already spread over the SP ranks.
#pragma once

#include "parallel/layout.h"

namespace v4rt::testing {

inline parallel::Layout test_layout(int tp, int sp, int ep, int dp) {
  parallel::Layout l;
  l.tp = tp;
  l.sp = sp;
  l.ep = ep;
  l.dp = dp;
  l.sp_block = 4;
  return l;
}

}  // namespace v4rt::testing
