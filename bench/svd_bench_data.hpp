// Seeded test matrices and reconstruction errors on the device, for the GPU SVD benchmarks.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace xkv::bench {

/// x (row-major [n x d], bf16) = Z diag(s) M with Z (n x d) and M (d x d) Gaussian (M / sqrt(d)),
/// s_j = (1 + j)^-decay. The same (n, d, decay, seed) gives the same bits. Synchronous.
void fill_test_matrix(__nv_bfloat16* x, std::int64_t n, std::int64_t d, double decay, std::uint64_t seed);

/// ||X - A [B_1 | ... | B_G]||_F^2 for A row-major [n x r] and B = G blocks row-major [r x width]
/// (G * width = d), all bf16 on the device. Synchronous.
double squared_error(const __nv_bfloat16* x, const __nv_bfloat16* a, const __nv_bfloat16* b, std::int64_t n,
                     std::int64_t d, int width, int r);

}  // namespace xkv::bench
