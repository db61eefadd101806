// Private to cuda/svd: the library handles a Compressor owns, and the plan (sizes, chunking,
// workspace offsets) derived from one set of arguments on the host.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cusolverDn.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include "xkv/cuda/check.hpp"
#include "cholesky.hpp"
#include "xkv/cuda/compressor.hpp"

namespace xkv::cuda::detail {

inline constexpr int kMaxGroupLayers = 64;  ///< layers one group may have
inline constexpr int kInfoSlots = 16;
inline constexpr int kNonFiniteSlot = kInfoSlots - 1;
inline constexpr int kNonFiniteInput = -1000;  ///< status word: X held NaN or Inf
/// q Cholesky words + Rayleigh-Ritz Cholesky + eigensolver must fit below kNonFiniteSlot.
inline constexpr int kMaxPowerIterations = kNonFiniteSlot - 2;
/// Partial sums of the Chebyshev filter's traces (fixed: deterministic); 1024 blocks of 256 threads
/// keep enough loads in flight to stream the basis (chebyshev_kernels.cuh).
inline constexpr int kFilterBlocks = 1024;
/// GramPrecision::Fp16Split rewrites each column of G through a block's shared memory (at most
/// 192 KiB of fp32 on sm_90; more than any group of the models in view needs).
inline constexpr std::int64_t kMaxSplitGramWidth = 49152;
inline constexpr int kSumBlocks = 1024;  ///< partial sums per staged chunk (energy): one wave of 256-thread blocks

/// cuBLAS / cuSOLVER handles and host-side buffers; one per Compressor.
struct CompressorState {
  cublasHandle_t blas = nullptr;
  cusolverDnHandle_t solver = nullptr;
  cusolverDnParams_t params = nullptr;
  syevjInfo_t syevj = nullptr;
  std::vector<char> host_workspace;
  int* pinned_info = nullptr;  ///< kInfoSlots status words of the last run, copied back asynchronously
  std::uint64_t seed = 0;
  RitzSolver ritz_solver = RitzSolver::Syevd;
  int cholesky_ctas = 0;

  CompressorState();
  ~CompressorState();
  void release() noexcept;
  CompressorState(const CompressorState&) = delete;
  CompressorState& operator=(const CompressorState&) = delete;
};

template <class T>
constexpr cudaDataType data_type() {
  if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
  else if constexpr (std::is_same_v<T, __half>) return CUDA_R_16F;
  else return CUDA_R_16BF;
}
/// Sketch GEMMs: 16-bit inputs multiply exactly on tensor cores; fp32 inputs use TF32.
template <class T>
constexpr cublasComputeType_t fast_compute() {
  return std::is_same_v<T, float> ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}
/// Exact method: full fp32 products (16-bit inputs still run on tensor cores).
template <class T>
constexpr cublasComputeType_t exact_compute() {
  return CUBLAS_COMPUTE_32F;
}

struct Plan {
  std::int64_t n = 0;  ///< tokens
  std::int64_t d = 0;  ///< G * width
  std::int64_t m = 0;  ///< min(n, d): side of the exact Gram matrix
  int layers = 0;
  int width = 0;
  bool cols_side = true;  ///< exact: Gram of columns (d <= n) or of rows
  GpuSvdMethod method = GpuSvdMethod::Exact;
  int rank = 0;           ///< 0: chosen from the spectrum (exact only)
  int rank_capacity = 0;  ///< columns the outputs hold
  int k = 0;              ///< randomized: rank + oversampling, at most m
  int power_iterations = 0;
  std::int64_t chunk_rows = 0;  ///< tokens staged at once
  std::int64_t panel_cols = 0;  ///< exact, rows side: columns staged at once (inside one layer)
  bool vector_loads = false;    ///< every layer address is 16-byte aligned in the staging kernel
  /// The layers tile one row-major matrix (layer l's token t at data[0] + t * x_ld + l * width,
  /// heads contiguous): the sketch GEMMs read X in place and nothing is staged.
  bool direct = false;
  std::int64_t x_ld = 0;  ///< direct: elements between consecutive tokens of X
  /// Subspace from the Gram matrix G = X^T X (D x D fp32) instead of sketches over X.
  bool gram = false;
  int gram_blocks = 1;         ///< G is built as this many upper block-rows ...
  int gram_tile = 0;           ///< ... or, if > 0, as the upper tiles of this size in one batched GEMM
  bool chebyshev = false;      ///< Gram rounds after the first apply the degree-2 Chebyshev filter ...
  bool filtered_last = false;  ///< ... the last one too (else the last is plain: GpuCompressorOptions::plain_last_round)
  int gram_rounds = 0;         ///< Gram: rounds, each ending in one CholeskyQR step
  bool gram_half = false;      ///< Gram rounds multiply G and V in fp16 (GramPrecision::Fp16), G converted in place
  bool gram_split = false;     ///< ... with G as two fp16 matrices H + L (GramPrecision::Fp16Split), two GEMMs per product
  bool y_in_a = false;         ///< sketch subspace: each round's Y = X V is kept in the A output
  bool g_in_a = false;         ///< ... and CholeskyQR's k x k Gram too (at A's first 8-byte boundary)
  bool chol_in_place = false;  ///< ... which is also the Cholesky's working matrix (k a whole number of tiles)
  bool gram_slot_in_a = false;  ///< ... with room after it for one row slice of the Gram product
  bool v_in_b = false;          ///< sketch subspace: the basis V (d x k in T) lives in the B output
  bool gram_slot_in_b = false;  ///< ... which holds one row slice of the Gram product while V is dead

  std::size_t solver_bytes = 0;
  std::size_t off_stage = 0, off_yc = 0, off_z = 0, off_zd = 0, off_vd = 0, off_v = 0, off_vrt = 0, off_g = 0,
              off_wsc = 0, off_eigenvalues = 0, off_g32 = 0, off_mu32 = 0, off_scale = 0, off_partials = 0, off_energies = 0, off_info = 0,
              off_solver = 0, off_s = 0, off_chol = 0,
              off_gram = 0, off_v32 = 0, off_filter = 0, off_gram_pointers = 0, off_gram_scale = 0;
  std::size_t total_bytes = 0;
};

/// The caller's workspace, addressed by plan offsets.
struct Workspace {
  char* base = nullptr;
  template <class U>
  U* get(std::size_t offset) const {
    return reinterpret_cast<U*>(base + offset);
  }
};

template <class T>
void run_randomized(CompressorState& st, const Plan& plan, const SvdArguments<T>& args, const Workspace& ws,
                    cudaStream_t stream);
template <class T>
void run_subspace(CompressorState& st, const Plan& plan, const SvdArguments<T>& args, const Workspace& ws,
                  cudaStream_t stream);
template <class T>
void run_gram_subspace(CompressorState& st, const Plan& plan, const SvdArguments<T>& args, const Workspace& ws,
                       cudaStream_t stream);
template <class T>
int run_exact(CompressorState& st, const Plan& plan, const SvdArguments<T>& args, const Workspace& ws,
              cudaStream_t stream);
/// One job of run_gram_subspace_lockstep: a run's state, plan, arguments and workspace.
template <class T>
struct GramJob {
  CompressorState* st = nullptr;
  const Plan* plan = nullptr;
  const SvdArguments<T>* args = nullptr;
  Workspace ws;
  cudaStream_t stream = nullptr;  ///< the job's own stream; its cuBLAS handle is set to it
};
/// run_gram_subspace for up to kMaxCholeskyBatch jobs of one rank at once: each job's steps on its
/// own stream (G, then each round's GEMMs, then A and B), but each round's factorisations as ONE
/// batched Cholesky launch on `factor_stream` (one chain of grid barriers per round instead of one
/// per job), joined and forked by events. The results are those of separate runs.
template <class T>
void run_gram_subspace_lockstep(std::span<const GramJob<T>> jobs, cudaStream_t factor_stream);

/// bt (layers blocks of [width x ld]) = each [r x width] block of b transposed.
template <class T>
void transpose_b_blocks(const T* b, int layers, int r, int width, T* bt, std::int64_t ld, cudaStream_t stream);

}  // namespace xkv::cuda::detail
