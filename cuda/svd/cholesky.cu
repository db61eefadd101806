// Launcher of the one-launch Cholesky + inverse (cholesky_kernels.cuh).
#include "cholesky.hpp"

#include <algorithm>

#include "cholesky_kernels.cuh"
#include "xkv/cuda/check.hpp"
#include "xkv/error.hpp"

namespace xkv::cuda::detail {

std::size_t CholeskyWorkspace::doubles(int k) {
  const std::size_t padded = std::size_t((k + kCholTile - 1) / kCholTile) * kCholTile;
  return 3 * padded * padded;
}

CholeskyWorkspace CholeskyWorkspace::carve(double* base, int k) {
  CholeskyWorkspace ws;
  ws.padded = (k + kCholTile - 1) / kCholTile * kCholTile;
  const std::size_t block = std::size_t(ws.padded) * ws.padded;
  ws.l = base;
  ws.w = base + block;
  ws.work = base + 2 * block;
  return ws;
}

void cholesky_inverse(const double* gram, int k, const CholeskyWorkspace& ws, int* info, cudaStream_t stream) {
  XKV_REQUIRE(k >= 1 && gram != nullptr && ws.l != nullptr && info != nullptr && ws.padded >= k,
              "cholesky_inverse: k=" << k << ", padded side " << ws.padded);
  CholeskyParams p;
  p.gram = gram;
  p.k = k;
  p.tiles = ws.padded / kCholTile;
  p.l = ws.l;
  p.w = ws.w;
  p.work = ws.work;
  p.info = info;
  // Every CTA must be resident at once (grid-wide barriers); more than the widest step's tile
  // count would only wait at the barriers.
  int device = 0, sms = 0, per_sm = 0;
  XKV_CUDA_CHECK(cudaGetDevice(&device));
  XKV_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  XKV_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, cholesky_inverse_kernel, kCholThreads, 0));
  XKV_CHECK(per_sm >= 1, Device, "cholesky_inverse: the kernel cannot be resident on this device");
  const int widest = std::max(p.tiles * (p.tiles - 1) / 2, p.tiles);
  int grid = std::clamp(widest, 1, sms * per_sm);
  if (ws.max_ctas > 0) grid = std::min(grid, ws.max_ctas);
  void* args[] = {&p};
  XKV_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(&cholesky_inverse_kernel), dim3(grid),
                                             dim3(kCholThreads), args, 0, stream));
}

}  // namespace xkv::cuda::detail
