// Launcher of the one-launch Cholesky + inverse (cholesky_kernels.cuh).
#include "cholesky.hpp"

#include <algorithm>

#include "cholesky_kernels.cuh"
#include "xkv/cuda/check.hpp"
#include "xkv/error.hpp"

namespace xkv::cuda::detail {

namespace {
int padded_side(int k) { return (k + kCholTile - 1) / kCholTile * kCholTile; }
}  // namespace

std::size_t CholeskyWorkspace::doubles(int k) { return 2 * doubles_in_place(k); }

std::size_t CholeskyWorkspace::doubles_in_place(int k) {
  const std::size_t padded = std::size_t(padded_side(k));
  return padded * padded;
}

bool CholeskyWorkspace::can_factor_in_place(int k) { return k >= 1 && k % kCholTile == 0; }

CholeskyWorkspace CholeskyWorkspace::carve(double* base, int k) {
  CholeskyWorkspace ws;
  ws.padded = padded_side(k);
  ws.w = base;
  ws.work = base + std::size_t(ws.padded) * ws.padded;
  return ws;
}

CholeskyWorkspace CholeskyWorkspace::carve_in_place(double* base, double* gram, int k) {
  XKV_REQUIRE(can_factor_in_place(k), "CholeskyWorkspace::carve_in_place: k=" << k << " is not a multiple of "
                                                                              << kCholTile);
  CholeskyWorkspace ws;
  ws.padded = padded_side(k);
  ws.w = base;
  ws.work = gram;
  return ws;
}

void cholesky_inverse(const double* gram, int k, const CholeskyWorkspace& ws, int* info, cudaStream_t stream) {
  const CholeskyTask task{gram, ws, info};
  cholesky_inverse_batched(std::span<const CholeskyTask>(&task, 1), k, stream);
}

void cholesky_inverse_batched(std::span<const CholeskyTask> tasks, int k, cudaStream_t stream) {
  static_assert(kMaxCholeskyBatch == kCholMaxBatch, "one batch limit");
  XKV_REQUIRE(!tasks.empty() && tasks.size() <= std::size_t(kMaxCholeskyBatch),
              "cholesky_inverse_batched: " << tasks.size() << " tasks, at most " << kMaxCholeskyBatch);
  CholeskyBatch batch;
  batch.count = int(tasks.size());
  for (std::size_t i = 0; i < tasks.size(); ++i) {
    const CholeskyTask& t = tasks[i];
    XKV_REQUIRE(k >= 1 && t.gram != nullptr && t.ws.w != nullptr && t.ws.work != nullptr && t.info != nullptr &&
                    t.ws.padded >= k && t.ws.padded == tasks[0].ws.padded,
                "cholesky_inverse: task " << i << ": k=" << k << ", padded side " << t.ws.padded);
    XKV_REQUIRE(t.gram != t.ws.work || t.ws.padded == k,
                "cholesky_inverse: task " << i << ": in place needs k=" << k << " to be the padded side "
                                          << t.ws.padded);
    CholeskyParams& p = batch.m[i];
    p.gram = t.gram;
    p.k = k;
    p.tiles = t.ws.padded / kCholTile;
    p.w = t.ws.w;
    p.work = t.ws.work;
    p.info = t.info;
  }
  // Every CTA must be resident at once (grid-wide barriers); more than the widest step's tile
  // count would only wait at the barriers.
  int device = 0, sms = 0, per_sm = 0;
  XKV_CUDA_CHECK(cudaGetDevice(&device));
  XKV_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  XKV_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, cholesky_inverse_kernel, kCholThreads, 0));
  XKV_CHECK(per_sm >= 1, Device, "cholesky_inverse: the kernel cannot be resident on this device");
  const int tiles = batch.m[0].tiles;
  const int widest = std::max(tiles * (tiles - 1) / 2, tiles) * batch.count;
  int grid = std::clamp(widest, 1, sms * per_sm);
  // max_ctas caps the CTAs per matrix (GpuCompressorOptions::cholesky_ctas).
  if (tasks[0].ws.max_ctas > 0) grid = std::min(grid, tasks[0].ws.max_ctas * batch.count);
  void* args[] = {&batch};
  XKV_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(&cholesky_inverse_kernel), dim3(grid),
                                             dim3(kCholThreads), args, 0, stream));
}

}  // namespace xkv::cuda::detail
