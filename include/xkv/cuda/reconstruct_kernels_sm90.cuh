// Hopper (sm_90a) kernel of the fused reconstruct-then-RoPE: the same contract as
// reconstruct_gemm_kernel, with the products on wgmma and RoPE applied to the accumulators in
// registers.
//
// CTA tile 128 tokens x 128 columns (one head of 128 or two of 64), warpgroups of 64 rows.
// A rows (gathered or dense) and B^T rows go to shared memory with cp.async in the 128-byte
// swizzled K-major layout wgmma reads through its descriptors. The short tile runs two CTAs per
// SM, so one CTA's epilogue overlaps the other's products.
// Build only for sm_90a (the wgmma instructions); the kernel body is empty elsewhere.
#pragma once

#include "xkv/cuda/reconstruct_kernels.cuh"

namespace xkv::cuda::detail {

/// WARPGROUPS warpgroups of 64 rows each: 2 (128 x 128 tile, two CTAs per SM, three stages) is
/// the one launched; 4 (256 x 128, one CTA per SM, four stages) is kept for experiments with
/// taller tiles, which re-read B^T from L2 half as often (see launch_wgmma_typed).
template <int WARPGROUPS>
struct WgmmaTile {
  static constexpr int kThreads = 128 * WARPGROUPS;
  static constexpr int kMinBlocks = WARPGROUPS == 2 ? 2 : 1;
  static constexpr int BM = 64 * WARPGROUPS, BN = 128, BK = 64;
  static constexpr int kStages = WARPGROUPS == 2 ? 3 : 4;
  static constexpr int kA_Bytes = BM * BK * 2;  // BM rows of 128 B
  static constexpr int kB_Bytes = BN * BK * 2;
  static constexpr int kStageBytes = kA_Bytes + kB_Bytes;  // A tile, then B^T tile
  static constexpr int kPipelineBytes = kStages * kStageBytes;
  static constexpr int kOutStride = BN + 8;  // bf16/fp16 staging row: +16 B keeps 4-byte stores conflict-free
  static constexpr int kRowInfoBytes = BM * (8 + 8 + 4) + 8 * kMaxRopePairs;
  static constexpr int kSmemBytes = 1024 + kPipelineBytes + kRowInfoBytes;  // 1024: alignment slack
  static constexpr int kA_Loads = BM * 8 / kThreads;  // 16-byte chunks per thread per stage
  static constexpr int kB_Loads = BN * 8 / kThreads;
  static_assert(BM * kOutStride * 2 <= kPipelineBytes, "staging fits the pipeline buffers");
  static_assert(kSmemBytes * kMinBlocks <= 227 * 1024, "shared memory per SM");
};

// ------------------------------------------------------------------ wgmma helpers
/// Shared-memory matrix descriptor: K-major, 128-byte swizzle, 8-row groups 1024 B apart.
__device__ __forceinline__ std::uint64_t wgmma_descriptor(std::uint32_t smem_addr) {
  std::uint64_t desc = (smem_addr & 0x3FFFF) >> 4;
  desc |= std::uint64_t(1) << 16;             // leading byte offset (unused with this swizzle)
  desc |= std::uint64_t(1024 >> 4) << 32;     // stride byte offset
  desc |= std::uint64_t(1) << 62;             // 128-byte swizzle
  return desc;
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
/// Keeps the compiler from moving accumulator accesses across the asynchronous wgmma.
__device__ __forceinline__ void fence_operands(float (&d)[64]) {
#pragma unroll
  for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
/// cp.async writes (generic proxy) must be visible to wgmma reads (async proxy).
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

template <class T>
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], std::uint64_t desc_a, std::uint64_t desc_b,
                                                 int accumulate = 1);
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
template <>
__device__ __forceinline__ void wgmma_m64n128k16<__nv_bfloat16>(float (&d)[64], std::uint64_t desc_a,
                                                                  std::uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}
template <>
__device__ __forceinline__ void wgmma_m64n128k16<__half>(float (&d)[64], std::uint64_t desc_a,
                                                                  std::uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}
#endif

/// Byte offset of 16-byte chunk `chunk` of row `row` in a 128-byte-swizzled operand tile.
__device__ __forceinline__ int swizzled_offset(int row, int chunk) { return row * 128 + ((chunk ^ (row & 7)) << 4); }

// ------------------------------------------------------------------ the kernel
template <class T, int HEAD_DIM, RopeMode MODE, bool TABLE, int WARPGROUPS>
__global__ void __launch_bounds__(WgmmaTile<WARPGROUPS>::kThreads, WgmmaTile<WARPGROUPS>::kMinBlocks)
    reconstruct_wgmma_kernel(const __grid_constant__ ReconstructArgs p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Tile = WgmmaTile<WARPGROUPS>;
  constexpr int BM = Tile::BM, BN = Tile::BN, BK = Tile::BK, STAGES = Tile::kStages;
  static_assert(HEAD_DIM == 64 || HEAD_DIM == 128, "wgmma tiles hold whole heads of 64 or 128");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* smem = reinterpret_cast<unsigned char*>((reinterpret_cast<std::uintptr_t>(smem_raw) + 1023) &
                                                         ~std::uintptr_t(1023));
  std::int64_t* row_out = reinterpret_cast<std::int64_t*>(smem + Tile::kPipelineBytes);
  std::int64_t* row_pos = row_out + BM;
  double* inv_freq = reinterpret_cast<double*>(row_pos + BM);
  int* row_ok = reinterpret_cast<int*>(inv_freq + kMaxRopePairs);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = tid >> 7;
  const int width = p.heads * HEAD_DIM;
  const int n_tiles = (width + BN - 1) / BN;
  const std::int64_t m0 = static_cast<std::int64_t>(blockIdx.x / n_tiles) * BM;
  const int n0 = static_cast<int>(blockIdx.x % n_tiles) * BN;
  const T* a = static_cast<const T*>(p.a);
  const T* bt = static_cast<const T*>(p.bt);
  // Launched as a programmatic dependent of the stream's previous kernel: nothing is written
  // before that kernel has completed and its writes are visible, and nothing is read before
  // either unless the caller says that kernel does not write the inputs (early_reads): then the
  // rows are staged and the products run while it finishes, and the wait comes after the k-loop.
  if (!p.early_reads) asm volatile("griddepcontrol.wait;\n" ::: "memory");

  const int row_errors = stage_tile_rows<BM, Tile::kThreads, MODE != RopeMode::None && !TABLE>(
      p, m0, tid, row_out, row_pos, row_ok, inv_freq);
  if (!p.early_reads) report_errors(p, row_errors);
  // With early reads the stream's next kernel may be scheduled from here on: it writes nothing
  // before this grid has completed, and if its inputs are ready too its rows and products run
  // beside this grid's (a decode step's next layer; 7.0 against 8.7 us per layer on an H200 when
  // triggered after the k-loop). The trigger takes effect once every CTA of this grid has
  // issued it, so the next grid never takes the slots of CTAs of this one still to be scheduled.
  if (p.early_reads) asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");

  // Loader: each thread copies chunk `chunk` of kA_Loads A rows and kB_Loads B^T rows per stage.
  constexpr int kRowsPerPass = Tile::kThreads / 8;
  const int chunk = tid & 7;
  const T* a_src[Tile::kA_Loads];
  const T* b_src[Tile::kB_Loads];
  bool a_valid[Tile::kA_Loads], b_valid[Tile::kB_Loads];
#pragma unroll
  for (int i = 0; i < Tile::kA_Loads; ++i) {
    const std::int64_t t = m0 + (tid >> 3) + i * kRowsPerPass;
    std::int64_t token = 0, position = 0;
    a_valid[i] = t < p.tokens && resolve_token(p, t, token, position);
    a_src[i] = a_valid[i] ? a + token * p.lda : a;
  }
#pragma unroll
  for (int i = 0; i < Tile::kB_Loads; ++i) {
    const int row = (tid >> 3) + i * kRowsPerPass;
    b_valid[i] = n0 + row < width;
    b_src[i] = b_valid[i] ? bt + std::int64_t(n0 + row) * p.ldbt : bt;
  }
  const std::uint32_t smem_base = smem_address(smem);
  auto load_stage = [&](int stage, int kt) {
    unsigned char* a_tile = smem + stage * Tile::kStageBytes;
    unsigned char* b_tile = a_tile + Tile::kA_Bytes;
    const int k = kt * BK + chunk * 8;
    const int valid_k = max(0, min(8, p.rank - k));
#pragma unroll
    for (int i = 0; i < Tile::kA_Loads; ++i) {
      const int off = swizzled_offset((tid >> 3) + i * kRowsPerPass, chunk);
      const int av = a_valid[i] ? valid_k : 0;
      cp_async_16(a_tile + off, av > 0 ? a_src[i] + k : a, av * 2);
    }
#pragma unroll
    for (int i = 0; i < Tile::kB_Loads; ++i) {
      const int off = swizzled_offset((tid >> 3) + i * kRowsPerPass, chunk);
      const int bv = b_valid[i] ? valid_k : 0;
      cp_async_16(b_tile + off, bv > 0 ? b_src[i] + k : bt, bv * 2);
    }
  };

  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.f;

  const int k_tiles = (p.rank + BK - 1) / BK;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < k_tiles) load_stage(s, s);
    cp_async_commit();
  }
  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<STAGES - 2>();
    fence_proxy_async();
    __syncthreads();  // tile kt visible to all; every warpgroup finished tile kt-1's products
    const int next = kt + STAGES - 1;
    if (next < k_tiles) load_stage(next % STAGES, next);
    cp_async_commit();

    const std::uint32_t a_tile = smem_base + (kt % STAGES) * Tile::kStageBytes + wg * 64 * 128;
    const std::uint32_t b_tile = smem_base + (kt % STAGES) * Tile::kStageBytes + Tile::kA_Bytes;
    fence_operands(acc);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk)
      wgmma_m64n128k16<T>(acc, wgmma_descriptor(a_tile + kk * 32), wgmma_descriptor(b_tile + kk * 32));
    wgmma_commit();
    wgmma_wait<0>();
    fence_operands(acc);
  }
  cp_async_wait<0>();
  if (p.early_reads) {  // the first write of this grid follows
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    report_errors(p, row_errors);
  } else {
    // The stream's next kernel may now be scheduled (its CTAs wait for this grid's completion
    // before they touch memory, so only its launch overlaps this epilogue).
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  }

  // Accumulator i of this thread: row wg*64 + (warp%4)*16 + lane/4 + 8*((i/2)%2),
  // column 8*(i/4) + 2*(lane%4) + i%2.
  const int q = lane & 3;
  if constexpr (MODE != RopeMode::None) {
    __syncthreads();  // inv_freq and row info written
    constexpr int kBlocksPerHead = HEAD_DIM / 8;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = wg * 64 + (warp & 3) * 16 + (lane >> 2) + 8 * half;
      const std::int64_t position = row_pos[row];
      bool ok = true;
      if constexpr (MODE == RopeMode::HalfSplit) {  // whole head rotated: pair (i, i + d/2)
#pragma unroll
        for (int jj = 0; jj < kBlocksPerHead / 2; ++jj)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float s = 0.f, c = 0.f;
            ok &= rope_cos_sin<TABLE>(p, inv_freq, position, 8 * jj + 2 * q + e, s, c);
#pragma unroll
            for (int h = 0; h < BN / HEAD_DIM; ++h) {
              const int i1 = (h * kBlocksPerHead + jj) * 4 + half * 2 + e;
              const int i2 = i1 + kBlocksPerHead / 2 * 4;
              const float x = acc[i1], y = acc[i2];
              acc[i1] = x * c - y * s;
              acc[i2] = x * s + y * c;
            }
          }
      } else {  // interleaved pairs (2i, 2i+1) over the first rotary_dim dims (a multiple of 8)
#pragma unroll
        for (int j = 0; j < kBlocksPerHead; ++j) {
          if (8 * j >= p.rotary_dim) break;
          float s = 0.f, c = 0.f;
          ok &= rope_cos_sin<TABLE>(p, inv_freq, position, 4 * j + q, s, c);
#pragma unroll
          for (int h = 0; h < BN / HEAD_DIM; ++h) {
            const int i1 = (h * kBlocksPerHead + j) * 4 + half * 2;
            const float x = acc[i1], y = acc[i1 + 1];
            acc[i1] = x * c - y * s;
            acc[i1 + 1] = x * s + y * c;
          }
        }
      }
      if (!ok && q == 0 && m0 + row < p.tokens) {
        row_ok[row] = 0;  // the row's four threads see the same bad position: one writes
        if (p.error_flag) atomicOr(p.error_flag, kBadPosition);
      }
    }
  }

  __syncthreads();  // all products done: the pipeline buffers become the output staging
  T* stage = reinterpret_cast<T*>(smem);
#pragma unroll
  for (int j = 0; j < 16; ++j)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = wg * 64 + (warp & 3) * 16 + (lane >> 2) + 8 * half;
      const int col = 8 * j + 2 * q;
      *reinterpret_cast<std::uint32_t*>(stage + row * Tile::kOutStride + col) =
          ElementTraits<T>::pack(acc[j * 4 + half * 2], acc[j * 4 + half * 2 + 1]);
    }
  __syncthreads();

  T* out = static_cast<T*>(p.out);
  constexpr int kChunks = BN / 8;
  for (int item = tid; item < BM * kChunks; item += Tile::kThreads) {
    const int row = item / kChunks, c8 = item % kChunks;
    if (m0 + row >= p.tokens) break;
    const int col = n0 + c8 * 8;
    const std::int64_t base = row_out[row];
    if (base < 0 || col >= width) continue;
    uint4 packed = *reinterpret_cast<const uint4*>(stage + row * Tile::kOutStride + c8 * 8);
    if (!row_ok[row]) {
      const std::uint32_t nan2 = ElementTraits<T>::pack(__int_as_float(0x7fc00000), __int_as_float(0x7fc00000));
      packed = make_uint4(nan2, nan2, nan2, nan2);
    }
    const int head = col / HEAD_DIM, dim = col % HEAD_DIM;
    *reinterpret_cast<uint4*>(out + base + head * p.out_head_stride + dim) = packed;
  }
#endif
}

template <class T, int HEAD_DIM, RopeMode MODE, bool TABLE, int WARPGROUPS>
inline void launch_wgmma_tile(const ReconstructArgs& args, cudaStream_t stream) {
  using Tile = WgmmaTile<WARPGROUPS>;
  auto kernel = reconstruct_wgmma_kernel<T, HEAD_DIM, MODE, TABLE, WARPGROUPS>;
  static std::uint64_t smem_configured = 0;  // per instantiation
  allow_shared_memory(kernel, Tile::kSmemBytes, smem_configured);
  const std::int64_t m_tiles = (args.tokens + Tile::BM - 1) / Tile::BM;
  const std::int64_t n_tiles = (std::int64_t(args.heads) * HEAD_DIM + Tile::BN - 1) / Tile::BN;
  XKV_CHECK(m_tiles * n_tiles <= 0x7fffffff, InvalidArgument, "reconstruct: " << args.tokens << " tokens is too many");
  // A programmatic dependent launch: back to back (a decode step's layers), this grid's CTAs are
  // scheduled while the previous one finishes its epilogue instead of after it has drained.
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
  XKV_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, args));
}

}  // namespace xkv::cuda::detail
