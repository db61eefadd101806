// Hopper (sm_90a) persistent kernel of the fused reconstruct-then-RoPE for dense token ranges.
//
// Why this shape: a tiled kernel in which all threads load with cp.async, meet at a CTA barrier
// and drain wgmma at every k-tile ran the headline case at ~1.9x cuBLAS. Here one thread streams
// A and B^T tiles with TMA into a ring of stages guarded by mbarriers, two consumer warpgroups
// keep wgmma fed (the ring's next stage is loaded while they multiply), and one CTA per SM walks
// whole row blocks persistently, so the next tile's loads run under the current tile's epilogue
// and a row block's RoPE factors are computed once for all its column tiles.
// Tile: 128 tokens x 256 columns (one head of 256, two of 128 or four of 64), 64 of the rank per
// stage.
// Gathered selections cannot use tiled TMA copies (their rows are arbitrary): the tiled kernel
// of reconstruct_kernels_sm90.cuh keeps them.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <type_traits>

#include "xkv/cuda/reconstruct_kernels_sm90.cuh"

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
  static constexpr int kStagingRowBytes = 256;
  static constexpr int kStagingBytes = kConsumers * 4 * 16 * kStagingRowBytes;
  static constexpr int kSmemBytes =
      1024 + kStages * kStageBytes + kStagingBytes + 8 * kMaxRopePairs + 2 * kStages * 8;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per SM");
};

/// Kernel parameter: the two TMA descriptors (64-byte aligned, in parameter space) and the args.
struct TmaReconstructArgs {  // 64-byte aligned through CUtensorMap
  CUtensorMap a_map;   ///< A: rank (inner) x a_rows, box 64 x BM, 128-byte swizzle
  CUtensorMap bt_map;  ///< B^T: rank (inner) x heads*head_dim, box 64 x BN
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
/// Pair index of the thread's factor `f` (0..HEAD_DIM/8-1) for lane quad position q.
template <RopeMode MODE>
__device__ __forceinline__ int rope_pair_of(int f, int q) {
  if constexpr (MODE == RopeMode::HalfSplit) return 8 * (f / 2) + 2 * q + f % 2;  // block f/2, column 2q + f%2
  return 4 * f + q;                                                                // interleaved: block f
}

/// Rotates row `half` of a warp's accumulators (wgmma layout, COLS columns = COLS / HEAD_DIM heads)
/// at `position`: each cos/sin pair is evaluated once and applied to every head. False if a
/// position is outside the caller's table (TABLE).
template <int HEAD_DIM, RopeMode MODE, bool TABLE, int COLS>
__device__ __forceinline__ bool rope_row(const ReconstructArgs& p, const double* inv_freq, std::int64_t position,
                                         int q, int half, float (&acc)[COLS / 2]) {
  constexpr int kBlocksPerHead = HEAD_DIM / 8, kHeads = COLS / HEAD_DIM;
  bool ok = true;
#pragma unroll
  for (int f = 0; f < HEAD_DIM / 8; ++f) {
    if (MODE == RopeMode::Interleaved && 8 * f >= p.rotary_dim) break;  // partial rotary: the rest stays
    float s = 0.f, c = 1.f;
    ok &= rope_cos_sin<TABLE>(p, inv_freq, position, rope_pair_of<MODE>(f, q), s, c);
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
  return ok;
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
  constexpr int kRowBytes = TmaTile::kStagingRowBytes;
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
  double* inv_freq = reinterpret_cast<double*>(staging + Tile::kStagingBytes);
  std::uint64_t* full = reinterpret_cast<std::uint64_t*>(inv_freq + kMaxRopePairs);  // stage loaded
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
  if constexpr (MODE != RopeMode::None && !TABLE)
    for (int i = tid; i < p.rotary_dim / 2; i += Tile::kThreads) inv_freq[i] = p.inv_freq[i];
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
  const int cw = tid / 128 - 1, warp = (tid / 32) & 3, lane = tid & 31, q = lane & 3;
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

    // RoPE on the accumulators in fp32. Bad positions (outside the caller's table): NaN rows.
    if constexpr (MODE != RopeMode::None) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const std::int64_t t = m0 + cw * 64 + warp * 16 + (lane >> 2) + 8 * half;
        std::int64_t token = 0, position = 0;
        if (t < p.tokens) resolve_token(p, t, token, position);  // dense: validated on the host
        const bool ok = rope_row<HEAD_DIM, MODE, TABLE, BN>(p, inv_freq, position, q, half, acc);
        if constexpr (TABLE) {
          if (!ok) {
            if (q == 0 && t < p.tokens && p.error_flag) atomicOr(p.error_flag, kBadPosition);
            poison_row<BN>(acc, half);
          }
        }
      }
    }
    // Output row of staging row `lane & 15` of this warp (both half-warps hold the same 16).
    std::int64_t row_base = -1;
    const std::int64_t t = m0 + cw * 64 + warp * 16 + (lane & 15);
    if (t < p.tokens) {
      row_base = output_row_base(p, t);
      if (row_base < 0 && n0 == 0 && lane < 16 && p.error_flag) atomicOr(p.error_flag, kBadOutputRow);
    }
#pragma unroll
    for (int round = 0; round < BN / 128; ++round) {
      if (n0 + 128 * round >= width) break;  // past the last head (uniform)
      store_round<T, HEAD_DIM, BN>(acc, round, n0, width, warp_staging, row_base, out, p.out_head_stride);
    }
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

/// Whether the TMA kernel takes a launch: a dense range whose rows TMA can address (32-bit
/// coordinates).
inline bool tma_kernel_applies(const ReconstructArgs& args) {
  return args.token_indices == nullptr && args.a_rows < (std::int64_t{1} << 31) - TmaTile::BM;
}

template <class T, int HEAD_DIM, RopeMode MODE, bool TABLE>
inline void launch_tma_typed(const ReconstructArgs& args, cudaStream_t stream) {
  using Tile = TmaTile;
  auto kernel = reconstruct_tma_kernel<T, HEAD_DIM, MODE, TABLE>;
  static std::uint64_t smem_configured = 0;  // per instantiation
  allow_shared_memory(kernel, Tile::kSmemBytes, smem_configured);
  TmaReconstructArgs tma{};
  tma.p = args;
  const std::int64_t width = std::int64_t(args.heads) * HEAD_DIM;
  tma.a_map = operand_tensor_map<T>(args.a, args.rank, args.a_rows, args.lda, Tile::BM);
  tma.bt_map = operand_tensor_map<T>(args.bt, args.rank, width, args.ldbt, Tile::BN);
  int device = 0, sms = 0;
  XKV_CUDA_CHECK(cudaGetDevice(&device));
  XKV_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const std::int64_t tiles = (args.tokens + Tile::BM - 1) / Tile::BM * ((width + Tile::BN - 1) / Tile::BN);
  const unsigned grid = static_cast<unsigned>(std::min<std::int64_t>(tiles, sms));  // persistent
  kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(tma);
  XKV_CUDA_CHECK(cudaGetLastError());
}

// ------------------------------------------------------------------ dispatch
/// Dense ranges run the persistent TMA kernel. Gathered selections run the tiled kernel with its
/// 2-warpgroup tile, two CTAs per SM: a warp-specialised variant (a cp.async-gathering producer
/// warpgroup, five stages, one 128 x 128 tile per CTA and one CTA per SM) was slower on an H200:
/// 15.5 against 13.5 us for 2048 of 131072 tokens, 47 against 31 us for 8192.
template <class T, int HEAD_DIM, RopeMode MODE, bool TABLE>
inline void launch_wgmma_typed(const ReconstructArgs& args, cudaStream_t stream) {
  if (args.tokens == 0) return;
  if (tma_kernel_applies(args)) return launch_tma_typed<T, HEAD_DIM, MODE, TABLE>(args, stream);
  if constexpr (HEAD_DIM <= 128)
    launch_wgmma_tile<T, HEAD_DIM, MODE, TABLE, 2>(args, stream);
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
