// Hopper (sm_90a) warp-specialised kernel of the fused reconstruct-then-RoPE for gathered
// selections (an index list of tokens; also dense ranges too long for TMA coordinates): one
// 128 x 128 output tile per CTA, one CTA per SM.
//
// A producer warpgroup gathers the selected A rows with cp.async into a ring of stages (each
// thread signals the stage's mbarrier when its copies land) while one of its threads streams the
// matching B^T tiles with TMA, issued before the token indices are even read. Two consumer
// warpgroups (64 rows each) multiply with wgmma and hand every stage back as soon as its products
// are done, so several stages stay in flight. They evaluate their rows' RoPE factors (cos, sin in
// registers) before the first stage arrives, in time otherwise spent waiting for the index list
// and then the rows it names; the epilogue only rotates and stores, one 8-row half of each
// warp's rows at a time (TMA stores where it can), so the first half's stores overlap the second
// half's rotation.
//
// Why: the tiled kernel this replaces (every thread loading, a CTA barrier and a drained wgmma
// at each k-tile, RoPE evaluated after the products) took 13.6 us for 2048 of 131072 tokens on
// an H200 (8 x 128, rank 512, L2 flushed); this one 9.9-10.5 (machines differ). Reading each
// tile's token indices in one coalesced pass mattered most of the changes: read in the copy
// pattern, every warp asked for a quarter of each 32-byte sector and the later warps waited a
// second memory trip (~1 us).
#pragma once

#include "xkv/cuda/reconstruct_kernels_tma.cuh"

namespace xkv::cuda::detail {

struct GatherTile {
  static constexpr int BM = 128, BN = 128, BK = 64;
  static constexpr int kStages = 5;
  static constexpr int kThreads = 384;  // producer warpgroup + two consumer warpgroups
  static constexpr int kProducerThreads = 128;
  static constexpr int kConsumerWarps = 8;
  static constexpr int kA_Bytes = BM * BK * 2;
  static constexpr int kB_Bytes = BN * BK * 2;
  static constexpr int kStageBytes = kA_Bytes + kB_Bytes;  // A tile, then B^T tile
  static constexpr int kStagingBytes = kConsumerWarps * 16 * kEpilogueStagingRowBytes;
  static constexpr int kSmemBytes =
      1024 + kStages * kStageBytes + kStagingBytes + 2 * kStages * 8 + BM * 8 + 8 * kMaxRopePairs;
  static constexpr int kRowsPerThread = BM * 8 / kProducerThreads;  // 16-byte chunks per stage
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per SM");
};

__device__ __forceinline__ void cp_async_arrive_noinc(std::uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_address(bar)) : "memory");
}

/// (cos, sin) of the thread's HEAD_DIM / 8 pairs of one row at `position`; false if the position
/// is outside the caller's table (TABLE). Computed factors take the fp32 angle reduction
/// (rope_angle_fp32) from the turns per position, which the consumers put in shared memory, where
/// it is exact (positions below 2^24, at most kFp32RopeMaxTurns per position), else the fp64 one: the fp64
/// path, with its per-lane reads of inv_freq from the parameter bank, took ~1.8 us here and held
/// up the first products.
template <int HEAD_DIM, RopeMode MODE, bool TABLE>
__device__ __forceinline__ bool gathered_row_factors(const ReconstructArgs& p, const float2* turns,
                                                     std::int64_t position, int q, float2 (&factors)[HEAD_DIM / 8]) {
  if constexpr (!TABLE) {
    if (position >= 0 && position < kFp32RopePositions) {  // one branch per row, outside the loop
      bool exact = true;
      const float position_fp32 = static_cast<float>(position);
#pragma unroll
      for (int f = 0; f < HEAD_DIM / 8; ++f) {
        factors[f] = make_float2(1.f, 0.f);
        if (MODE == RopeMode::Interleaved && 8 * f >= p.rotary_dim) continue;  // partial rotary: the rest stays
        const float2 turn = turns[rope_pair_of<MODE>(f, q)];
        float s, c;
        rope_angle_fp32(turn, position_fp32, s, c);
        factors[f] = make_float2(c, s);
        exact &= turn.x <= kFp32RopeMaxTurns;
      }
      if (exact) return true;
    }
  }
  bool ok = true;
#pragma unroll
  for (int f = 0; f < HEAD_DIM / 8; ++f) {
    factors[f] = make_float2(1.f, 0.f);
    if (MODE == RopeMode::Interleaved && 8 * f >= p.rotary_dim) continue;  // partial rotary: the rest stays
    float s = 0.f, c = 1.f;
    ok &= rope_cos_sin<TABLE>(p, p.inv_freq, position, rope_pair_of<MODE>(f, q), s, c);
    factors[f] = make_float2(c, s);
  }
  return ok;
}

template <class T, int HEAD_DIM, RopeMode MODE, bool TABLE>
__global__ void __launch_bounds__(GatherTile::kThreads, 1)
    reconstruct_gather_kernel(const __grid_constant__ TmaReconstructArgs args) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Tile = GatherTile;
  constexpr int BM = Tile::BM, BN = Tile::BN, BK = Tile::BK, STAGES = Tile::kStages;
  static_assert(BN % HEAD_DIM == 0, "tiles hold whole heads of 64 or 128");
  const ReconstructArgs& p = args.p;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* smem = reinterpret_cast<unsigned char*>((reinterpret_cast<std::uintptr_t>(smem_raw) + 1023) &
                                                         ~std::uintptr_t(1023));
  unsigned char* staging = smem + STAGES * Tile::kStageBytes;
  std::uint64_t* full = reinterpret_cast<std::uint64_t*>(staging + Tile::kStagingBytes);  // stage loaded
  std::uint64_t* empty = full + STAGES;                                                     // stage consumed
  const T** row_src = reinterpret_cast<const T**>(empty + STAGES);  // per tile row: its A row, or null
  float2* turns = reinterpret_cast<float2*>(row_src + BM);             // per pair: turns per position

  const int tid = threadIdx.x;
  const int width = p.heads * HEAD_DIM;
  const int n_tiles = (width + BN - 1) / BN;
  const std::int64_t m0 = static_cast<std::int64_t>(blockIdx.x / n_tiles) * BM;
  const int n0 = static_cast<int>(blockIdx.x % n_tiles) * BN;
  const int k_tiles = (p.rank + BK - 1) / BK;

  // Launched as a programmatic dependent of the stream's previous kernel: nothing is read before
  // that kernel has completed unless the caller promises that it writes none of the inputs
  // (early_reads); nothing is written before it either way (the wait before the epilogue).
  if (!p.early_reads) asm volatile("griddepcontrol.wait;\n" ::: "memory");
  // The token indices need no barrier: read before the barrier set-up, their memory trip overlaps
  // it (0.2 us of 10.7 on an H200). Producer thread tid: tile row tid; consumer lane l: row l % 16
  // of its warp's 16 (and that row's position, if given as an array).
  const int cw = tid / 128 - 1, warp = (tid / 32) & 3, lane = tid & 31;
  const std::int64_t warp_row0 = m0 + cw * 64 + warp * 16;  // consumers
  std::int64_t my_token = -1, my_position = 0;
  {
    const std::int64_t t = tid < Tile::kProducerThreads ? m0 + tid : warp_row0 + (lane & 15);
    if (t < p.tokens) {
      my_token = p.token_indices ? p.token_indices[t] : p.token_begin + t;
      if (tid >= Tile::kProducerThreads && p.positions) my_position = p.positions[t];
    }
  }
  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbarrier_init(&full[s], Tile::kProducerThreads + 1);  // every gathering thread + the B^T bytes
      mbarrier_init(&empty[s], Tile::kConsumerWarps);        // one arrive per consumer warp
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();  // the only CTA-wide barrier: the roles below never meet again

  if (tid < Tile::kProducerThreads) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 56;\n" ::: "memory");
    // B^T does not depend on the selection: its first stages are on their way before the index
    // list is read.
    if (tid == 0)
      for (int s = 0; s < STAGES && s < k_tiles; ++s) {
        mbarrier_arrive_expect_tx(&full[s], Tile::kB_Bytes);
        tma_load_2d(smem + s * Tile::kStageBytes + Tile::kA_Bytes, &args.bt_map, s * BK, n0, &full[s]);
      }
    // The tile's token indices, read in one coalesced pass above, shared through shared memory:
    // read in the copy pattern below, each warp's requests would cover a quarter of every
    // 32-byte sector, and a warp whose sectors were not yet requested waited for a second trip to
    // memory (~1 us on an H200 after an L2 flush).
    const T* a = static_cast<const T*>(p.a);
    // Tokens past the selection keep -1; bad rows copy zeros and are written as NaN.
    row_src[tid] = my_token >= 0 && my_token < p.a_rows ? a + my_token * p.lda : nullptr;
    asm volatile("bar.sync 1, %0;\n" ::"n"(Tile::kProducerThreads) : "memory");
    // Thread tid copies 16-byte chunk tid % 8 of rows tid / 8 + 16 i: four whole rows per warp
    // instruction.
    const int chunk = tid & 7;
    const T* a_src[Tile::kRowsPerThread];
#pragma unroll
    for (int i = 0; i < Tile::kRowsPerThread; ++i) a_src[i] = row_src[(tid >> 3) + 16 * i];
    if (p.early_reads) asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
    int stage = 0;
    unsigned phase = 0;
    for (int kt = 0; kt < k_tiles; ++kt) {
      if (kt >= STAGES) {
        mbarrier_wait(&empty[stage], phase ^ 1);
        if (tid == 0) {
          mbarrier_arrive_expect_tx(&full[stage], Tile::kB_Bytes);
          tma_load_2d(smem + stage * Tile::kStageBytes + Tile::kA_Bytes, &args.bt_map, kt * BK, n0, &full[stage]);
        }
      }
      unsigned char* a_tile = smem + stage * Tile::kStageBytes;
      const int k = kt * BK + chunk * 8;
      const int valid_k = max(0, min(8, p.rank - k));
#pragma unroll
      for (int i = 0; i < Tile::kRowsPerThread; ++i) {
        const int bytes = a_src[i] != nullptr ? valid_k * 2 : 0;
        cp_async_16(a_tile + swizzled_offset((tid >> 3) + 16 * i, chunk), bytes > 0 ? a_src[i] + k : a, bytes);
      }
      cp_async_arrive_noinc(&full[stage]);
      if (++stage == STAGES) stage = 0, phase ^= 1;
    }
    cp_async_wait<0>();
    if (!p.early_reads) asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
    return;
  }

  // Consumer warpgroup cw computes rows [64 cw, 64 cw + 64) of the tile; accumulator i of this
  // thread: row 16 warp + lane/4 + 8 ((i/2)%2), column 8 (i/4) + 2 (lane%4) + i%2.
  asm volatile("setmaxnreg.inc.sync.aligned.u32 224;\n" ::: "memory");
  const int q = lane & 3;
  // Each of the thread's two rows: whether its token is valid, and its RoPE factors.
  bool token_ok[2];
  int errors = 0;
  [[maybe_unused]] float2 factors[2][HEAD_DIM / 8];
  // The warp's 16 token indices (and positions), read above with lane l holding row l % 16; each
  // thread takes its rows lane / 4 and lane / 4 + 8 by shuffles.
  const std::int64_t lane_token = my_token;
  const std::int64_t lane_position = p.positions ? my_position : p.position_offset + my_token;
  // After the index read is on its way: the turns' fill and barrier overlap its latency.
  if constexpr (MODE != RopeMode::None && !TABLE) {
    for (int i = tid - Tile::kProducerThreads; i < p.rotary_dim / 2; i += Tile::kThreads - Tile::kProducerThreads)
      turns[i] = rope_turns_of(p.inv_freq[i]);
    asm volatile("bar.sync 2, %0;\n" ::"n"(Tile::kThreads - Tile::kProducerThreads) : "memory");  // consumers only
  }
  [[maybe_unused]] std::int64_t position[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const std::int64_t t = warp_row0 + (lane >> 2) + 8 * half;
    const std::int64_t token = __shfl_sync(0xffffffffu, lane_token, (lane >> 2) + 8 * half);
    position[half] = __shfl_sync(0xffffffffu, lane_position, (lane >> 2) + 8 * half);
    token_ok[half] = t < p.tokens && token >= 0 && token < p.a_rows;
    if (t < p.tokens && !token_ok[half] && q == 0 && n0 == 0) errors |= kBadTokenIndex;
  }
  // The RoPE factors, before the first stage arrives: the rows' A data is a memory round trip
  // behind the index read, so this costs nothing there (evaluated between the first products'
  // commit and wait instead, they delayed the hand-back of the stages: 12.8 against 11.0 us).
  if constexpr (MODE != RopeMode::None) {
#pragma unroll
    for (int half = 0; half < 2; ++half)
      if (token_ok[half] && !gathered_row_factors<HEAD_DIM, MODE, TABLE>(p, turns, position[half], q, factors[half])) {
        token_ok[half] = false;
        if (q == 0 && n0 == 0) errors |= kBadPosition;
      }
  }
  if (p.early_reads) asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");

  const std::uint32_t smem_base = smem_address(smem);
  float acc[64];
  int stage = 0;
  unsigned phase = 0;
  int previous = -1;
  for (int kt = 0; kt < k_tiles; ++kt) {
    mbarrier_wait(&full[stage], phase);
    fence_proxy_async();  // the gathered rows, written by cp.async (generic proxy), visible to wgmma
    const std::uint64_t a_desc = wgmma_descriptor(smem_base + stage * Tile::kStageBytes + cw * 64 * 128);
    const std::uint64_t b_desc = wgmma_descriptor(smem_base + stage * Tile::kStageBytes + Tile::kA_Bytes);
    fence_operands(acc);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) wgmma_m64n128k16<T>(acc, a_desc + 2 * kk, b_desc + 2 * kk, kt > 0 || kk > 0);
    wgmma_commit();
    wgmma_wait<1>();  // the previous stage's products are done: hand it back to the producer
    fence_operands(acc);
    if (previous >= 0 && lane == 0) mbarrier_arrive(&empty[previous]);
    previous = stage;
    if (++stage == STAGES) stage = 0, phase ^= 1;
  }
  wgmma_wait<0>();
  fence_operands(acc);
  // Without the promise the next kernel reads nothing before this grid completes, so it may be
  // scheduled during this epilogue.
  if (!p.early_reads) asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");

  if (p.early_reads) asm volatile("griddepcontrol.wait;\n" ::: "memory");  // the first write follows
  if (errors && p.error_flag) atomicOr(p.error_flag, errors);
  unsigned char* warp_staging = staging + (tid / 32 - 4) * 16 * kEpilogueStagingRowBytes;
  if (args.out_by_tma) {
    rope_store_halves_tma<T, HEAD_DIM, MODE>(p, &args.out_map, acc, token_ok, factors, warp_row0, n0, width,
                                             warp_staging);
    if (lane == 0) bulk_wait_all();  // the staging buffer stays valid until the copies are done
  } else {
#pragma unroll
    for (int half = 0; half < 2; ++half) rope_or_poison_half<HEAD_DIM, MODE>(acc, half, token_ok[half], factors[half]);
    store_rows<T, HEAD_DIM, BN>(p, acc, warp_row0, n0, width, warp_staging, static_cast<T*>(p.out));
  }
#endif
}

template <class T, int HEAD_DIM, RopeMode MODE, bool TABLE>
inline void launch_gather_typed(const ReconstructArgs& args, cudaStream_t stream) {
  using Tile = GatherTile;
  auto kernel = reconstruct_gather_kernel<T, HEAD_DIM, MODE, TABLE>;
  static std::uint64_t smem_configured = 0;  // per instantiation
  allow_shared_memory(kernel, Tile::kSmemBytes, smem_configured);
  TmaReconstructArgs tma{};
  tma.p = args;
  const std::int64_t width = std::int64_t(args.heads) * HEAD_DIM;
  tma.bt_map = operand_tensor_map<T>(args.bt, args.rank, width, args.ldbt, Tile::BN);
  tma.out_by_tma = output_tensor_map<T>(args, tma.out_map, /*box_rows=*/8) ? 1 : 0;  // rope_store_halves_tma
  const std::int64_t m_tiles = (args.tokens + Tile::BM - 1) / Tile::BM;
  const std::int64_t n_tiles = (width + Tile::BN - 1) / Tile::BN;
  XKV_CHECK(m_tiles * n_tiles <= 0x7fffffff, InvalidArgument, "reconstruct: " << args.tokens << " tokens is too many");
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(m_tiles * n_tiles));
  config.blockDim = dim3(Tile::kThreads);
  config.dynamicSmemBytes = Tile::kSmemBytes;
  config.stream = stream;
  cudaLaunchAttribute dependent{};
  dependent.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  dependent.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &dependent;
  config.numAttrs = 1;
  XKV_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, tma));
}

}  // namespace xkv::cuda::detail
