// Device helpers of the GPU SVD benchmarks (see svd_bench_data.hpp).
#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "svd_bench_data.hpp"
#include "xkv/cuda/check.hpp"
#include "xkv/cuda/device.hpp"

namespace xkv::bench {
namespace {

__device__ std::uint64_t mix(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__device__ float gaussian(std::uint64_t seed, std::uint64_t i) {
  const std::uint64_t h = mix(seed ^ mix(i));
  const float u1 = (float((h >> 40) & 0xFFFFFF) + 0.5f) / 16777216.0f;
  const float u2 = float(h & 0xFFFFFF) / 16777216.0f;
  return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
}

/// out[row * cols + col] = N(0,1) * col_scale(col) * scale.
__global__ void gaussian_matrix(__nv_bfloat16* out, std::int64_t rows, std::int64_t cols, double decay, float scale,
                                std::uint64_t seed) {
  const std::int64_t total = rows * cols;
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < total;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t col = i % cols;
    const float s = decay > 0 ? powf(float(col + 1), float(-decay)) : 1.0f;
    out[i] = __float2bfloat16_rn(gaussian(seed, std::uint64_t(i)) * s * scale);
  }
}

__global__ void squared_diff(const __nv_bfloat16* x, const float* approx, std::int64_t count, double* partial) {
  __shared__ double red[256];
  double s = 0;
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < count;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    const double e = double(__bfloat162float(x[i])) - double(approx[i]);
    s += e * e;
  }
  red[threadIdx.x] = s;
  __syncthreads();
  for (int w = 128; w > 0; w /= 2) {
    if (int(threadIdx.x) < w) red[threadIdx.x] += red[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] += red[0];
}

struct Blas {
  cublasHandle_t h = nullptr;
  Blas() { XKV_CUDA_CHECK(cublasCreate(&h)); }
  ~Blas() { (void)cublasDestroy(h); }
};

}  // namespace

void fill_test_matrix(__nv_bfloat16* x, std::int64_t n, std::int64_t d, double decay, std::uint64_t seed) {
  cuda::DeviceBuffer<__nv_bfloat16> z(std::size_t(n * d)), m(std::size_t(d * d));
  gaussian_matrix<<<2048, 256>>>(z.get(), n, d, decay, 1.0f, seed);
  gaussian_matrix<<<2048, 256>>>(m.get(), d, d, 0.0, float(1.0 / std::sqrt(double(d))), seed ^ 0xABCDEFull);
  XKV_CUDA_CHECK(cudaGetLastError());
  Blas blas;
  const float one = 1.0f, zero = 0.0f;
  // Row-major X = Z M  <=>  column-major X^T = M^T Z^T.
  XKV_CUDA_CHECK(cublasGemmEx(blas.h, CUBLAS_OP_N, CUBLAS_OP_N, int(d), int(n), int(d), &one, m.get(), CUDA_R_16BF,
                              int(d), z.get(), CUDA_R_16BF, int(d), &zero, x, CUDA_R_16BF, int(d), CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
  XKV_CUDA_CHECK(cudaDeviceSynchronize());
}

double squared_error(const __nv_bfloat16* x, const __nv_bfloat16* a, const __nv_bfloat16* b, std::int64_t n,
                     std::int64_t d, int width, int r) {
  const std::int64_t chunk = std::min<std::int64_t>(n, std::max<std::int64_t>(1, (std::int64_t(1) << 28) / (d * 4)));
  cuda::DeviceBuffer<float> approx(std::size_t(chunk * d));
  cuda::DeviceBuffer<double> partial(1024);
  XKV_CUDA_CHECK(cudaMemset(partial.get(), 0, partial.bytes()));
  Blas blas;
  const float one = 1.0f, zero = 0.0f;
  const int layers = int(d / width);
  for (std::int64_t t0 = 0; t0 < n; t0 += chunk) {
    const std::int64_t rows = std::min(chunk, n - t0);
    for (int l = 0; l < layers; ++l) {
      // Rows t0.. of A B_l, column-major (width x rows) with ld d.
      XKV_CUDA_CHECK(cublasGemmEx(blas.h, CUBLAS_OP_N, CUBLAS_OP_N, width, int(rows), r, &one,
                                  b + std::int64_t(l) * r * width, CUDA_R_16BF, width, a + t0 * r, CUDA_R_16BF, r,
                                  &zero, approx.get() + std::int64_t(l) * width, CUDA_R_32F, int(d), CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
    }
    squared_diff<<<1024, 256>>>(x + t0 * d, approx.get(), rows * d, partial.get());
    XKV_CUDA_CHECK(cudaGetLastError());
  }
  std::vector<double> host(1024);
  XKV_CUDA_CHECK(cudaMemcpy(host.data(), partial.get(), partial.bytes(), cudaMemcpyDeviceToHost));
  double total = 0;
  for (double v : host) total += v;
  return total;
}

}  // namespace xkv::bench
