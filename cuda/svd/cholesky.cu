// Launcher of the one-launch Cholesky + inverse: 64-wide tiles (cholesky_wide_kernels.cuh) where
// the padded side is a whole number of them and the device has the shared memory, else 32-wide
// (cholesky_kernels.cuh).
#include "cholesky.hpp"

#include <algorithm>
#include <cstdint>

#include "cholesky_kernels.cuh"
#include "cholesky_wide_kernels.cuh"
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
    p.w = t.ws.w;
    p.work = t.ws.work;
    p.info = t.info;
  }
  // Every CTA must be resident at once (grid-wide barriers); more than the widest step's tile
  // count would only wait at the barriers.
  int device = 0, sms = 0, shared_optin = 0;
  XKV_CUDA_CHECK(cudaGetDevice(&device));
  XKV_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  XKV_CUDA_CHECK(cudaDeviceGetAttribute(&shared_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const int padded = tasks[0].ws.padded;
  bool wide = padded % kCholWideTile == 0 && std::size_t(shared_optin) >= cholw::kSharedBytes + 1024;
  for (const CholeskyTask& t : tasks)  // cp.async moves 16-byte pieces
    wide = wide && reinterpret_cast<std::uintptr_t>(t.ws.w) % 16 == 0 &&
           reinterpret_cast<std::uintptr_t>(t.ws.work) % 16 == 0;
  const void* kernel = wide ? reinterpret_cast<const void*>(&cholesky_inverse_wide_kernel)
                            : reinterpret_cast<const void*>(&cholesky_inverse_kernel);
  const std::size_t shared_bytes = wide ? cholw::kSharedBytes : 0;
  if (wide)
    XKV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared_bytes)));
  int per_sm = 0;
  XKV_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kCholThreads, shared_bytes));
  XKV_CHECK(per_sm >= 1, Device, "cholesky_inverse: the kernel cannot be resident on this device");
  const int tiles = padded / (wide ? kCholWideTile : kCholTile);
  for (int i = 0; i < batch.count; ++i) batch.m[i].tiles = tiles;
  const int widest = std::max(tiles * (tiles - 1) / 2, tiles) * batch.count;
  int grid = std::clamp(widest, 1, sms * per_sm);
  // max_ctas caps the CTAs per matrix (GpuCompressorOptions::cholesky_ctas).
  if (tasks[0].ws.max_ctas > 0) grid = std::min(grid, tasks[0].ws.max_ctas * batch.count);
  void* args[] = {&batch};
  XKV_CUDA_CHECK(cudaLaunchCooperativeKernel(kernel, dim3(grid), dim3(kCholThreads), args, shared_bytes, stream));
}

}  // namespace xkv::cuda::detail
