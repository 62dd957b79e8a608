// SPDX-License-Identifier: MIT
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011; the
// constants of Random123), usable from host and device code alike, and the sampling uniform built
// on it. A counter-based generator: the draw for (seed, position, draw index) is a pure function of
// those three numbers, so a request's draws never depend on the batch or row it is sampled in, and
// the CPU and CUDA `Backend::sample` see the same uniform bit for bit.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define V4RT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define V4RT_HOST_DEVICE inline
#endif

namespace v4rt::kernels {

struct Philox4x32 {
  uint32_t v[4];
};

// 10 rounds of Philox4x32 on counter c under key k.
V4RT_HOST_DEVICE Philox4x32 philox4x32_10(Philox4x32 c, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // multipliers
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // Weyl key increments
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t(kM0) * c.v[0];
    const uint64_t p1 = uint64_t(kM1) * c.v[2];
    const uint32_t hi0 = uint32_t(p0 >> 32), lo0 = uint32_t(p0);
    const uint32_t hi1 = uint32_t(p1 >> 32), lo1 = uint32_t(p1);
    c = Philox4x32{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
    k0 += kW0;
    k1 += kW1;
  }
  return c;
}

// The sampling uniform in [0, 1) of draw `draw` at sequence position `position` of the stream
// keyed by `seed`: key = (seed low, seed high), counter = (position low, position high, draw, 0);
// the top 53 bits of the first two output words (word 1 high) as a double.
V4RT_HOST_DEVICE double sample_uniform(uint64_t seed, int64_t position, uint32_t draw) {
  const uint64_t pos = uint64_t(position);
  const Philox4x32 r = philox4x32_10(Philox4x32{{uint32_t(pos), uint32_t(pos >> 32), draw, 0u}}, uint32_t(seed),
                                     uint32_t(seed >> 32));
  const uint64_t bits = (uint64_t(r.v[1]) << 32) | r.v[0];
  return double(bits >> 11) * (1.0 / 9007199254740992.0);
}

}  // namespace v4rt::kernels
