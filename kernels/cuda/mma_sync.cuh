// SPDX-License-Identifier: MIT
// Warp-level tensor-core building blocks of the mma.sync kernels: the bf16 m16n8k16 MMA and the
// ldmatrix loads of its fragments from shared memory. Included only by .cu files of this folder.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_math.cuh"

namespace v4rt::kernels::cuda {

// d += A B: A the m16 x k16 row-major fragment a[0..3], B the k16 x n8 column fragment (b0, b1);
// bf16 inputs, fp32 accumulation.
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 b16 matrices from shared memory: lanes 8i..8i+7 give the row addresses of matrix i, and
// r[i] of thread (gid, tig) is word tig of row gid of matrix i. `s`: a shared-memory address.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t s) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s)
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) { ldmatrix_x4(r, smem_u32(row)); }

// The same four matrices transposed: r[i] of thread (gid, tig) holds column gid, rows 2 tig and
// 2 tig + 1 of matrix i (the B fragments of a [k][n] row-major tile).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t s) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s)
               : "memory");
}

// Row address of lane `lane` for the A fragment (m16 x k16) of a row-major tile at `tile` (row
// stride ld elements), rows [0, 16), columns [0, 16): matrices (rows 0-7, k 0-7), (8-15, 0-7),
// (0-7, 8-15), (8-15, 8-15), as a[0..3] of mma_bf16_16816.
__device__ __forceinline__ const uint16_t* frag_a_row(const uint16_t* tile, int ld, int lane) {
  return tile + ((lane & 7) + ((lane >> 3) & 1) * 8) * ld + (lane >> 4) * 8;
}

// Row address of lane `lane` for the B fragments of two n8 tiles from an [n][k] row-major tile
// (n rows [0, 16), k columns [0, 16)): r[0], r[1] the (b0, b1) of n 0-7, r[2], r[3] of n 8-15.
__device__ __forceinline__ const uint16_t* frag_b_rows(const uint16_t* tile, int ld, int lane) {
  return tile + ((lane & 7) + (lane >> 4) * 8) * ld + ((lane >> 3) & 1) * 8;
}

}  // namespace v4rt::kernels::cuda
