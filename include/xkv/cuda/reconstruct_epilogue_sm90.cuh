// Epilogue of the Hopper (sm_90a) reconstruct kernels that hold wgmma accumulators in registers:
// RoPE in fp32 on the accumulators, then stores through a per-warp staging buffer.
//
// Accumulator layout (wgmma m64nNk16, fp32): a thread holds rows lane/4 and lane/4 + 8 of its
// warp's 16, and in each block of 8 columns the two columns 2 (lane % 4) and 2 (lane % 4) + 1;
// element i is row half (i / 2) % 2, column block i / 4, column i % 2 of the pair.
#pragma once

#include <cuda.h>

#include "xkv/cuda/reconstruct_kernels_sm90.cuh"

namespace xkv::cuda::detail {

/// Bytes per row of a warp's output staging buffer (16 rows): 128 columns of a 16-bit type.
inline constexpr int kEpilogueStagingRowBytes = 256;

/// Pair index of the thread's factor `f` (0..HEAD_DIM/8-1) for lane quad position q.
template <RopeMode MODE>
__device__ __forceinline__ int rope_pair_of(int f, int q) {
  if constexpr (MODE == RopeMode::HalfSplit) return 8 * (f / 2) + 2 * q + f % 2;  // block f/2, column 2q + f%2
  return 4 * f + q;                                                                // interleaved: block f
}

/// Rotates pair `f` (of the thread's HEAD_DIM / 8) in row `half` of every head by (c, s).
template <int HEAD_DIM, RopeMode MODE, int COLS>
__device__ __forceinline__ void rotate_pair(float (&acc)[COLS / 2], int f, int half, float c, float s) {
  constexpr int kBlocksPerHead = HEAD_DIM / 8, kHeads = COLS / HEAD_DIM;
#pragma unroll
  for (int h = 0; h < kHeads; ++h) {
    int i1, i2;
    if constexpr (MODE == RopeMode::HalfSplit) {  // pair (i, i + d/2): blocks f/2 and f/2 + d/16
      i1 = (h * kBlocksPerHead + f / 2) * 4 + half * 2 + f % 2;
      i2 = i1 + kBlocksPerHead / 2 * 4;
    } else {  // pair (2i, 2i + 1) in block f
      i1 = (h * kBlocksPerHead + f) * 4 + half * 2;
      i2 = i1 + 1;
    }
    const float x = acc[i1], y = acc[i2];
    acc[i1] = x * c - y * s;
    acc[i2] = x * s + y * c;
  }
}

/// Positions below 2^24 are exact in fp32, and with at most half a turn per position the
/// reduction below stays exact.
inline constexpr std::int64_t kFp32RopePositions = std::int64_t{1} << 24;
inline constexpr float kFp32RopeMaxTurns = 0.5f;

/// The frequency `inv_freq` (radians per position) in turns per position as (hi, lo) floats for
/// rope_angle_fp32, or (2, 0) if it is negative or exceeds kFp32RopeMaxTurns (then the fp64
/// reduction applies). Standard RoPE frequencies are at most 1 / (2 pi) turns.
__device__ __forceinline__ float2 rope_turns_of(double inv_freq) {
  const double g = inv_freq * 0.15915494309189533577;
  const float hi = static_cast<float>(g);
  return g >= 0.0 && g <= kFp32RopeMaxTurns ? make_float2(hi, static_cast<float>(g - hi)) : make_float2(2.f, 0.f);
}

/// cos/sin at `position` (exact in fp32, below kFp32RopePositions) of a pair turning `turns`
/// (hi + lo, rope_turns_of) per position: the angle in turns is split into the exact product
/// hi * position (rounded part + fma residual), whose whole turns drop out exactly, plus
/// lo * position; the fractional turn is then accurate to ~1e-7, as with the fp64 reduction of
/// rope_angle, with fp32 instructions only (the fp64 ones dominated the epilogue on an H200).
/// The whole turns are rounded off by adding and subtracting 2^23 (exact for 0 <= x < 2^23,
/// which the two bounds guarantee), on the FMA pipe: rintf's FRND shares the slow pipe with the
/// two MUFU operations, and that pipe bounds the gathered kernel's factor evaluation.
__device__ __forceinline__ void rope_angle_fp32(float2 turns, float position, float& s, float& c) {
  const float x = position * turns.x;
  const float residual = fmaf(position, turns.x, -x);
  const float whole = __fsub_rn(__fadd_rn(x, 8388608.f), 8388608.f);
  const float t = (x - whole) + fmaf(position, turns.y, residual);
  __sincosf(t * 6.28318530717958648f, &s, &c);
}

/// Rotates row `half` of a warp's accumulators (COLS columns = COLS / HEAD_DIM heads) at
/// `position`: each cos/sin pair is evaluated once and applied to every head, from the caller's
/// table (TABLE), in fp32 from `turns` (fill_rope_turns; when given and the position is exact in
/// fp32) or in fp64 from `inv_freq`. False if a position is outside the caller's table.
template <int HEAD_DIM, RopeMode MODE, bool TABLE, int COLS>
__device__ __forceinline__ bool rope_row(const ReconstructArgs& p, const double* inv_freq, const float2* turns,
                                         std::int64_t position, int q, int half, float (&acc)[COLS / 2]) {
  if constexpr (!TABLE) {
    if (turns != nullptr && position >= 0 && position < kFp32RopePositions) {  // one branch, outside the loop
      const float position_fp32 = static_cast<float>(position);
#pragma unroll
      for (int f = 0; f < HEAD_DIM / 8; ++f) {
        if (MODE == RopeMode::Interleaved && 8 * f >= p.rotary_dim) break;  // partial rotary: the rest stays
        float s, c;
        rope_angle_fp32(turns[rope_pair_of<MODE>(f, q)], position_fp32, s, c);
        rotate_pair<HEAD_DIM, MODE, COLS>(acc, f, half, c, s);
      }
      return true;
    }
  }
  bool ok = true;
#pragma unroll
  for (int f = 0; f < HEAD_DIM / 8; ++f) {
    if (MODE == RopeMode::Interleaved && 8 * f >= p.rotary_dim) break;
    float s = 0.f, c = 1.f;
    ok &= rope_cos_sin<TABLE>(p, inv_freq, position, rope_pair_of<MODE>(f, q), s, c);
    rotate_pair<HEAD_DIM, MODE, COLS>(acc, f, half, c, s);
  }
  return ok;
}

/// (cos, sin)(delta * inv_freq[pair]) for every pair, in fp64: with consecutive positions an
/// epilogue steps from one row's factors to those of a row `delta` positions on by one complex
/// product instead of another sin/cos (the MUFU and fp64 work dominate the epilogue otherwise).
__device__ __forceinline__ void fill_rope_steps(const double* inv_freq, int pairs, int delta, float2* steps) {
  for (int i = threadIdx.x; i < pairs; i += blockDim.x) {
    double s, c;
    sincos(delta * inv_freq[i], &s, &c);
    steps[i] = make_float2(static_cast<float>(c), static_cast<float>(s));
  }
}

/// (c, s) rotated by `step` = (cos, sin) of the angle step.
__device__ __forceinline__ float2 rope_advance(float c, float s, float2 step) {
  return make_float2(c * step.x - s * step.y, s * step.x + c * step.y);
}

/// The frequency of every pair in turns per position (rope_turns_of) for rope_angle_fp32; false
/// (from every thread) if a frequency is out of its range.
__device__ __forceinline__ bool fill_rope_turns(const double* inv_freq, int pairs, float2* turns) {
  bool ok = true;
  for (int i = threadIdx.x; i < pairs; i += blockDim.x) {
    turns[i] = rope_turns_of(inv_freq[i]);
    ok &= turns[i].x <= kFp32RopeMaxTurns;
  }
  return __syncthreads_and(ok);
}

/// (cos, sin) of each of the thread's HEAD_DIM / 8 pairs (lane & 3 picks which) at `position`,
/// the angle reduced in fp64 (rope_angle): where the carried factors below are anchored.
template <int HEAD_DIM, RopeMode MODE>
__device__ __forceinline__ void rope_anchor_factors(const ReconstructArgs& p, std::int64_t position,
                                                    float2 (&factors)[HEAD_DIM / 8]) {
  const int q = threadIdx.x & 3;
#pragma unroll
  for (int f = 0; f < HEAD_DIM / 8; ++f) {
    if (MODE == RopeMode::Interleaved && 8 * f >= p.rotary_dim) break;  // partial rotary: the rest stays
    float s, c;
    rope_angle(p.inv_freq[rope_pair_of<MODE>(f, q)], position, s, c);
    factors[f] = make_float2(c, s);
  }
}

/// Moves the factors on by the per-pair angle step `step` (fill_rope_steps): one complex product
/// each instead of an angle reduction and two MUFU evaluations.
template <int HEAD_DIM, RopeMode MODE>
__device__ __forceinline__ void rope_advance_factors(const ReconstructArgs& p, const float2* step,
                                                     float2 (&factors)[HEAD_DIM / 8]) {
  const int q = threadIdx.x & 3;
#pragma unroll
  for (int f = 0; f < HEAD_DIM / 8; ++f) {
    if (MODE == RopeMode::Interleaved && 8 * f >= p.rotary_dim) break;
    factors[f] = rope_advance(factors[f].x, factors[f].y, step[rope_pair_of<MODE>(f, q)]);
  }
}

/// RoPE of a warp's 16 rows at consecutive positions (a dense range at a position offset) in one
/// of the ping-pong kernel's two accumulator blocks: rows lane/4 and lane/4 + 8 of `acc`; `factors`
/// are (cos, sin) of the thread's first row's pairs in the item, `offset` (or null) the step to
/// this block's first row (64 positions for the bottom block), `step8` the step to the next.
template <int HEAD_DIM, RopeMode MODE, int COLS>
__device__ __forceinline__ void rope_consecutive_rows(const ReconstructArgs& p, const float2 (&factors)[HEAD_DIM / 8],
                                                      const float2* offset, const float2* step8,
                                                      float (&acc)[COLS / 2]) {
  const int q = threadIdx.x & 3;
#pragma unroll
  for (int f = 0; f < HEAD_DIM / 8; ++f) {
    if (MODE == RopeMode::Interleaved && 8 * f >= p.rotary_dim) break;  // partial rotary: the rest stays
    const int pair = rope_pair_of<MODE>(f, q);
    const float2 first = offset != nullptr ? rope_advance(factors[f].x, factors[f].y, offset[pair]) : factors[f];
    const float2 second = rope_advance(first.x, first.y, step8[pair]);
    rotate_pair<HEAD_DIM, MODE, COLS>(acc, f, 0, first.x, first.y);
    rotate_pair<HEAD_DIM, MODE, COLS>(acc, f, 1, second.x, second.y);
  }
}

template <int COLS>
__device__ __forceinline__ void poison_row(float (&acc)[COLS / 2], int half) {
#pragma unroll
  for (int j = 0; j < COLS / 8; ++j) acc[j * 4 + half * 2] = acc[j * 4 + half * 2 + 1] = __int_as_float(0x7fc00000);
}

/// Writes columns [128 round, 128 round + 128) of a warp's 16 accumulator rows through the warp's
/// swizzled 16 x 256-byte staging buffer (stmatrix), so that every global store is 16 bytes and the
/// warp writes two 256-byte row runs at a time. row_base: output offset of row lane & 15 (or < 0).
template <class T, int HEAD_DIM, int COLS>
__device__ __forceinline__ void store_round(const float (&acc)[COLS / 2], int round, int n0, int width,
                                            unsigned char* warp_staging, std::int64_t row_base, T* out,
                                            std::int64_t head_stride) {
  constexpr int kRowBytes = kEpilogueStagingRowBytes;
  const int lane = threadIdx.x & 31;
  const std::uint32_t staging_base = smem_address(warp_staging);
  // Accumulator blocks j (8 columns) x halves h are the 8x8 matrices stmatrix stores; lane L
  // gives the row address of matrix L/8 = (block j0 + (L/8)/2, half (L/8)%2).
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int m = lane >> 3, chunk = 2 * i + (m >> 1), row = 8 * (m & 1) + (lane & 7);
    const std::uint32_t address = staging_base + row * kRowBytes + ((chunk ^ (row & 7)) << 4);
    const int j0 = 16 * round + 2 * i;
    std::uint32_t r[4];
#pragma unroll
    for (int mm = 0; mm < 4; ++mm) {
      const int a = (j0 + (mm >> 1)) * 4 + (mm & 1) * 2;
      r[mm] = ElementTraits<T>::pack(acc[a], acc[a + 1]);
    }
    asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(address), "r"(r[0]),
                 "r"(r[1]), "r"(r[2]), "r"(r[3])
                 : "memory");
  }
  __syncwarp();
  const int chunk = lane & 15, col = n0 + 128 * round + 8 * chunk;
  const std::int64_t col_offset = (col / HEAD_DIM) * head_stride + col % HEAD_DIM;
#pragma unroll
  for (int i = 0; i < 8; ++i) {  // rows 2i and 2i+1, sixteen 16-byte chunks each
    const int row = 2 * i + (lane >> 4);
    const uint4 v = *reinterpret_cast<const uint4*>(warp_staging + row * kRowBytes + ((chunk ^ (row & 7)) << 4));
    const std::int64_t base = __shfl_sync(0xffffffffu, row_base, row);
    if (base >= 0 && col < width) *reinterpret_cast<uint4*>(out + base + col_offset) = v;
  }
  __syncwarp();  // the buffer is rewritten next
}

/// RoPE of a warp's 16 rows from `warp_row0`, each row's factors evaluated at its own position
/// (rows at bad positions, outside the caller's table, become NaN and raise the error flag).
template <int HEAD_DIM, RopeMode MODE, bool TABLE, int COLS>
__device__ __forceinline__ void rope_rows(const ReconstructArgs& p, const double* inv_freq, const float2* turns,
                                          float (&acc)[COLS / 2], std::int64_t warp_row0) {
  const int lane = threadIdx.x & 31, q = lane & 3;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const std::int64_t t = warp_row0 + (lane >> 2) + 8 * half;
    std::int64_t token = 0, position = 0;
    if (t < p.tokens) resolve_token(p, t, token, position);  // dense: validated on the host
    const bool ok = rope_row<HEAD_DIM, MODE, TABLE, COLS>(p, inv_freq, turns, position, q, half, acc);
    if constexpr (TABLE) {
      if (!ok) {
        if (q == 0 && t < p.tokens && p.error_flag) atomicOr(p.error_flag, kBadPosition);
        poison_row<COLS>(acc, half);
      }
    }
  }
}

/// Stores a warp's 16 rows from `warp_row0`, COLS columns from `n0`, with 16-byte stores through
/// the warp's staging buffer.
template <class T, int HEAD_DIM, int COLS>
__device__ __forceinline__ void store_rows(const ReconstructArgs& p, const float (&acc)[COLS / 2],
                                           std::int64_t warp_row0, int n0, int width, unsigned char* warp_staging,
                                           T* out) {
  const int lane = threadIdx.x & 31;
  // Output row of staging row `lane & 15` of this warp (both half-warps hold the same 16).
  std::int64_t row_base = -1;
  const std::int64_t t = warp_row0 + (lane & 15);
  if (t < p.tokens) {
    row_base = output_row_base(p, t);
    if (row_base < 0 && n0 == 0 && lane < 16 && p.error_flag) atomicOr(p.error_flag, kBadOutputRow);
  }
#pragma unroll
  for (int round = 0; round < COLS / 128; ++round) {
    if (n0 + 128 * round >= width) break;  // past the last head (uniform)
    store_round<T, HEAD_DIM, COLS>(acc, round, n0, width, warp_staging, row_base, out, p.out_head_stride);
  }
}

/// 3-D tiled TMA store of the box at (c0, c1, c2) from shared memory, in this thread's bulk group.
__device__ __forceinline__ void tma_store_3d(const CUtensorMap* map, const void* src, int c0, int c1, int c2) {
  asm volatile("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%2, %3, %4}], [%1];\n" ::"l"(
                   reinterpret_cast<std::uint64_t>(map)),
               "r"(smem_address(src)), "r"(c0), "r"(c1), "r"(c2)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
/// Waits until this thread's bulk stores have read their shared-memory source.
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }
/// Waits until this thread's bulk stores are complete.
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

/// stmatrix .x4 of four accumulator pairs (acc[pair[m]], acc[pair[m] + 1], packed to T, form row
/// lane % 8 of matrix m) at this lane's row address.
template <class T>
__device__ __forceinline__ void stmatrix_pairs(std::uint32_t address, const float (&acc)[64], const int (&pair)[4]) {
  std::uint32_t r[4];
#pragma unroll
  for (int m = 0; m < 4; ++m) r[m] = ElementTraits<T>::pack(acc[pair[m]], acc[pair[m] + 1]);
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(address), "r"(r[0]),
               "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
}

/// Makes a warp's staged rows visible to the TMA, then lane 0 stores them as the tile's two
/// 64-column boxes (at `staging` and `staging + box_bytes`; output rows from `row`), one bulk group.
template <int HEAD_DIM>
__device__ __forceinline__ void tma_store_staged_boxes(const CUtensorMap* out_map, unsigned char* staging,
                                                       int box_bytes, int row, int n0, int width) {
  fence_proxy_async();  // the staged values, written by the generic proxy, visible to the TMA
  __syncwarp();
  if ((threadIdx.x & 31) == 0) {
#pragma unroll
    for (int box = 0; box < 2; ++box) {
      const int col = n0 + 64 * box;
      if (col < width) tma_store_3d(out_map, staging + box * box_bytes, col % HEAD_DIM, row, col / HEAD_DIM);
    }
    bulk_commit();
  }
}

/// Stores a warp's 16 rows from `warp_row0` (128 columns from `n0`, wgmma m64n128 accumulators)
/// with two TMA stores of 16 x 64 boxes: the accumulators go to the warp's staging buffer in the
/// TMA 128-byte-swizzle layout (box h at h * 2048; row r's 16-byte chunk c at
/// r * 128 + ((c ^ (r & 7)) << 4)) and lane 0 issues the copies. Replaces store_rows' per-row
/// loads, shuffles and 16-byte stores for plain outputs. The caller waits (bulk_wait_all) before
/// the CTA exits.
template <class T, int HEAD_DIM>
__device__ __forceinline__ void store_rows_tma(const ReconstructArgs& p, const CUtensorMap* out_map,
                                               const float (&acc)[64], std::int64_t warp_row0, int n0, int width,
                                               unsigned char* warp_staging) {
  const int lane = threadIdx.x & 31;
  if (lane == 0) bulk_wait_read();  // this warp's previous stores have read the buffer
  __syncwarp();
  const std::uint32_t staging_base = smem_address(warp_staging);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int m = lane >> 3, chunk = 2 * i + (m >> 1), row = 8 * (m & 1) + (lane & 7);
    const std::uint32_t address = staging_base + (chunk >> 3) * 2048 + row * 128 + (((chunk & 7) ^ (row & 7)) << 4);
    stmatrix_pairs<T>(address, acc, {8 * i, 8 * i + 2, 8 * i + 4, 8 * i + 6});
  }
  tma_store_staged_boxes<HEAD_DIM>(out_map, warp_staging, 2048, static_cast<int>(p.output_row_offset + warp_row0), n0,
                                   width);
}

/// Rotates row half `half` (rows lane / 4 + 8 half of a warp's 16; m64n128 accumulators) by the
/// factors evaluated for it, or poisons it (NaN) when its token or position was bad.
template <int HEAD_DIM, RopeMode MODE>
__device__ __forceinline__ void rope_or_poison_half(float (&acc)[64], int half, bool row_ok,
                                                    const float2 (&factors)[HEAD_DIM / 8]) {
  if (!row_ok) {
    poison_row<128>(acc, half);
    return;
  }
  if constexpr (MODE != RopeMode::None) {
#pragma unroll
    for (int f = 0; f < HEAD_DIM / 8; ++f) rotate_pair<HEAD_DIM, MODE, 128>(acc, f, half, factors[f].x, factors[f].y);
  }
}

/// store_rows_tma one row half at a time, with RoPE: rotates rows lane / 4 (half 0), stages them
/// (8 x 128 columns, two 8 x 64 boxes at 0 and 1024 of the warp's buffer) and issues their TMA
/// stores, then does the same for rows lane / 4 + 8 at 2048, so the first half's stores are on
/// their way while the second half rotates (0.15-0.2 us of a 10 us gathered launch on an H200).
/// out_map: boxes of 8 rows. The caller waits (bulk_wait_all) before the CTA exits.
template <class T, int HEAD_DIM, RopeMode MODE>
__device__ __forceinline__ void rope_store_halves_tma(const ReconstructArgs& p, const CUtensorMap* out_map,
                                                      float (&acc)[64], const bool (&row_ok)[2],
                                                      const float2 (&factors)[2][HEAD_DIM / 8],
                                                      std::int64_t warp_row0, int n0, int width,
                                                      unsigned char* warp_staging) {
  const int lane = threadIdx.x & 31;
  const std::uint32_t staging_base = smem_address(warp_staging);
  if (lane == 0) bulk_wait_read();  // this warp's previous stores have read the buffer
  __syncwarp();
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    rope_or_poison_half<HEAD_DIM, MODE>(acc, half, row_ok[half], factors[half]);
    // Lane L gives the row address (L % 8) of matrix L / 8, which is 16-byte chunk 4 j + L / 8.
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int chunk = 4 * j + (lane >> 3), row = lane & 7;
      const std::uint32_t address =
          staging_base + half * 2048 + (chunk >> 3) * 1024 + row * 128 + (((chunk & 7) ^ row) << 4);
      const int first = 16 * j + 2 * half;  // pairs of columns 8 (4 j + m) + 2 (lane % 4), row half `half`
      stmatrix_pairs<T>(address, acc, {first, first + 4, first + 8, first + 12});
    }
    tma_store_staged_boxes<HEAD_DIM>(out_map, warp_staging + half * 2048, 1024,
                                     static_cast<int>(p.output_row_offset + warp_row0) + 8 * half, n0, width);
  }
}

/// A consumer warp's epilogue for its 16 rows from `warp_row0` and the COLS columns from `n0`.
template <class T, int HEAD_DIM, RopeMode MODE, bool TABLE, int COLS>
__device__ __forceinline__ void tile_epilogue(const ReconstructArgs& p, const double* inv_freq,
                                              const float2* turns, float (&acc)[COLS / 2], std::int64_t warp_row0, int n0, int width,
                                              unsigned char* warp_staging, T* out) {
  if constexpr (MODE != RopeMode::None) rope_rows<HEAD_DIM, MODE, TABLE, COLS>(p, inv_freq, turns, acc, warp_row0);
  store_rows<T, HEAD_DIM, COLS>(p, acc, warp_row0, n0, width, warp_staging, out);
}

}  // namespace xkv::cuda::detail
