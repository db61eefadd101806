// Hopper (sm_90a) persistent cooperative kernel of the fused reconstruct-then-RoPE for dense
// token ranges that the ping-pong kernel (reconstruct_kernels_pingpong.cuh) does not take: rank
// above 512 (B^T too large to stay in shared memory) or head_dim 256. Also the TMA and mbarrier
// helpers both kernels use.
//
// Why this shape: a tiled kernel in which all threads load with cp.async, meet at a CTA barrier
// and drain wgmma at every k-tile ran the headline case at ~1.9x cuBLAS. Here one thread streams
// A and B^T tiles with TMA into a ring of stages guarded by mbarriers, two consumer warpgroups
// keep wgmma fed (the ring's next stage is loaded while they multiply), and one CTA per SM walks
// the tiles persistently, so the next tile's loads run under the current tile's epilogue.
// Tile: 128 tokens x 256 columns (one head of 256, two of 128 or four of 64), 64 of the rank per
// stage.
// Gathered selections cannot use tiled TMA copies for A (their rows are arbitrary): the
// warp-specialised kernel of reconstruct_kernels_gather.cuh gathers them with cp.async.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <type_traits>

#include "xkv/cuda/reconstruct_epilogue_sm90.cuh"

namespace xkv::cuda::detail {
/// Keeps the compiler from moving accumulator accesses across the asynchronous wgmma.
template <int N>
__device__ __forceinline__ void fence_accumulators(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
}  // namespace xkv::cuda::detail

namespace xkv::cuda::detail {

struct TmaTile {
  static constexpr int BM = 128, BN = 256, BK = 64;
  static constexpr int kStages = 4;
  static constexpr int kConsumers = 2;                 // warpgroups of 64 rows each
  static constexpr int kThreads = 128 * (kConsumers + 1);  // + the producer warpgroup
  static constexpr int kA_Bytes = BM * BK * 2;
  static constexpr int kB_Bytes = BN * BK * 2;
  static constexpr int kStageBytes = kA_Bytes + kB_Bytes;
  // Output staging: per consumer warp 16 rows x 128 columns (half the tile's width per round).
  static constexpr int kStagingRowBytes = kEpilogueStagingRowBytes;
  static constexpr int kStagingBytes = kConsumers * 4 * 16 * kStagingRowBytes;
  static constexpr int kSmemBytes =
      1024 + kStages * kStageBytes + kStagingBytes + 8 * kMaxRopePairs + 2 * kStages * 8;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per SM");
};

/// Kernel parameter: the two TMA descriptors (64-byte aligned, in parameter space) and the args.
struct TmaReconstructArgs {  // 64-byte aligned through CUtensorMap
  CUtensorMap a_map;   ///< A: rank (inner) x a_rows, box 64 x BM, 128-byte swizzle
  CUtensorMap bt_map;  ///< B^T: rank (inner) x heads*head_dim, box 64 x BN
  /// The output as head_dim (inner) x rows x heads, box 64 x 16 x 1, 128-byte swizzle, rows clipped
  /// at output_row_offset + tokens; valid when out_by_tma (plain token- or head-major output).
  CUtensorMap out_map;
  int out_by_tma;
  ReconstructArgs p;
};

// ------------------------------------------------------------------ mbarrier and TMA helpers
__device__ __forceinline__ void mbarrier_init(std::uint64_t* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_address(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbarrier_arrive_expect_tx(std::uint64_t* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_address(bar)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbarrier_arrive(std::uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_address(bar)) : "memory");
}
/// Spins until the phase of parity `parity` has completed.
__device__ __forceinline__ void mbarrier_wait(std::uint64_t* bar, unsigned parity) {
  asm volatile(
      "{\n.reg .pred done;\nLAB_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra LAB_WAIT;\n}\n" ::"r"(smem_address(bar)),
      "r"(parity)
      : "memory");
}
/// 2-D tiled TMA load of the box at (inner c0, outer c1) into shared memory; completes on `bar`.
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, int c0, int c1, std::uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          smem_address(dst)),
      "l"(reinterpret_cast<std::uint64_t>(map)), "r"(c0), "r"(c1), "r"(smem_address(bar))
      : "memory");
}


// wgmma m64n256k16, fp32 accumulators, both operands K-major in shared memory.
#define XKV_WGMMA_M64N256K16(TYPE)                                                             \
  asm volatile(                                                                              \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"                                          \
      "wgmma.mma_async.sync.aligned.m64n256k16.f32." TYPE "." TYPE " {"                      \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "    \
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "    \
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "    \
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "    \
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "    \
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "    \
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "    \
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"    \
      "}, %128, %129, p, 1, 1, 0, 0;\n}\n"                                                   \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
      "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
      "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
      "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
      "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
      "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
      "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), \
      "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
      "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
      "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
      "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), \
      "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), \
      "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
      "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
      "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127]) \
      : "l"(desc_a), "l"(desc_b), "r"(accumulate))

template <class T>
/// `accumulate` 0 overwrites d (the first product of a tile), 1 adds to it.
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[128], std::uint64_t desc_a, std::uint64_t desc_b,
                                                 int accumulate) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    XKV_WGMMA_M64N256K16("bf16");
  else
    XKV_WGMMA_M64N256K16("f16");
#endif
}
#undef XKV_WGMMA_M64N256K16

// ------------------------------------------------------------------ the kernel
template <class T, int HEAD_DIM, RopeMode MODE, bool TABLE>
__global__ void __launch_bounds__(TmaTile::kThreads, 1)
    reconstruct_tma_kernel(const __grid_constant__ TmaReconstructArgs args) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Tile = TmaTile;
  constexpr int BM = Tile::BM, BN = Tile::BN, BK = Tile::BK, STAGES = Tile::kStages;
  static_assert(BN % HEAD_DIM == 0, "tiles hold whole heads of 64, 128 or 256");
  const ReconstructArgs& p = args.p;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* smem = reinterpret_cast<unsigned char*>((reinterpret_cast<std::uintptr_t>(smem_raw) + 1023) &
                                                         ~std::uintptr_t(1023));
  unsigned char* staging = smem + STAGES * Tile::kStageBytes;
  float2* turns = reinterpret_cast<float2*>(staging + Tile::kStagingBytes);  // fill_rope_turns
  std::uint64_t* full = reinterpret_cast<std::uint64_t*>(turns + kMaxRopePairs);  // stage loaded
  std::uint64_t* empty = full + STAGES;                                               // stage consumed

  const int tid = threadIdx.x;
  const int width = p.heads * HEAD_DIM;
  const int n_tiles = (width + BN - 1) / BN;
  const int k_tiles = (p.rank + BK - 1) / BK;
  // Tiles in row-block order: the CTAs working at one time share A rows in L2.
  const std::int64_t tiles = (p.tokens + BM - 1) / BM * n_tiles;

  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbarrier_init(&full[s], 1);                  // the producer's arrive + the TMA bytes
      mbarrier_init(&empty[s], Tile::kConsumers);  // one arrive per consumer warpgroup
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  bool turns_ok = false;  // fp32 angles: every pair within kFp32RopeMaxTurns per position
  if constexpr (MODE != RopeMode::None && !TABLE)
    turns_ok = fill_rope_turns(p.inv_freq, p.rotary_dim / 2, turns);  // a CTA-wide barrier
  __syncthreads();  // the last CTA-wide barrier: the roles below never meet again

  if (tid < 128) {  // producer warpgroup: one thread issues every copy
    // Registers move to the consumers, whose 128 accumulators and RoPE epilogue need them.
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (tid != 0) return;
    int stage = 0;
    unsigned phase = 0;
    for (std::int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
      const int row0 = static_cast<int>(p.token_begin + tile / n_tiles * BM);
      const int col0 = static_cast<int>(tile % n_tiles) * BN;
      for (int kt = 0; kt < k_tiles; ++kt) {
        mbarrier_wait(&empty[stage], phase ^ 1);  // a fresh barrier passes parity 1 at once
        unsigned char* dst = smem + stage * Tile::kStageBytes;
        mbarrier_arrive_expect_tx(&full[stage], Tile::kStageBytes);
        tma_load_2d(dst, &args.a_map, kt * BK, row0, &full[stage]);
        tma_load_2d(dst + Tile::kA_Bytes, &args.bt_map, kt * BK, col0, &full[stage]);
        if (++stage == STAGES) stage = 0, phase ^= 1;
      }
    }
    return;
  }

  // Consumer warpgroup cw computes rows [64 cw, 64 cw + 64) of each tile. Accumulator i of this
  // thread: row 16*(warp%4) + lane/4 + 8*((i/2)%2), column 8*(i/4) + 2*(lane%4) + i%2.
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
  const int cw = tid / 128 - 1, warp = (tid / 32) & 3;
  const std::uint32_t smem_base = smem_address(smem);
  unsigned char* warp_staging = staging + (tid / 32 - 4) * 16 * Tile::kStagingRowBytes;
  T* out = static_cast<T*>(p.out);
  int stage = 0;
  unsigned phase = 0;
  float acc[128];
  for (std::int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const std::int64_t m0 = tile / n_tiles * BM;
    const int n0 = static_cast<int>(tile % n_tiles) * BN;
    int previous = -1;
    for (int kt = 0; kt < k_tiles; ++kt) {
      mbarrier_wait(&full[stage], phase);
      const std::uint32_t a_tile = smem_base + stage * Tile::kStageBytes + cw * 64 * 128;
      const std::uint32_t b_tile = smem_base + stage * Tile::kStageBytes + Tile::kA_Bytes;
      fence_accumulators(acc);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BK / 16; ++kk)
        wgmma_m64n256k16<T>(acc, wgmma_descriptor(a_tile + kk * 32), wgmma_descriptor(b_tile + kk * 32),
                            kt > 0 || kk > 0);
      wgmma_commit();
      wgmma_wait<1>();  // the previous stage's products are done: hand it back to the producer
      fence_accumulators(acc);
      if (previous >= 0 && (tid & 127) == 0) mbarrier_arrive(&empty[previous]);
      previous = stage;
      if (++stage == STAGES) stage = 0, phase ^= 1;
    }
    wgmma_wait<0>();
    fence_accumulators(acc);
    if ((tid & 127) == 0) mbarrier_arrive(&empty[previous]);

    tile_epilogue<T, HEAD_DIM, MODE, TABLE, BN>(p, p.inv_freq, turns_ok ? turns : nullptr, acc, m0 + cw * 64 + warp * 16,
                                                 n0, width, warp_staging, out);
  }
#endif
}

// ------------------------------------------------------------------ host side
/// cuTensorMapEncodeTiled through the runtime's driver entry point (no link to libcuda).
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    XKV_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found));
    XKV_CHECK(found == cudaDriverEntryPointSuccess && fn != nullptr, Device,
              "reconstruct: the driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encode;
}

/// Descriptor of a row-major [rows x ld] operand read as boxes of 64 elements x box_rows rows,
/// 128-byte swizzled (the layout wgmma_descriptor expects); elements past `inner` or `rows` read 0.
template <class T>
inline CUtensorMap operand_tensor_map(const void* base, std::int64_t inner, std::int64_t rows, std::int64_t ld,
                                      int box_rows) {
  CUtensorMap map{};
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(inner), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(ld) * sizeof(T)};
  const cuuint32_t box[2] = {64, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUtensorMapDataType type =
      std::is_same_v<T, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  const CUresult status = tensor_map_encoder()(&map, type, 2, const_cast<void*>(base), dims, strides, box,
                                               element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                               CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  XKV_CHECK(status == CUDA_SUCCESS, Device,
            "reconstruct: cuTensorMapEncodeTiled failed (" << static_cast<int>(status) << ") for " << rows
                                                           << " rows of " << inner << ", ld " << ld);
  return map;
}

/// The output as a 3-D tensor (head_dim, rows, heads) for TMA stores of 64 x box_rows boxes
/// (store_rows_tma: 16, rope_store_halves_tma: 8), or false when the output is paged or indirect or
/// its strides or base do not suit TMA. Rows are clipped at
/// output_row_offset + tokens, so a store never reaches rows past the selection.
template <class T>
inline bool output_tensor_map(const ReconstructArgs& args, CUtensorMap& map, cuuint32_t box_rows = 16) {
  const std::int64_t bytes = sizeof(T);
  if (args.page_table != nullptr || args.output_rows != nullptr || args.head_dim < 64) return false;
  if (reinterpret_cast<std::uintptr_t>(args.out) % 16 != 0 || args.out_token_stride * bytes % 16 != 0 ||
      args.out_head_stride * bytes % 16 != 0)
    return false;
  const std::int64_t rows = args.output_row_offset + args.tokens;
  if (rows >= (std::int64_t{1} << 31)) return false;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(args.head_dim), static_cast<cuuint64_t>(rows),
                              static_cast<cuuint64_t>(args.heads)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(args.out_token_stride * bytes),
                                 static_cast<cuuint64_t>(args.out_head_stride * bytes)};
  const cuuint32_t box[3] = {64, box_rows, 1};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  const CUtensorMapDataType type =
      std::is_same_v<T, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  const CUresult status = tensor_map_encoder()(&map, type, 3, args.out, dims, strides, box, element_strides,
                                               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                               CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return status == CUDA_SUCCESS;  // else the per-row stores, which take any layout
}

/// Whether the TMA kernel takes a launch: a dense range whose rows TMA can address (32-bit
/// coordinates).
inline bool tma_kernel_applies(const ReconstructArgs& args) {
  return args.token_indices == nullptr && args.a_rows < (std::int64_t{1} << 31) - TmaTile::BM;
}

/// The TMA kernels' parameter: args plus the descriptors of A (boxes of a_box_rows rows) and B^T
/// (boxes of bt_box_rows rows); no TMA output (out_by_tma = 0).
template <class T>
inline TmaReconstructArgs tma_arguments(const ReconstructArgs& args, int a_box_rows, int bt_box_rows) {
  TmaReconstructArgs tma{};
  tma.p = args;
  const std::int64_t width = std::int64_t(args.heads) * args.head_dim;
  tma.a_map = operand_tensor_map<T>(args.a, args.rank, args.a_rows, args.lda, a_box_rows);
  tma.bt_map = operand_tensor_map<T>(args.bt, args.rank, width, args.ldbt, bt_box_rows);
  return tma;
}

inline int multiprocessor_count() {
  int device = 0, sms = 0;
  XKV_CUDA_CHECK(cudaGetDevice(&device));
  XKV_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

template <class T, int HEAD_DIM, RopeMode MODE, bool TABLE>
inline void launch_tma_typed(const ReconstructArgs& args, cudaStream_t stream) {
  using Tile = TmaTile;
  auto kernel = reconstruct_tma_kernel<T, HEAD_DIM, MODE, TABLE>;
  static std::uint64_t smem_configured = 0;  // per instantiation
  allow_shared_memory(kernel, Tile::kSmemBytes, smem_configured);
  const TmaReconstructArgs tma = tma_arguments<T>(args, Tile::BM, Tile::BN);
  const std::int64_t width = std::int64_t(args.heads) * HEAD_DIM;
  const int sms = multiprocessor_count();
  const std::int64_t tiles = (args.tokens + Tile::BM - 1) / Tile::BM * ((width + Tile::BN - 1) / Tile::BN);
  const unsigned grid = static_cast<unsigned>(std::min<std::int64_t>(tiles, sms));  // persistent
  kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(tma);
  XKV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace xkv::cuda::detail
