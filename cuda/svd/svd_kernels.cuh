// Small device kernels of the GPU compression path: staging strided layers into contiguous
// chunks, seeded Gaussian sketches, conversions, and the bookkeeping around cuSOLVER calls.
// Everything heavy is a cuBLAS GEMM; these kernels are memory-bound glue. The header is included
// by several .cu files: kernels that are not templates are static (one copy per file).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "svd_plan.hpp"

namespace xkv::cuda::detail {


/// Base pointers and strides of a group's layers, passed by value to the staging kernel.
template <class T>
struct LayerTable {
  const T* data[kMaxGroupLayers];
  std::int64_t token_stride[kMaxGroupLayers];
  std::int64_t head_stride[kMaxGroupLayers];
  int layers = 0;
  int heads = 0;
  int head_dim = 0;
};

template <class T>
__device__ __forceinline__ float to_f32(T v) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) return float(v);
  else if constexpr (std::is_same_v<T, __half>) return __half2float(v);
  else return __bfloat162float(v);
}
template <class T>
__device__ __forceinline__ T from_f32(float v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else if constexpr (std::is_same_v<T, __half>) return __float2half_rn(v);
  else return __float2bfloat16_rn(v);
}
template <class T>
__device__ __forceinline__ double to_f64(T v) {
  if constexpr (std::is_same_v<T, double>) return v;
  else return double(to_f32(v));
}
template <class T>
__device__ __forceinline__ T from_f64(double v) {
  if constexpr (std::is_same_v<T, double>) return v;
  else if constexpr (std::is_same_v<T, float>) return static_cast<float>(v);
  else if constexpr (std::is_same_v<T, __half>) return __double2half(v);
  else return __double2bfloat16(v);
}

/// Sum of squares of a block's values into partial[blockIdx.x], in a fixed order. 256 threads.
__device__ __forceinline__ void block_sum_to(double s, double* __restrict__ partial) {
  __shared__ double red[256];
  red[threadIdx.x] = s;
  __syncthreads();
  for (int w = 128; w > 0; w /= 2) {
    if (int(threadIdx.x) < w) red[threadIdx.x] += red[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = red[0];
}

/// dst (row-major [rows x cols], contiguous) = X[t0 : t0+rows, c0 : c0+cols], where column c of X
/// is element (c % head_dim) of head (c / head_dim) % heads of layer c / (heads*head_dim).
/// VEC elements move per thread; the host picks VEC > 1 only when every address is aligned.
/// With ENERGY the kernel also writes this block's sum of squares to partial[blockIdx.x] (it
/// reads every element anyway; a separate pass over the chunk would cost as much as the copy);
/// dst may then be null (X read in place: only the sum is wanted).
/// The sum depends only on the grid size, so a fixed grid gives bit-identical energies.
template <class T, int VEC, bool ENERGY = false>
__global__ void __launch_bounds__(256) gather_chunk_kernel(LayerTable<T> tab, std::int64_t t0, std::int64_t rows,
                                                           std::int64_t c0, std::int64_t cols, T* __restrict__ dst,
                                                           double* __restrict__ partial = nullptr) {
  const std::int64_t vec_cols = cols / VEC;
  const std::int64_t total = rows * vec_cols;
  const int width = tab.heads * tab.head_dim;
  double energy = 0;
  for (std::int64_t idx = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t row = idx / vec_cols;
    const std::int64_t col = (idx - row * vec_cols) * VEC;
    const std::int64_t c = c0 + col;
    const int layer = int(c / width);
    const int within = int(c - std::int64_t(layer) * width);
    const int head = within / tab.head_dim;
    const int i = within - head * tab.head_dim;
    const T* src = tab.data[layer] + (t0 + row) * tab.token_stride[layer] + head * tab.head_stride[layer] + i;
    T* out = ENERGY && !dst ? nullptr : dst + row * cols + col;
    T vals[VEC];
    if constexpr (VEC * sizeof(T) == 16) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(src));
      if (!ENERGY || dst) *reinterpret_cast<uint4*>(out) = raw;
      memcpy(vals, &raw, sizeof(raw));
    } else {
      for (int v = 0; v < VEC; ++v) vals[v] = src[v];
      if (!ENERGY || dst)
        for (int v = 0; v < VEC; ++v) out[v] = vals[v];
    }
    if constexpr (ENERGY) {
#pragma unroll
      for (int v = 0; v < VEC; ++v) {  // fp64 squares are exact: ||X||^2 - ||A||^2 cancels badly
        const double x = to_f32(vals[v]);
        energy = fma(x, x, energy);
      }
    }
  }
  if constexpr (ENERGY) block_sum_to(energy, partial);
}

__device__ __forceinline__ std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/// out[i] = N(0, 1) sample that depends only on (seed, i): Box-Muller on a counter-based hash,
/// in fp32 (a starting basis needs no more; the fp64 log and cospi took ~23 us per 4096 x 512),
/// rounded to T and then, if Out differs, converted to Out as convert_kernel would (the Gram
/// rounds draw their fp16 basis in one pass, from the same T values as the sketches' start).
template <class T, class Out = T>
__global__ void gaussian_kernel(Out* __restrict__ out, std::int64_t count, std::uint64_t seed) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < count;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    const std::uint64_t h = splitmix64(seed ^ splitmix64(std::uint64_t(i)));
    const float u1 = (float((h >> 40) & 0xffffffu) + 0.5f) * 0x1p-24f;  // (0, 1): log finite
    const float u2 = float(h & 0xffffffu) * 0x1p-24f;
    const float g = sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
    const T t = from_f64<T>(double(g));
    if constexpr (std::is_same_v<Out, T>) out[i] = t;
    else out[i] = from_f64<Out>(to_f64(t));
  }
}

template <class Src, class Dst>
__global__ void convert_kernel(const Src* __restrict__ in, Dst* __restrict__ out, std::int64_t count) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < count;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    if constexpr (std::is_same_v<Dst, double>) out[i] = to_f64(in[i]);
    else out[i] = from_f64<Dst>(to_f64(in[i]));
  }
}

/// Strict lower triangle of an m x m column-major fp32 matrix <- its upper triangle, through 32 x 32
/// shared-memory tiles so that reads and writes both run down columns. Block (32, 8), grid (tiles,
/// tiles); block (x, y) writes lower tile (row block y, column block x) from upper tile (x, y), so no
/// two blocks touch the same element.
static __global__ void mirror_upper_kernel(float* s, std::int64_t m) {
  __shared__ float tile[32][33];
  const std::int64_t bi = blockIdx.y, bj = blockIdx.x;
  if (bi < bj) return;
  for (int y = threadIdx.y; y < 32; y += blockDim.y) {
    const std::int64_t row = bj * 32 + threadIdx.x, col = bi * 32 + y;
    if (row < m && col < m) tile[y][threadIdx.x] = s[row + col * m];
  }
  __syncthreads();
  for (int y = threadIdx.y; y < 32; y += blockDim.y) {
    const std::int64_t row = bi * 32 + threadIdx.x, col = bj * 32 + y;
    if (row < m && col < m && row > col) s[row + col * m] = tile[threadIdx.x][y];
  }
}

/// Upper triangle of a k x k column-major matrix <- (upper + lower^T) / 2. The lower triangle is
/// only read, so threads never race.
static __global__ void symmetrize_upper_kernel(double* g, int k) {
  const int i = blockIdx.y * blockDim.y + threadIdx.y;
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < j && j < k) g[i + std::int64_t(j) * k] = 0.5 * (g[i + std::int64_t(j) * k] + g[j + std::int64_t(i) * k]);
}

/// Adds rel * trace(g) (at least floor_shift) to every diagonal entry of the k x k matrix g, so
/// that its Cholesky succeeds when it is numerically semidefinite: for a matrix that is symmetric
/// positive semidefinite only up to errors relative to its largest entries, such as the
/// Rayleigh-Ritz V^T Z with Z = X^T X V formed in working precision (the entries of null directions
/// are all rounding). The Gram of a stored fp32 basis takes a shift per column instead
/// (GramDiagonal, cholesky_qr.hpp). Launched with one block of 1024.
static __global__ void shift_by_trace_kernel(double* g, int k, double rel, double floor_shift) {
  __shared__ double partial[1024];
  double s = 0;
  for (int i = threadIdx.x; i < k; i += blockDim.x) s += g[i + std::int64_t(i) * k];
  partial[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w /= 2) {
    if (int(threadIdx.x) < w) partial[threadIdx.x] += partial[threadIdx.x + w];
    __syncthreads();
  }
  const double shift = fmax(rel * partial[0], floor_shift);
  for (int i = threadIdx.x; i < k; i += blockDim.x) g[i + std::int64_t(i) * k] += shift;
}

/// Per-block partial sums of squares of count elements into partial[blockIdx.x] (fixed order, so
/// the total is deterministic). blockDim.x must be 256.
template <class T>
__global__ void __launch_bounds__(256) sum_squares_kernel(const T* __restrict__ x, std::int64_t count,
                                                           double* __restrict__ partial) {
  double s = 0;
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < count;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    const double v = to_f32(x[i]);
    s += v * v;
  }
  block_sum_to(s, partial);
}

/// out[0] = sum of partial[0..count) in a fixed order. One block of 256.
static __global__ void reduce_partials_kernel(const double* __restrict__ partial, int count, double* out) {
  __shared__ double red[256];
  double s = 0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
  red[threadIdx.x] = s;
  __syncthreads();
  for (int w = 128; w > 0; w /= 2) {
    if (int(threadIdx.x) < w) red[threadIdx.x] += red[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = red[0];
}

/// out[0] = trace of an m x m column-major fp32 matrix, in fp64. One block of 256.
static __global__ void trace_kernel(const float* __restrict__ s, std::int64_t m, double* out) {
  __shared__ double red[256];
  double acc = 0;
  for (std::int64_t i = threadIdx.x; i < m; i += blockDim.x) acc += s[i + i * m];
  red[threadIdx.x] = acc;
  __syncthreads();
  for (int w = 128; w > 0; w /= 2) {
    if (int(threadIdx.x) < w) red[threadIdx.x] += red[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = red[0];
}

/// From ascending eigenvalues of an m x m problem: singular values sigma_j = sqrt(max(lambda, 0))
/// of the top r (descending), the kept energy, and per-direction scales (1/sigma_j for the
/// randomized method, where V_r = Bt W_r diag(1/sigma); 0 for numerically null directions).
/// One block of 256.
template <class E>
__global__ void select_top_kernel(const E* __restrict__ eigenvalues, int m, int r, float* __restrict__ sv_out,
                                  double* __restrict__ scale_out, double* __restrict__ kept_out) {
  __shared__ double red[256];
  const double top = fmax(double(eigenvalues[m - 1]), 0.0);
  double kept = 0;
  for (int j = threadIdx.x; j < r; j += blockDim.x) {
    const double lambda = fmax(double(eigenvalues[m - 1 - j]), 0.0);
    const double sigma = sqrt(lambda);
    kept += lambda;
    if (sv_out) sv_out[j] = float(sigma);
    if (scale_out) scale_out[j] = (lambda > 1e-24 * top && sigma > 0) ? 1.0 / sigma : 0.0;
  }
  red[threadIdx.x] = kept;
  __syncthreads();
  for (int w = 128; w > 0; w /= 2) {
    if (int(threadIdx.x) < w) red[threadIdx.x] += red[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0 && kept_out) *kept_out = red[0];
}

/// *flag = kNonFiniteInput if any of v[0..count) is NaN or Inf (NaN/Inf in X reach every
/// eigenvalue through the GEMMs). One block; `stride` 1 for a vector, k + 1 for a diagonal.
template <class E>
__global__ void flag_nonfinite_kernel(const E* __restrict__ v, int count, int* flag, int stride) {
  __shared__ int bad;
  if (threadIdx.x == 0) bad = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < count; i += blockDim.x)
    if (!isfinite(double(v[std::int64_t(i) * stride]))) atomicOr(&bad, 1);
  __syncthreads();
  if (threadIdx.x == 0 && bad) *flag = kNonFiniteInput;
}

/// dst (rows x r, column-major, ld rows) column j = scale_j * src column (src_cols - 1 - j):
/// the eigenvectors of the r largest eigenvalues, largest first. scale == nullptr means 1.
template <class Src, class Dst>
__global__ void take_top_columns_kernel(const Src* __restrict__ src, std::int64_t rows, int src_cols, int r,
                                        const double* __restrict__ scale, Dst* __restrict__ dst) {
  const std::int64_t total = rows * r;
  for (std::int64_t idx = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t j = idx / rows;
    const std::int64_t i = idx - j * rows;
    double v = to_f64(src[i + (src_cols - 1 - j) * rows]);
    if (scale) v *= scale[j];
    if constexpr (std::is_same_v<Dst, double>) dst[idx] = v;
    else dst[idx] = from_f64<Dst>(v);
  }
}

/// B blocks from V_r (D x r, column-major, ld D): b[l][i][j] = V_r(l*width + j, i), row-major
/// [r x width] per layer. Row i of block l is the contiguous piece [l*width, (l+1)*width) of V_r's
/// column i, so B is V_r's columns cut into width-long pieces and reordered: block (i, l) of the
/// grid copies one piece (16 bytes per access where both sides allow it). Element by element with
/// 64-bit divisions per entry it took ~13 us per 4096 x 768 on an H200.
/// Grid: r * layers blocks (blockIdx.x = l * r + i, the order of b), any block size.
template <class Src, class T>
__global__ void write_b_blocks_kernel(const Src* __restrict__ v, std::int64_t d_total, int r, int width,
                                      T* __restrict__ b) {
  const std::int64_t piece = blockIdx.x, layer = piece / r, i = piece - layer * r;
  const Src* src = v + i * d_total + layer * width;
  T* dst = b + piece * width;
  constexpr int kVec = 16 / sizeof(T);
  if constexpr (std::is_same_v<Src, T>) {
    if (width % kVec == 0 && reinterpret_cast<std::uintptr_t>(src) % 16 == 0 &&
        reinterpret_cast<std::uintptr_t>(dst) % 16 == 0) {  // block-uniform
      const auto* s4 = reinterpret_cast<const uint4*>(src);
      auto* d4 = reinterpret_cast<uint4*>(dst);
      for (int j = int(threadIdx.x); j < width / kVec; j += int(blockDim.x)) d4[j] = s4[j];
      return;
    }
  }
  for (int j = int(threadIdx.x); j < width; j += int(blockDim.x)) dst[j] = from_f64<T>(to_f64(src[j]));
}

/// Launches write_b_blocks_kernel for D = layers * width.
template <class Src, class T>
void write_b_blocks(const Src* v, std::int64_t d_total, int r, int width, T* b, cudaStream_t stream) {
  const std::int64_t pieces = d_total / width * r;
  write_b_blocks_kernel<Src, T><<<unsigned(pieces), 128, 0, stream>>>(v, d_total, r, width, b);
}

/// bt block l ([width x ld] row-major) = b block l ([r x width] row-major) transposed, through a
/// 32 x 33 shared tile so that both the reads and the writes are coalesced. Grid: (width / 32,
/// r / 32, layers) rounded up; block 32 x 8.
template <class T>
__global__ void transpose_b_blocks_kernel(const T* __restrict__ b, int r, int width, T* __restrict__ bt,
                                          std::int64_t ld) {
  __shared__ alignas(T) unsigned char raw[32 * 33 * sizeof(T)];
  T(&tile)[32][33] = *reinterpret_cast<T(*)[32][33]>(raw);
  const std::int64_t layer = blockIdx.z;
  const T* src = b + layer * std::int64_t(r) * width;
  T* dst = bt + layer * std::int64_t(width) * ld;
  const int j0 = blockIdx.x * 32, i0 = blockIdx.y * 32;
  for (int y = threadIdx.y; y < 32; y += 8) {
    const int i = i0 + y, j = j0 + threadIdx.x;
    if (i < r && j < width) tile[y][threadIdx.x] = src[std::int64_t(i) * width + j];
  }
  __syncthreads();
  for (int y = threadIdx.y; y < 32; y += 8) {
    const int j = j0 + y, i = i0 + threadIdx.x;
    if (i < r && j < width) dst[std::int64_t(j) * ld + i] = tile[threadIdx.x][y];
  }
}

/// a (row-major [n x r]) = U (n x r, column-major): a[t][i] = U(t, i).
template <class Src, class T>
__global__ void transpose_to_rows_kernel(const Src* __restrict__ u, std::int64_t n, int r, T* __restrict__ a) {
  const std::int64_t total = n * r;
  for (std::int64_t idx = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t t = idx / r;
    const std::int64_t i = idx - t * r;
    a[idx] = from_f64<T>(to_f64(u[t + i * n]));
  }
}

}  // namespace xkv::cuda::detail
