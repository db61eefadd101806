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
/// waves of cqr::kGramBlocksPerSm CTAs per multiprocessor (a slice's work shrinks as 1 / splits);
/// ties to fewer. Not the occupancy the device reports: the count, and so the bits of the sum,
/// must not depend on the launch's shared-memory stages.
int choose_splits(int tiles, std::int64_t rows, int sms, int max_splits) {
  const std::int64_t max_by_rows = std::max<std::int64_t>(1, rows / (4 * cqr::kChunk));
  const std::int64_t slots = std::int64_t(sms) * cqr::kGramBlocksPerSm;
  int best = 1;
  double best_time = 1e300;
  for (int s = 1; s <= std::min<std::int64_t>(max_splits, max_by_rows); ++s) {
    const double waves = double((std::int64_t(tiles) * s + slots - 1) / slots);
    const double time = waves / s;
    if (time < best_time - 1e-12) {
      best_time = time;
      best = s;
    }
  }
  return best;
}

/// Stages of the launch: `requested` (2 or 4), or with 0 four where the device's shared memory
/// per block holds them (`bytes_of(4)`), else two.
template <class BytesOf>
int stages_for(int requested, BytesOf bytes_of, const char* who) {
  XKV_REQUIRE(requested == 0 || requested == 2 || requested == 4,
              who << ": stages=" << requested << ", expected 0, 2 or 4");
  int device = 0, optin = 0;
  XKV_CUDA_CHECK(cudaGetDevice(&device));
  XKV_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const int stages = requested > 0 ? requested : (std::size_t(optin) >= bytes_of(4) ? 4 : 2);
  XKV_CHECK(std::size_t(optin) >= bytes_of(stages), Device,
            who << ": " << stages << " stages need " << bytes_of(stages)
                << " bytes of shared memory per block, the device allows " << optin);
  return stages;
}

/// Launches `kernel` after opting in to its shared memory (per device; cheap to repeat).
template <class Kernel, class Params>
void launch(Kernel kernel, std::size_t shared_bytes, dim3 grid, const Params& p, cudaStream_t stream) {
  XKV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared_bytes)));
  kernel<<<grid, cqr::kThreads, shared_bytes, stream>>>(p);
  XKV_CUDA_CHECK(cudaGetLastError());
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

}  // namespace

void basis_gram(const float* z, std::int64_t rows, int k, double* g, const GramScratch& scratch,
                cudaStream_t stream, int stages, const GramDiagonal& diagonal) {
  static_assert(GramScratch::kMaxBuffers + 1 == cqr::kMaxSplits, "one slice per buffer, and g");
  XKV_REQUIRE(z != nullptr && g != nullptr && rows >= 1 && k >= 1 && (scratch.count == 0 || scratch.padded >= k),
              "basis_gram: rows=" << rows << ", k=" << k << ", scratch side " << scratch.padded);
  const int side = (k + cqr::kTile - 1) / cqr::kTile;
  const int tiles = side * (side + 1) / 2;
  GramPartialsParams p;
  p.z = z;
  p.rows = rows;
  p.ld = rows;
  p.k = k;
  p.splits = choose_splits(tiles, rows, multiprocessors(), 1 + scratch.count);
  const std::int64_t per_split = (rows + p.splits - 1) / p.splits;
  p.split_rows = (per_split + cqr::kChunk - 1) / cqr::kChunk * cqr::kChunk;
  p.out[0] = g;
  p.out_ld[0] = k;
  for (int s = 1; s < p.splits; ++s) {
    p.out[s] = scratch.buffers[s - 1];
    p.out_ld[s] = scratch.padded;
  }
  const dim3 grid(unsigned(tiles), unsigned(p.splits));
  const int ring = stages_for(stages, cqr::gram_shared_bytes, "basis_gram");
  const std::size_t bytes = cqr::gram_shared_bytes(ring);
  const bool vec = aligned16(z) && rows % 4 == 0;
  if (ring == 4) launch(vec ? gram_partials_kernel<4, 4> : gram_partials_kernel<4, 1>, bytes, grid, p, stream);
  else launch(vec ? gram_partials_kernel<2, 4> : gram_partials_kernel<2, 1>, bytes, grid, p, stream);
  if (p.splits > 1) {
    const dim3 block(32, 8), grid(unsigned((k + 31) / 32), unsigned((k + 7) / 8));
    add_partials_kernel<<<grid, block, 0, stream>>>(p, diagonal);
    XKV_CUDA_CHECK(cudaGetLastError());
  } else if (diagonal.any()) {
    finish_diagonal_kernel<<<unsigned((k + 255) / 256), 256, 0, stream>>>(g, k, diagonal);
    XKV_CUDA_CHECK(cudaGetLastError());
  }
}

template <class Out>
void apply_inverse(const float* z, std::int64_t rows, int k, const CholeskyWorkspace& chol, Out* v,
                   cudaStream_t stream, int stages) {
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
  const dim3 grid{unsigned(blocks)};
  const int ring = stages_for(stages, cqr::apply_shared_bytes, "apply_inverse");
  const std::size_t bytes = cqr::apply_shared_bytes(ring);
  const bool vec = aligned16(z) && rows % 4 == 0 && aligned16(chol.w) && chol.padded % 2 == 0;
  if (ring == 4)
    launch(vec ? apply_inverse_kernel<Out, 4, 4> : apply_inverse_kernel<Out, 4, 1>, bytes, grid, p, stream);
  else
    launch(vec ? apply_inverse_kernel<Out, 2, 4> : apply_inverse_kernel<Out, 2, 1>, bytes, grid, p, stream);
}

template void apply_inverse<float>(const float*, std::int64_t, int, const CholeskyWorkspace&, float*, cudaStream_t,
                                   int);
template void apply_inverse<__half>(const float*, std::int64_t, int, const CholeskyWorkspace&, __half*, cudaStream_t,
                                    int);
template void apply_inverse<__nv_bfloat16>(const float*, std::int64_t, int, const CholeskyWorkspace&, __nv_bfloat16*,
                                           cudaStream_t, int);

}  // namespace xkv::cuda::detail
