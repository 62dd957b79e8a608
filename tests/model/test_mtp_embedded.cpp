// SPDX-License-Identifier: MIT
// MTP on the embedded default model. The embedded model (`v4rt init-model --preset tiny`, seed 1:
// real vocabulary, random weights) has no MTP block, so the MTP block is refused with an error
// naming the reason. `init-model --preset tiny --mtp` writes the same main-model tensors (every
// tensor is seeded by its own name) plus `mtp.0.*`: greedy speculative decoding on that checkpoint
// equals plain greedy decoding on the embedded model itself, token for token, at depth 1, 2, 3.
#include <gtest/gtest.h>

#include <cstdio>

#include "model/speculative.h"
#include "tests/model/test_mtp_util.h"

namespace v4rt::model {
namespace {

TEST(MtpEmbedded, RefusedOnTheEmbeddedModelAndExactWithItsMtpVariant) {
  testing::LoadedModel embedded(preset_config("tiny", /*mtp=*/false), /*seed=*/1);
  testing::expect_error_naming([&] { Mtp::load(*embedded.ckpt, *embedded.model); },
                               {"no MTP block", "num_nextn_predict_layers = 0"});
  testing::LoadedModel with_mtp(preset_config("tiny", /*mtp=*/true), /*seed=*/1);
  ASSERT_TRUE(with_mtp.mtp);
  const int64_t vocab = embedded.model->config().vocab_size;
  ASSERT_EQ(vocab, 129280);
  constexpr int kTokens = 32;
  for (uint32_t p = 0; p < 2; ++p) {
    const std::vector<int32_t> prompt = testing::test_prompt(vocab, 5 + int(p) * 6, 40 + p);
    const std::vector<int32_t> want = testing::plain_greedy(*embedded.model, prompt, kTokens);
    for (int depth : {1, 2, 3}) {
      SpeculativeOptions so;
      so.depth = depth;
      SpeculativeDecoder dec(*with_mtp.model, *with_mtp.mtp, so);
      EXPECT_EQ(dec.generate(prompt, kTokens), want) << "prompt " << p << ", depth " << depth;
      std::printf("prompt %u depth %d: acceptance rate %.3f, tokens per verify step %.3f\n", p, depth,
                  dec.stats().acceptance_rate(), dec.stats().tokens_per_step());
    }
  }
}

}  // namespace
}  // namespace v4rt::model
