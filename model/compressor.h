// SPDX-License-Identifier: MIT
// The compressors of the attention sublayer (spec §5.4): the CSA (ratio 4, overlapping blocks) and
// HCA (ratio 128) compressors and the indexer's, which append each chunk's projections to their
// token buffers and pool every completed block into a new compressed entry of the sequence's table.
#pragma once

#include <span>

#include "model/blocks.h"

namespace v4rt::model::attn {

// Compressors (§5.4) of every sequence, the indexer's then the main one: several sequences
// project once over all rows and append views (one batch of copies for all of them); a single
// sequence projects straight into its state's token buffers. Then every sequence with a completed
// block pools it, and the pooled rows of all of them are dropped in one batch. True when some
// sequence now has indexer keys to score.
bool compressors_update(const BlockContext& ctx, const LayerWeights& w, std::span<const AttentionSegment> segs,
                        const TensorView& a);

}  // namespace v4rt::model::attn
