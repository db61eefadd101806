// Launchers of the CholeskyQR products (cholesky_qr_kernels.cuh).
#include "cholesky_qr.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "cholesky_qr_kernels.cuh"
#include "xkv/cuda/check.hpp"
#include "xkv/error.hpp"

namespace xkv::cuda::detail {

namespace {

int multiprocessors() {
  int device = 0, sms = 0;
  XKV_CUDA_CHECK(cudaGetDevice(&device));
  XKV_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return std::max(sms, 1);
}

/// Row slices for `tiles` output tiles: the count (1-4) whose CTAs finish soonest, counting whole
/// waves of one CTA per multiprocessor (a slice's work shrinks as 1 / splits); ties to fewer.
int choose_splits(int tiles, std::int64_t rows, int sms) {
  const std::int64_t max_by_rows = std::max<std::int64_t>(1, rows / (4 * cqr::kChunk));
  int best = 1;
  double best_time = 1e300;
  for (int s = 1; s <= std::min<std::int64_t>(cqr::kMaxSplits, max_by_rows); ++s) {
    const double waves = double((std::int64_t(tiles) * s + sms - 1) / sms);
    const double time = waves / s;
    if (time < best_time - 1e-12) {
      best_time = time;
      best = s;
    }
  }
  return best;
}

}  // namespace

void basis_gram(const float* z, std::int64_t rows, int k, double* g, const CholeskyWorkspace& scratch,
                cudaStream_t stream) {
  XKV_REQUIRE(z != nullptr && g != nullptr && rows >= 1 && k >= 1 && scratch.padded >= k,
              "basis_gram: rows=" << rows << ", k=" << k << ", scratch side " << scratch.padded);
  const int side = (k + cqr::kTile - 1) / cqr::kTile;
  const int tiles = side * (side + 1) / 2;
  GramPartialsParams p;
  p.z = z;
  p.rows = rows;
  p.ld = rows;
  p.k = k;
  p.splits = choose_splits(tiles, rows, multiprocessors());
  const std::int64_t per_split = (rows + p.splits - 1) / p.splits;
  p.split_rows = (per_split + cqr::kChunk - 1) / cqr::kChunk * cqr::kChunk;
  double* const outs[cqr::kMaxSplits] = {g, scratch.l, scratch.w, scratch.work};
  for (int s = 0; s < cqr::kMaxSplits; ++s) {
    p.out[s] = outs[s];
    p.out_ld[s] = s == 0 ? k : scratch.padded;
  }
  // 69.6 KB of tiles: above the 48 KB default, so opted in (per device; cheap to repeat).
  XKV_CUDA_CHECK(cudaFuncSetAttribute(gram_partials_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      int(cqr::kSharedBytes)));
  gram_partials_kernel<<<dim3(unsigned(tiles), unsigned(p.splits)), cqr::kThreads, cqr::kSharedBytes, stream>>>(p);
  XKV_CUDA_CHECK(cudaGetLastError());
  if (p.splits > 1) {
    const dim3 block(32, 8), grid(unsigned((k + 31) / 32), unsigned((k + 7) / 8));
    add_partials_kernel<<<grid, block, 0, stream>>>(p);
    XKV_CUDA_CHECK(cudaGetLastError());
  }
}

template <class Out>
void apply_inverse(const float* z, std::int64_t rows, int k, const CholeskyWorkspace& chol, Out* v,
                   cudaStream_t stream) {
  XKV_REQUIRE(z != nullptr && v != nullptr && chol.w != nullptr && rows >= 1 && k >= 1 && chol.padded >= k,
              "apply_inverse: rows=" << rows << ", k=" << k << ", factor side " << chol.padded);
  ApplyInverseParams<Out> p;
  p.z = z;
  p.rows = rows;
  p.ld_z = rows;
  p.k = k;
  p.w = chol.w;
  p.ld_w = chol.padded;
  p.v = v;
  p.ld_v = rows;
  p.row_tiles = int((rows + cqr::kTile - 1) / cqr::kTile);
  p.col_tiles = (k + cqr::kTile - 1) / cqr::kTile;
  const std::int64_t blocks = std::int64_t(p.row_tiles) * p.col_tiles;
  XKV_REQUIRE(blocks < (std::int64_t(1) << 31), "apply_inverse: rows=" << rows << ", k=" << k << " is too large");
  XKV_CUDA_CHECK(cudaFuncSetAttribute(apply_inverse_kernel<Out>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      int(cqr::kSharedBytes)));
  apply_inverse_kernel<Out><<<unsigned(blocks), cqr::kThreads, cqr::kSharedBytes, stream>>>(p);
  XKV_CUDA_CHECK(cudaGetLastError());
}

template void apply_inverse<float>(const float*, std::int64_t, int, const CholeskyWorkspace&, float*, cudaStream_t);
template void apply_inverse<__half>(const float*, std::int64_t, int, const CholeskyWorkspace&, __half*, cudaStream_t);
template void apply_inverse<__nv_bfloat16>(const float*, std::int64_t, int, const CholeskyWorkspace&, __nv_bfloat16*,
                                           cudaStream_t);

}  // namespace xkv::cuda::detail
