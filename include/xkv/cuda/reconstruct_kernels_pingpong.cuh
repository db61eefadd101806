// Hopper (sm_90a) ping-pong kernel of the fused reconstruct-then-RoPE for dense token ranges of
// rank <= 512 and head_dim 64 or 128, and the dispatch among the three sm_90a kernels.
//
// Why this shape: in the cooperative TMA kernel (reconstruct_kernels_tma.cuh) both consumer
// warpgroups share a 128 x 256 tile, so the tensor cores idle while they rotate and store it
// (~1.6 us a tile, a fifth of the kernel). Here each consumer warpgroup owns a whole 128 x 128
// tile (the same 128 fp32 accumulators per thread) and the two alternate: one multiplies while
// the other runs its epilogue. The narrower tile would re-read B^T from L2 twice as often, so
// instead the CTA's 128 columns of B^T stay resident in shared memory (128 x rank, 128 KB at
// rank 512) and only A streams through the ring.
// Work split: CTA (column tile c, slot s) walks row blocks s, s + S, s + 2S, ... of column tile
// c. The CTAs of one slot cover every column tile of the same rows at about the same time, so A
// comes from HBM once and from L2 for the other column tiles.
#pragma once

#include "xkv/cuda/reconstruct_kernels_gather.cuh"
#include "xkv/cuda/reconstruct_kernels_tma.cuh"

namespace xkv::cuda::detail {

struct PingpongTile {
  static constexpr int BM = 128, BN = 128, BK = 64;  // a warpgroup's tile; rank per A stage
  static constexpr int kStages = 4;
  static constexpr int kMaxRankTiles = 8;  // rank <= 512: B^T stays resident
  static constexpr int kThreads = 384;     // producer warpgroup + two consumer warpgroups
  static constexpr int kA_Bytes = BM * BK * 2;
  static constexpr int kB_TileBytes = BN * BK * 2;  // 64 of the rank
  static constexpr int kStagingBytes = 8 * 16 * TmaTile::kStagingRowBytes;  // per consumer warp
  static constexpr int kBarriers = 2 * kStages + 3;
  static constexpr int kPairs = BN / 2;  // rotated pairs of a head of at most 128
  // per pair (float2 each): the factor steps of 8 and 64 positions, and either the factor step
  // from one item of a consumer warpgroup to its next (dense positions) or the turns per position
  static constexpr int kRopeBytes = kPairs * 3 * 8;
  // Carried factors are evaluated afresh (fp64 angles) every this many items of a warpgroup, so
  // the rounding of the stepping stays below ~1e-6 (131072 tokens of 8 heads: 32 items).
  static constexpr int kItemsPerAnchor = 32;
  static constexpr int smem_bytes(int rank_tiles) {
    return 1024 + rank_tiles * kB_TileBytes + kStages * kA_Bytes + kStagingBytes + kRopeBytes + 8 * kBarriers;
  }
};
static_assert(PingpongTile::smem_bytes(PingpongTile::kMaxRankTiles) <= 227 * 1024, "shared memory per SM");

template <class T, int HEAD_DIM, RopeMode MODE, bool TABLE>
__global__ void __launch_bounds__(PingpongTile::kThreads, 1)
    reconstruct_pingpong_kernel(const __grid_constant__ TmaReconstructArgs args) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Tile = PingpongTile;
  constexpr int BM = Tile::BM, BN = Tile::BN, BK = Tile::BK, STAGES = Tile::kStages;
  static_assert(BN % HEAD_DIM == 0 && HEAD_DIM / 2 <= Tile::kPairs, "tiles hold whole heads of 64 or 128");
  const ReconstructArgs& p = args.p;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* smem = reinterpret_cast<unsigned char*>((reinterpret_cast<std::uintptr_t>(smem_raw) + 1023) &
                                                         ~std::uintptr_t(1023));
  const int rank_tiles = (p.rank + BK - 1) / BK;
  unsigned char* bt_resident = smem;  // rank tile kt at kt * kB_TileBytes
  unsigned char* a_ring = bt_resident + rank_tiles * Tile::kB_TileBytes;
  unsigned char* staging = a_ring + STAGES * Tile::kA_Bytes;
  // The turns per position (fill_rope_turns) for positions from an array; for a dense range the
  // same bytes hold the factor step from one item of a warpgroup to its next.
  float2* turns = reinterpret_cast<float2*>(staging + Tile::kStagingBytes);
  float2* step_item = turns;
  float2* step8 = turns + Tile::kPairs;
  float2* step64 = step8 + Tile::kPairs;
  std::uint64_t* full = reinterpret_cast<std::uint64_t*>(step64 + Tile::kPairs);  // A stage loaded
  std::uint64_t* empty = full + STAGES;                                               // A stage consumed
  std::uint64_t* bt_loaded = empty + STAGES;
  std::uint64_t* products_issued = bt_loaded + 1;  // per consumer warpgroup, once per item

  const int tid = threadIdx.x;
  const int width = p.heads * HEAD_DIM;
  const int col_tiles = (width + BN - 1) / BN;
  const int slots = gridDim.x / col_tiles;  // the launch makes the grid col_tiles x slots
  const int n0 = static_cast<int>(blockIdx.x % col_tiles) * BN;
  const std::int64_t slot = blockIdx.x / col_tiles;
  const std::int64_t row_blocks = (p.tokens + BM - 1) / BM;
  // Item i of this CTA is row block slot + i * slots, computed by consumer warpgroup i % 2.
  const std::int64_t items = slot < row_blocks ? (row_blocks - slot + slots - 1) / slots : 0;

  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbarrier_init(&full[s], 1);   // the producer's arrive + the TMA bytes
      mbarrier_init(&empty[s], 1);  // the one warpgroup that used the stage
    }
    mbarrier_init(bt_loaded, 1);
    mbarrier_init(&products_issued[0], 1);
    mbarrier_init(&products_issued[1], 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  // Positions offset + token: each consumer thread carries the cos/sin factors of its first row
  // from item to item (2 * slots row blocks on), anchored in fp64 every kItemsPerAnchor items, and
  // steps to its other rows; evaluating them per item cost ~10% of the kernel at the headline
  // shape. (Evaluating them in the multiplying warpgroup, between its commit and wait, delayed
  // the stage hand-back and the next products: slower, see PERFORMANCE.md.)
  constexpr bool kRopeFactors = MODE != RopeMode::None && !TABLE;
  const bool consecutive = kRopeFactors && p.positions == nullptr;  // uniform over the grid
  bool turns_ok = false;  // every pair within kFp32RopeMaxTurns per position
  if constexpr (kRopeFactors) {
    fill_rope_steps(p.inv_freq, p.rotary_dim / 2, 8, step8);
    fill_rope_steps(p.inv_freq, p.rotary_dim / 2, 64, step64);
    if (consecutive)
      fill_rope_steps(p.inv_freq, p.rotary_dim / 2, 2 * slots * BM, step_item);
    else
      turns_ok = fill_rope_turns(p.inv_freq, p.rotary_dim / 2, turns);  // a CTA-wide barrier
  }
  __syncthreads();  // the last CTA-wide barrier: the roles below never meet again

  if (tid < 128) {  // producer warpgroup: one thread issues every copy
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (tid != 0 || items == 0) return;
    mbarrier_arrive_expect_tx(bt_loaded, rank_tiles * Tile::kB_TileBytes);
    for (int kt = 0; kt < rank_tiles; ++kt)
      tma_load_2d(bt_resident + kt * Tile::kB_TileBytes, &args.bt_map, kt * BK, n0, bt_loaded);
    int stage = 0;
    unsigned phase = 0;
    for (std::int64_t i = 0; i < items; ++i) {
      const int row0 = static_cast<int>(p.token_begin + (slot + i * slots) * BM);
      for (int kt = 0; kt < rank_tiles; ++kt) {
        mbarrier_wait(&empty[stage], phase ^ 1);  // a fresh barrier passes parity 1 at once
        mbarrier_arrive_expect_tx(&full[stage], Tile::kA_Bytes);
        tma_load_2d(a_ring + stage * Tile::kA_Bytes, &args.a_map, kt * BK, row0, &full[stage]);
        if (++stage == STAGES) stage = 0, phase ^= 1;
      }
    }
    return;
  }

  // Consumer warpgroup wg computes items wg, wg + 2, ...: rows [0, 64) of the item's 128 in
  // acc_top, rows [64, 128) in acc_bottom (wgmma m64n128 layout each).
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
  const int wg = tid / 128 - 1, warp = (tid / 32) & 3, lane = tid & 31;
  const std::uint32_t bt_base = smem_address(bt_resident), a_base = smem_address(a_ring);
  unsigned char* warp_staging = staging + (tid / 32 - 4) * 16 * TmaTile::kStagingRowBytes;
  T* out = static_cast<T*>(p.out);
  if (wg < items) mbarrier_wait(bt_loaded, 0);
  // The item loop is compiled twice, with and without carried factors: the 32 registers of the
  // factors spilled where they stayed live through the per-row path.
  auto consume_items = [&](auto carried_factors) {
    [[maybe_unused]] constexpr bool kCarried = decltype(carried_factors)::value;
    float acc_top[64], acc_bottom[64];
    [[maybe_unused]] float2 factors[HEAD_DIM / 8];  // (cos, sin) of this thread's first row, carried across items
    [[maybe_unused]] int since_anchor = 0;
    for (std::int64_t i = wg; i < items; i += 2) {
      // Take turns: item i starts once the other warpgroup has issued item i - 1. That keeps one
      // warpgroup multiplying while the other runs its epilogue, and it keeps the parity waits
      // below sound: a stage's `full` barrier is then never more than one phase behind.
      if (i > 0) mbarrier_wait(&products_issued[1 - wg], static_cast<unsigned>(((i - 1) / 2) & 1));
      // The ring is filled in item order, rank_tiles stages per item.
      const std::int64_t first = i * rank_tiles;
      int stage = static_cast<int>(first % STAGES);
      unsigned phase = static_cast<unsigned>((first / STAGES) & 1);
      const std::int64_t top_row0 = (slot + i * slots) * BM + warp * 16, bottom_row0 = top_row0 + 64;
      int previous = -1;
      for (int kt = 0; kt < rank_tiles; ++kt) {
        mbarrier_wait(&full[stage], phase);
        const std::uint32_t a_tile = a_base + stage * Tile::kA_Bytes;
        const std::uint32_t b_tile = bt_base + kt * Tile::kB_TileBytes;
        fence_accumulators(acc_top);
        fence_accumulators(acc_bottom);
        wgmma_fence();
        // Descriptors hold address / 16 in their low 14 bits: stepping 32 bytes of the rank (and 64
        // rows of A) is an add, which never carries out of the field below 227 KB of shared memory.
        const std::uint64_t a_desc = wgmma_descriptor(a_tile), b_desc = wgmma_descriptor(b_tile);
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
          const int accumulate = kt > 0 || kk > 0;
          wgmma_m64n128k16<T>(acc_top, a_desc + 2 * kk, b_desc + 2 * kk, accumulate);
          wgmma_m64n128k16<T>(acc_bottom, a_desc + (64 * 128 >> 4) + 2 * kk, b_desc + 2 * kk, accumulate);
        }
        wgmma_commit();
        wgmma_wait<1>();  // the previous stage's products are done: hand it back to the producer
        fence_accumulators(acc_top);
        fence_accumulators(acc_bottom);
        if (previous >= 0 && (tid & 127) == 0) mbarrier_arrive(&empty[previous]);
        previous = stage;
        if (++stage == STAGES) stage = 0, phase ^= 1;
      }
      if ((tid & 127) == 0) mbarrier_arrive(&products_issued[wg]);
      wgmma_wait<0>();
      fence_accumulators(acc_top);
      fence_accumulators(acc_bottom);
      if ((tid & 127) == 0) mbarrier_arrive(&empty[previous]);

      // Epilogue, while the other warpgroup's products run on the tensor cores. The top block is
      // rotated and its stores issued before the bottom block is rotated: the bottom block's
      // staging waits for the top block's copies to read the buffer, and the rotation hides that.
      if constexpr (MODE != RopeMode::None && kCarried) {
        if (since_anchor == 0)
          rope_anchor_factors<HEAD_DIM, MODE>(p, p.position_offset + p.token_begin + top_row0 + (lane >> 2), factors);
        else
          rope_advance_factors<HEAD_DIM, MODE>(p, step_item, factors);
        if (++since_anchor == Tile::kItemsPerAnchor) since_anchor = 0;
      }
      // Each row at its own position in the per-row path (fp64 angles read inv_freq from the
      // parameters: rare).
      [[maybe_unused]] const float2* fp32_turns = turns_ok ? turns : nullptr;
      auto rotate = [&](float(&acc)[64], std::int64_t row0, const float2* offset) {
        if constexpr (MODE != RopeMode::None) {
          if constexpr (kCarried)
            rope_consecutive_rows<HEAD_DIM, MODE, BN>(p, factors, offset, step8, acc);
          else
            rope_rows<HEAD_DIM, MODE, TABLE, BN>(p, p.inv_freq, fp32_turns, acc, row0);
        }
      };
      auto store = [&](float(&acc)[64], std::int64_t row0) {
        if (args.out_by_tma)
          store_rows_tma<T, HEAD_DIM>(p, &args.out_map, acc, row0, n0, width, warp_staging);
        else
          store_rows<T, HEAD_DIM, BN>(p, acc, row0, n0, width, warp_staging, out);
      };
      rotate(acc_top, top_row0, nullptr);
      store(acc_top, top_row0);
      rotate(acc_bottom, bottom_row0, step64);
      store(acc_bottom, bottom_row0);
    }
  };
  if (consecutive)  // false at compile time unless kRopeFactors
    consume_items(std::bool_constant<kRopeFactors>{});
  else
    consume_items(std::false_type{});
  if (args.out_by_tma && lane == 0) bulk_wait_all();  // the staging buffers stay valid until read
#endif
}

/// Whether the ping-pong kernel takes a launch: the TMA kernel's conditions, whole heads in a
/// 128-column tile, and B^T's 128 x rank block small enough to stay in shared memory.
inline bool pingpong_kernel_applies(const ReconstructArgs& args) {
  return tma_kernel_applies(args) && args.head_dim <= PingpongTile::BN &&
         (args.rank + PingpongTile::BK - 1) / PingpongTile::BK <= PingpongTile::kMaxRankTiles;
}

template <class T, int HEAD_DIM, RopeMode MODE, bool TABLE>
inline void launch_pingpong_typed(const ReconstructArgs& args, cudaStream_t stream) {
  using Tile = PingpongTile;
  auto kernel = reconstruct_pingpong_kernel<T, HEAD_DIM, MODE, TABLE>;
  static std::uint64_t smem_configured = 0;  // per instantiation
  allow_shared_memory(kernel, Tile::smem_bytes(Tile::kMaxRankTiles), smem_configured);
  TmaReconstructArgs tma = tma_arguments<T>(args, Tile::BM, Tile::BN);
  tma.out_by_tma = output_tensor_map<T>(args, tma.out_map) ? 1 : 0;
  const std::int64_t width = std::int64_t(args.heads) * HEAD_DIM;
  const int sms = multiprocessor_count();
  const std::int64_t col_tiles = (width + Tile::BN - 1) / Tile::BN;
  const std::int64_t row_blocks = (args.tokens + Tile::BM - 1) / Tile::BM;
  // As many slots as fill the SMs, but no CTA without a row block.
  const std::int64_t slots = std::clamp<std::int64_t>(sms / col_tiles, 1, row_blocks);
  XKV_CHECK(col_tiles * slots <= 0x7fffffff, InvalidArgument,
            "reconstruct: " << args.heads << " heads of " << HEAD_DIM << " is too wide");
  const int rank_tiles = static_cast<int>((args.rank + Tile::BK - 1) / Tile::BK);
  kernel<<<static_cast<unsigned>(col_tiles * slots), Tile::kThreads, Tile::smem_bytes(rank_tiles), stream>>>(tma);
  XKV_CUDA_CHECK(cudaGetLastError());
}

// ------------------------------------------------------------------ dispatch
/// Dense ranges run the ping-pong kernel when B^T fits in shared memory (rank <= 512, head_dim
/// <= 128) and the cooperative TMA kernel otherwise; gathered selections (head_dim 64 or 128) run
/// the warp-specialised gather kernel.
template <class T, int HEAD_DIM, RopeMode MODE, bool TABLE>
inline void launch_wgmma_typed(const ReconstructArgs& args, cudaStream_t stream) {
  if (args.tokens == 0) return;
  if constexpr (HEAD_DIM <= PingpongTile::BN) {
    if (pingpong_kernel_applies(args))
      return launch_pingpong_typed<T, HEAD_DIM, MODE, TABLE>(args, stream);
  }
  if (tma_kernel_applies(args)) return launch_tma_typed<T, HEAD_DIM, MODE, TABLE>(args, stream);
  if constexpr (HEAD_DIM <= GatherTile::BN)
    launch_gather_typed<T, HEAD_DIM, MODE, TABLE>(args, stream);
  else
    XKV_CHECK(false, InvalidArgument,
              "reconstruct: head_dim " << HEAD_DIM << " on the wgmma path needs a dense range over fewer than 2^31 rows "
                                       << "of A, got a_rows=" << args.a_rows << (args.token_indices ? " (gathered)" : ""));
}

template <class T, int HEAD_DIM>
inline void dispatch_wgmma_rope(const ReconstructArgs& args, RopeMode mode, bool table, cudaStream_t stream) {
  switch (mode) {
    case RopeMode::None: return launch_wgmma_typed<T, HEAD_DIM, RopeMode::None, false>(args, stream);
    case RopeMode::HalfSplit:
      return table ? launch_wgmma_typed<T, HEAD_DIM, RopeMode::HalfSplit, true>(args, stream)
                   : launch_wgmma_typed<T, HEAD_DIM, RopeMode::HalfSplit, false>(args, stream);
    case RopeMode::Interleaved:
      return table ? launch_wgmma_typed<T, HEAD_DIM, RopeMode::Interleaved, true>(args, stream)
                   : launch_wgmma_typed<T, HEAD_DIM, RopeMode::Interleaved, false>(args, stream);
  }
}

template <class T>
inline void dispatch_wgmma(const ReconstructArgs& args, RopeMode mode, bool table, cudaStream_t stream) {
  XKV_REQUIRE(wgmma_supports(args.head_dim, mode, args.rotary_dim, args.token_indices != nullptr),
              "reconstruct: the wgmma kernel does not handle head_dim " << args.head_dim << " with rotary dims "
                                                                        << args.rotary_dim);
  if (args.head_dim == 64) return dispatch_wgmma_rope<T, 64>(args, mode, table, stream);
  if (args.head_dim == 128) return dispatch_wgmma_rope<T, 128>(args, mode, table, stream);
  return dispatch_wgmma_rope<T, 256>(args, mode, table, stream);  // dense only (checked above)
}

}  // namespace xkv::cuda::detail
