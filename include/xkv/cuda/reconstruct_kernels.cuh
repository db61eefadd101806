// Kernel templates of the fused reconstruct-then-RoPE (see reconstruct.hpp for the contract).
//
// reconstruct_gemm_kernel: a tiled tensor-core GEMM (mma.sync m16n8k16, ldmatrix, a 4-stage
// cp.async pipeline) over selected rows of A times B, fp32 accumulators staged through shared
// memory, RoPE applied there in fp32, then 16-byte coalesced stores to the output layout.
// The N tile always holds whole heads, so both halves of every rotated pair are in one CTA.
// reconstruct_copy_kernel: RoPE on rows kept uncompressed (the tail).
//
// Compile-time: element type, head_dim (tile shape), RoPE mode (none / half-split / interleaved)
// and cos/sin source; everything else is a runtime argument.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "xkv/cuda/check.hpp"
#include "xkv/cuda/reconstruct.hpp"

namespace xkv::cuda::detail {

// ------------------------------------------------------------------ element helpers
template <class T>
struct ElementTraits;
template <>
struct ElementTraits<__nv_bfloat16> {
  static __device__ __forceinline__ std::uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<std::uint32_t*>(&v);
  }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};
template <>
struct ElementTraits<__half> {
  static __device__ __forceinline__ std::uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<std::uint32_t*>(&v);
  }
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
};

template <class T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const std::uint32_t (&a)[4], const std::uint32_t (&b)[2]);
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const std::uint32_t (&a)[4],
                                                         const std::uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const std::uint32_t (&a)[4],
                                                  const std::uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ std::uint32_t smem_address(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p)));
}

/// 16-byte async copy; bytes beyond `src_bytes` (0..16) are zero-filled and never read.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// ------------------------------------------------------------------ per-row bookkeeping
/// Resolves the source token and RoPE position of selected token t; false if token(t) is bad.
__device__ __forceinline__ bool resolve_token(const ReconstructArgs& p, std::int64_t t, std::int64_t& token,
                                              std::int64_t& position) {
  token = p.token_indices ? p.token_indices[t] : p.token_begin + t;
  position = p.positions ? p.positions[t] : p.position_offset + token;
  return token >= 0 && token < p.a_rows;
}

/// Element offset of output row(t) (head 0, element 0), or -1 when the row or its page is invalid.
__device__ __forceinline__ std::int64_t output_row_base(const ReconstructArgs& p, std::int64_t t) {
  const std::int64_t row = p.output_row_offset + (p.output_rows ? p.output_rows[t] : t);
  if (row < 0) return -1;
  if (p.page_table == nullptr) return row < p.out_rows ? row * p.out_token_stride : -1;
  const std::int64_t logical = row / p.page_size;
  if (logical >= p.page_table_len) return -1;
  const std::int64_t page = p.page_table[logical];
  if (page < 0 || page >= p.num_pages) return -1;
  return page * p.page_stride + (row % p.page_size) * p.out_token_stride;
}

/// cos/sin of pair `pair` at `position`: the angle in fp64 and reduced to [-pi, pi] there, so
/// that large positions keep full fp32 accuracy; then the fast fp32 sin/cos.
__device__ __forceinline__ void rope_angle(double inv_freq, std::int64_t position, float& s, float& c) {
  const double angle = static_cast<double>(position) * inv_freq;
  const double turns = rint(angle * 0.15915494309189533577);
  const float reduced = static_cast<float>(fma(-turns, 6.28318530717958647692, angle));
  __sincosf(reduced, &s, &c);
}

/// cos/sin from the caller's table or computed from `inv_freq` (an fp64 array in shared memory);
/// false if the position is outside the table.
template <bool TABLE>
__device__ __forceinline__ bool rope_cos_sin(const ReconstructArgs& p, const double* inv_freq, std::int64_t position,
                                             int pair, float& s, float& c) {
  if constexpr (TABLE) {
    if (position < 0 || position >= p.table_positions) return false;
    const std::int64_t at = position * (p.rotary_dim / 2) + pair;
    c = p.cos_table[at];
    s = p.sin_table[at];
  } else {
    rope_angle(inv_freq[pair], position, s, c);
  }
  return true;
}

/// Dimensions (first, second) of rotated pair `pair` of a head.
template <RopeMode MODE>
__device__ __forceinline__ void pair_dims(int rotary_dim, int pair, int& first, int& second) {
  if constexpr (MODE == RopeMode::HalfSplit) {
    first = pair;
    second = pair + rotary_dim / 2;
  } else {
    first = 2 * pair;
    second = 2 * pair + 1;
  }
}

// ------------------------------------------------------------------ GEMM tile shape
/// Tile of one CTA: BM tokens x BN = one head of output columns, BK of the rank per stage.
/// 8 warps, each computing a 64 x 32 block, so BM x BN is 256 x 64, 128 x 128 or 64 x 256.
template <int HEAD_DIM>
struct GemmTile {
  static constexpr int kThreads = 256;
  static constexpr int BN = HEAD_DIM;
  static constexpr int BM = 8 * 64 * 32 / BN;
  static constexpr int BK = 32;
  static constexpr int kStages = 4;
  static constexpr int kWarpsN = BN / 32;
  static constexpr int kA_Stride = BK + 8;   // +16 B per row: ldmatrix rows hit distinct banks
  static constexpr int kB_Stride = BN + 8;
  static constexpr int kC_Stride = BN + 8;   // fp32 staging; +8 keeps float2 stores conflict-free
  static constexpr int kA_StageElems = BM * kA_Stride;
  static constexpr int kB_StageElems = BK * kB_Stride;
  static constexpr int kPipelineBytes = kStages * (kA_StageElems + kB_StageElems) * 2;
  static constexpr int kStagingBytes = BM * kC_Stride * 4;
  static constexpr int kMainBytes = kPipelineBytes > kStagingBytes ? kPipelineBytes : kStagingBytes;
  // Per-row bookkeeping after the main area: output base (int64), position (int64), token ok (int).
  static constexpr int kRowInfoBytes = BM * (8 + 8 + 4) + 8 * kMaxRopePairs;  // + inverse frequencies
  static constexpr int kSmemBytes = kMainBytes + kRowInfoBytes;
  static constexpr int kA_Loads = BM * (BK / 8) / kThreads;  // 16-byte chunks per thread per stage
  static constexpr int kB_Loads = BK * (BN / 8) / kThreads;
  static_assert(HEAD_DIM == 64 || HEAD_DIM == 128 || HEAD_DIM == 256, "head_dim must be 64, 128 or 256");
  static_assert(BN % HEAD_DIM == 0, "an N tile holds whole heads");
  static_assert((BM / 64) * kWarpsN * 32 == kThreads, "8 warps of 64 x 32");
  static_assert(kA_Loads >= 1 && kB_Loads >= 1, "loader shape");
};

// Per-tile row bookkeeping of the mma.sync kernel: for each of the tile's BM rows,
// its output row offset, RoPE position and validity, and the inverse frequencies when the kernel
// evaluates cos/sin itself. Read after a barrier. Returns the ReconstructError bits of this
// thread's row (bad token index, bad output row) for the caller to OR into p.error_flag: only
// reads here, so that a kernel may stage its rows before it is allowed to write.
template <int BM, int THREADS, bool LOAD_INV_FREQ>
__device__ __forceinline__ int stage_tile_rows(const ReconstructArgs& p, std::int64_t m0, int tid, std::int64_t* row_out,
                                               std::int64_t* row_pos, int* row_ok, double* inv_freq) {
  int errors = 0;
  if (tid < BM) {
    const std::int64_t t = m0 + tid;
    std::int64_t token = 0, position = 0, out_base = -1;
    int ok = 0;
    if (t < p.tokens) {
      ok = resolve_token(p, t, token, position);
      if (!ok) errors |= kBadTokenIndex;
      out_base = output_row_base(p, t);
      if (out_base < 0) errors |= kBadOutputRow;
    }
    row_out[tid] = out_base;
    row_pos[tid] = position;
    row_ok[tid] = ok;
  }
  if constexpr (LOAD_INV_FREQ) {
    for (int i = tid; i < p.rotary_dim / 2; i += THREADS) inv_freq[i] = p.inv_freq[i];
  }
  return errors;
}

/// ORs a row's ReconstructError bits into p.error_flag (if any).
__device__ __forceinline__ void report_errors(const ReconstructArgs& p, int errors) {
  if (errors && p.error_flag) atomicOr(p.error_flag, errors);
}

// ------------------------------------------------------------------ the fused GEMM + RoPE
template <class T, int HEAD_DIM, RopeMode MODE, bool TABLE>
__global__ void __launch_bounds__(256, 2) reconstruct_gemm_kernel(const __grid_constant__ ReconstructArgs p) {
  using Tile = GemmTile<HEAD_DIM>;
  constexpr int BM = Tile::BM, BN = Tile::BN, BK = Tile::BK, STAGES = Tile::kStages;
  extern __shared__ __align__(16) unsigned char smem[];
  T* a_smem = reinterpret_cast<T*>(smem);
  T* b_smem = a_smem + STAGES * Tile::kA_StageElems;
  float* c_smem = reinterpret_cast<float*>(smem);  // reused after the main loop
  std::int64_t* row_out = reinterpret_cast<std::int64_t*>(smem + Tile::kMainBytes);
  std::int64_t* row_pos = row_out + BM;
  double* inv_freq = reinterpret_cast<double*>(row_pos + BM);  // the parameter array indexed per thread
  int* row_ok = reinterpret_cast<int*>(inv_freq + kMaxRopePairs);  // would serialise in the constant bank

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp / Tile::kWarpsN, warp_n = warp % Tile::kWarpsN;
  const int width = p.heads * HEAD_DIM;
  const int n_tiles = width / BN;
  const std::int64_t m0 = static_cast<std::int64_t>(blockIdx.x / n_tiles) * BM;
  const int n0 = static_cast<int>(blockIdx.x % n_tiles) * BN;
  const T* a = static_cast<const T*>(p.a);
  const T* b = static_cast<const T*>(p.b);

  // Row bookkeeping (read by the epilogue only, after barriers).
  report_errors(p, stage_tile_rows<BM, Tile::kThreads, MODE != RopeMode::None && !TABLE>(p, m0, tid, row_out, row_pos,
                                                                                        row_ok, inv_freq));

  // Each thread loads fixed A rows: resolve them once.
  const T* a_src[Tile::kA_Loads];
  bool a_valid[Tile::kA_Loads];
  const int a_chunk = (tid % (BK / 8)) * 8;
#pragma unroll
  for (int i = 0; i < Tile::kA_Loads; ++i) {
    const int row = tid / (BK / 8) + i * (Tile::kThreads / (BK / 8));
    const std::int64_t t = m0 + row;
    std::int64_t token = 0, position = 0;
    a_valid[i] = t < p.tokens && resolve_token(p, t, token, position);
    a_src[i] = a_valid[i] ? a + token * p.lda : a;
  }

  const int k_tiles = (p.rank + BK - 1) / BK;
  auto load_stage = [&](int stage, int kt) {
    T* as = a_smem + stage * Tile::kA_StageElems;
    T* bs = b_smem + stage * Tile::kB_StageElems;
    const int k0 = kt * BK;
#pragma unroll
    for (int i = 0; i < Tile::kA_Loads; ++i) {
      const int row = tid / (BK / 8) + i * (Tile::kThreads / (BK / 8));
      const int k = k0 + a_chunk;
      const int valid = a_valid[i] ? max(0, min(8, p.rank - k)) : 0;
      cp_async_16(as + row * Tile::kA_Stride + a_chunk, valid > 0 ? a_src[i] + k : a, valid * 2);
    }
#pragma unroll
    for (int i = 0; i < Tile::kB_Loads; ++i) {
      const int chunk = tid + i * Tile::kThreads;
      const int row = chunk / (BN / 8);
      const int col = (chunk % (BN / 8)) * 8;
      const int k = k0 + row;
      const bool valid = k < p.rank;
      cp_async_16(bs + row * Tile::kB_Stride + col, valid ? b + k * p.ldb + n0 + col : b, valid ? 16 : 0);
    }
  };

  float acc[4][4][4];
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < k_tiles) load_stage(s, s);
    cp_async_commit();
  }

  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // stage kt landed for everyone; stage kt-1 is free to overwrite
    const int next = kt + STAGES - 1;
    if (next < k_tiles) load_stage(next % STAGES, next);
    cp_async_commit();

    const T* as = a_smem + (kt % STAGES) * Tile::kA_StageElems;
    const T* bs = b_smem + (kt % STAGES) * Tile::kB_StageElems;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      std::uint32_t af[4][4];
      std::uint32_t bf[4][2];
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
        const int row = warp_m * 64 + mi * 16 + (lane & 15);
        const int col = kk + (lane >> 4) * 8;
        ldmatrix_x4(af[mi], as + row * Tile::kA_Stride + col);
      }
#pragma unroll
      for (int nj = 0; nj < 2; ++nj) {
        const int k = kk + (lane & 7) + ((lane >> 3) & 1) * 8;
        const int n = warp_n * 32 + nj * 16 + (lane >> 4) * 8;
        std::uint32_t r[4];
        ldmatrix_x4_trans(r, bs + k * Tile::kB_Stride + n);
        bf[2 * nj][0] = r[0];
        bf[2 * nj][1] = r[1];
        bf[2 * nj + 1][0] = r[2];
        bf[2 * nj + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) mma_16816<T>(acc[mi][ni], af[mi], bf[ni]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with the pipeline buffers: reuse them as fp32 staging

#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni) {
      const int row = warp_m * 64 + mi * 16 + (lane >> 2);
      const int col = warp_n * 32 + ni * 8 + 2 * (lane & 3);
      *reinterpret_cast<float2*>(c_smem + row * Tile::kC_Stride + col) = make_float2(acc[mi][ni][0], acc[mi][ni][1]);
      *reinterpret_cast<float2*>(c_smem + (row + 8) * Tile::kC_Stride + col) =
          make_float2(acc[mi][ni][2], acc[mi][ni][3]);
    }
  __syncthreads();

  if constexpr (MODE != RopeMode::None) {
    // One work item per (row, pair), applied to every head of the tile: cos/sin once per item.
    const int pairs = p.rotary_dim / 2;
    for (int item = tid; item < BM * pairs; item += Tile::kThreads) {
      const int row = item / pairs, pair = item % pairs;
      if (m0 + row >= p.tokens) break;  // rows only grow with item
      float s = 0.f, c = 0.f;
      if (!rope_cos_sin<TABLE>(p, inv_freq, row_pos[row], pair, s, c)) {
        if (pair == 0) {
          row_ok[row] = 0;  // written by one thread; read after the barrier below
          if (p.error_flag) atomicOr(p.error_flag, kBadPosition);
        }
        continue;
      }
      int first = 0, second = 0;
      pair_dims<MODE>(p.rotary_dim, pair, first, second);
#pragma unroll
      for (int h = 0; h < BN / HEAD_DIM; ++h) {
        float* v = c_smem + row * Tile::kC_Stride + h * HEAD_DIM;
        const float x = v[first], y = v[second];
        v[first] = x * c - y * s;
        v[second] = x * s + y * c;
      }
    }
    __syncthreads();
  }

  // Coalesced 16-byte stores: consecutive threads take consecutive 8-column chunks of a row.
  T* out = static_cast<T*>(p.out);
  constexpr int kChunks = BN / 8;
  for (int item = tid; item < BM * kChunks; item += Tile::kThreads) {
    const int row = item / kChunks, chunk = item % kChunks;
    if (m0 + row >= p.tokens) break;
    const std::int64_t base = row_out[row];
    if (base < 0) continue;
    const float* v = c_smem + row * Tile::kC_Stride + chunk * 8;
    float4 lo = *reinterpret_cast<const float4*>(v);
    float4 hi = *reinterpret_cast<const float4*>(v + 4);
    if (!row_ok[row]) {
      const float nan = __int_as_float(0x7fc00000);
      lo = make_float4(nan, nan, nan, nan);
      hi = lo;
    }
    const int col = n0 + chunk * 8;
    const int head = col / HEAD_DIM, dim = col % HEAD_DIM;
    uint4 packed;
    packed.x = ElementTraits<T>::pack(lo.x, lo.y);
    packed.y = ElementTraits<T>::pack(lo.z, lo.w);
    packed.z = ElementTraits<T>::pack(hi.x, hi.y);
    packed.w = ElementTraits<T>::pack(hi.z, hi.w);
    *reinterpret_cast<uint4*>(out + base + head * p.out_head_stride + dim) = packed;
  }
}

// ------------------------------------------------------------------ uncompressed rows + RoPE
/// One thread per (selected token, 8-element chunk of the row): reads the chunk and, for rotated
/// dimensions, each element's partner, rotates in fp32 and stores 16 bytes.
template <class T, int HEAD_DIM, RopeMode MODE, bool TABLE>
__global__ void __launch_bounds__(256) reconstruct_copy_kernel(const __grid_constant__ ReconstructArgs p) {
  __shared__ double inv_freq[kMaxRopePairs];
  if constexpr (MODE != RopeMode::None && !TABLE) {
    for (int i = threadIdx.x; i < p.rotary_dim / 2; i += blockDim.x) inv_freq[i] = p.inv_freq[i];
    __syncthreads();
  }
  const int chunks_per_row = p.heads * HEAD_DIM / 8;
  const std::int64_t item = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::int64_t t = item / chunks_per_row;
  if (t >= p.tokens) return;
  const int chunk = static_cast<int>(item % chunks_per_row);
  const int head = chunk * 8 / HEAD_DIM, dim0 = chunk * 8 % HEAD_DIM;

  const std::int64_t base = output_row_base(p, t);
  std::int64_t token = 0, position = 0;
  const bool token_ok = resolve_token(p, t, token, position);
  if (chunk == 0) {
    if (!token_ok && p.error_flag) atomicOr(p.error_flag, kBadTokenIndex);
    if (base < 0 && p.error_flag) atomicOr(p.error_flag, kBadOutputRow);
  }
  if (base < 0) return;

  float v[8];
  const float nan = __int_as_float(0x7fc00000);
  bool ok = token_ok;
  if (ok) {
    const T* src = static_cast<const T*>(p.a) + token * p.lda + head * HEAD_DIM;
    const uint4 raw = *reinterpret_cast<const uint4*>(src + dim0);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = ElementTraits<T>::to_float(e[j]);
    if constexpr (MODE != RopeMode::None) {
      const int rd = p.rotary_dim;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int dim = dim0 + j;
        if (dim >= rd) continue;
        int pair = 0, partner = 0;
        bool is_first = true;
        if constexpr (MODE == RopeMode::HalfSplit) {
          is_first = dim < rd / 2;
          pair = is_first ? dim : dim - rd / 2;
          partner = is_first ? dim + rd / 2 : pair;
        } else {
          is_first = (dim & 1) == 0;
          pair = dim / 2;
          partner = is_first ? dim + 1 : dim - 1;
        }
        float s = 0.f, c = 0.f;
        if (!rope_cos_sin<TABLE>(p, inv_freq, position, pair, s, c)) {
          ok = false;
          break;
        }
        const float other = ElementTraits<T>::to_float(src[partner]);
        // first' = x c - y s, second' = x s + y c, with (x, y) = (first, second)
        v[j] = is_first ? v[j] * c - other * s : other * s + v[j] * c;
      }
      if (!ok && chunk == 0 && p.error_flag) atomicOr(p.error_flag, kBadPosition);
    }
  }
  if (!ok) {
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = nan;
  }
  uint4 packed;
  packed.x = ElementTraits<T>::pack(v[0], v[1]);
  packed.y = ElementTraits<T>::pack(v[2], v[3]);
  packed.z = ElementTraits<T>::pack(v[4], v[5]);
  packed.w = ElementTraits<T>::pack(v[6], v[7]);
  *reinterpret_cast<uint4*>(static_cast<T*>(p.out) + base + head * p.out_head_stride + dim0) = packed;
}

// ------------------------------------------------------------------ launch + dispatch
/// Raises the dynamic shared-memory limit of `kernel` once per device. `done_devices` must be a
/// static owned by the one kernel instantiation (a bit per device; setting it twice is harmless).
template <class Kernel>
inline void allow_shared_memory(Kernel kernel, int bytes, std::uint64_t& done_devices) {
  int device = 0;
  XKV_CUDA_CHECK(cudaGetDevice(&device));
  const std::uint64_t bit = device < 64 ? (std::uint64_t{1} << device) : 0;
  if (bit != 0 && (__atomic_load_n(&done_devices, __ATOMIC_RELAXED) & bit)) return;
  XKV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  if (bit != 0) __atomic_fetch_or(&done_devices, bit, __ATOMIC_RELAXED);
}

template <class T, int HEAD_DIM, RopeMode MODE, bool TABLE>
inline void launch_reconstruct_typed(const ReconstructArgs& args, cudaStream_t stream) {
  if (args.tokens == 0) return;
  if (args.b == nullptr) {
    const std::int64_t items = args.tokens * (std::int64_t(args.heads) * HEAD_DIM / 8);
    const std::int64_t blocks = (items + 255) / 256;
    XKV_CHECK(blocks <= 0x7fffffff, InvalidArgument, "reconstruct: " << args.tokens << " tokens is too many");
    reconstruct_copy_kernel<T, HEAD_DIM, MODE, TABLE><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(args);
  } else {
    using Tile = GemmTile<HEAD_DIM>;
    auto kernel = reconstruct_gemm_kernel<T, HEAD_DIM, MODE, TABLE>;
    static std::uint64_t smem_configured = 0;  // per instantiation
    allow_shared_memory(kernel, Tile::kSmemBytes, smem_configured);
    const std::int64_t m_tiles = (args.tokens + Tile::BM - 1) / Tile::BM;
    const std::int64_t blocks = m_tiles * (std::int64_t(args.heads) * HEAD_DIM / Tile::BN);
    XKV_CHECK(blocks <= 0x7fffffff, InvalidArgument, "reconstruct: " << args.tokens << " tokens is too many");
    kernel<<<static_cast<unsigned>(blocks), Tile::kThreads, Tile::kSmemBytes, stream>>>(args);
  }
  XKV_CUDA_CHECK(cudaGetLastError());
}

/// Not inline: each (T, HEAD_DIM) is instantiated in its own .cu file (parallel builds) and
/// declared `extern template` where the dispatch below is compiled.
template <class T, int HEAD_DIM>
void dispatch_rope(const ReconstructArgs& args, RopeMode mode, bool table, cudaStream_t stream) {
  switch (mode) {
    case RopeMode::None: return launch_reconstruct_typed<T, HEAD_DIM, RopeMode::None, false>(args, stream);
    case RopeMode::HalfSplit:
      return table ? launch_reconstruct_typed<T, HEAD_DIM, RopeMode::HalfSplit, true>(args, stream)
                   : launch_reconstruct_typed<T, HEAD_DIM, RopeMode::HalfSplit, false>(args, stream);
    case RopeMode::Interleaved:
      return table ? launch_reconstruct_typed<T, HEAD_DIM, RopeMode::Interleaved, true>(args, stream)
                   : launch_reconstruct_typed<T, HEAD_DIM, RopeMode::Interleaved, false>(args, stream);
  }
}

#define XKV_RECONSTRUCT_EXTERN_HEAD_DIMS(T)                                                              \
  extern template void dispatch_rope<T, 64>(const ReconstructArgs&, RopeMode, bool, cudaStream_t);  \
  extern template void dispatch_rope<T, 128>(const ReconstructArgs&, RopeMode, bool, cudaStream_t); \
  extern template void dispatch_rope<T, 256>(const ReconstructArgs&, RopeMode, bool, cudaStream_t);
XKV_RECONSTRUCT_EXTERN_HEAD_DIMS(__nv_bfloat16)
XKV_RECONSTRUCT_EXTERN_HEAD_DIMS(__half)
#undef XKV_RECONSTRUCT_EXTERN_HEAD_DIMS

/// Runtime head_dim / RoPE mode / cos-sin source -> compile-time kernel.
template <class T>
inline void dispatch_reconstruct(const ReconstructArgs& args, RopeMode mode, bool table, cudaStream_t stream) {
  switch (args.head_dim) {
    case 64: return dispatch_rope<T, 64>(args, mode, table, stream);
    case 128: return dispatch_rope<T, 128>(args, mode, table, stream);
    case 256: return dispatch_rope<T, 256>(args, mode, table, stream);
    default: XKV_REQUIRE(false, "reconstruct: head_dim must be 64, 128 or 256, got " << args.head_dim);
  }
}

}  // namespace xkv::cuda::detail
