// The fp64 tensor-core product shared by the CholeskyQR products (cholesky_qr_kernels.cuh) and
// the wide-tile Cholesky (cholesky_wide_kernels.cuh).
#pragma once

#include <cuda_runtime.h>

namespace xkv::cuda::detail {

/// D += A B on the fp64 tensor cores, m16n8k8 (sm_90; the m8n8k4 shape took ~1.4x longer). Per
/// thread (g = lane / 4, t = lane % 4): a = A(g, t), A(g + 8, t), A(g, t + 4), A(g + 8, t + 4);
/// b = B(t, g), B(t + 4, g); c = C(g, 2t), C(g, 2t + 1), C(g + 8, 2t), C(g + 8, 2t + 1).
__device__ __forceinline__ void dmma_m16n8k8(double (&c)[4], const double (&a)[4], const double (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  // sm_80/sm_86/sm_89 have only m8n8k4, whose fragments are the quarters of these: rows g and
  // g + 8 by k halves t and t + 4.
  auto m8n8k4 = [](double& c0, double& c1, double a0, double b0) {
    asm volatile("mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64 {%0, %1}, {%2}, {%3}, {%0, %1};"
                 : "+d"(c0), "+d"(c1)
                 : "d"(a0), "d"(b0));
  };
  m8n8k4(c[0], c[1], a[0], b[0]);
  m8n8k4(c[0], c[1], a[2], b[1]);
  m8n8k4(c[2], c[3], a[1], b[0]);
  m8n8k4(c[2], c[3], a[3], b[1]);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f64.f64.f64.f64 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+d"(c[0]), "+d"(c[1]), "+d"(c[2]), "+d"(c[3])
      : "d"(a[0]), "d"(a[1]), "d"(a[2]), "d"(a[3]), "d"(b[0]), "d"(b[1]));
#endif
}

}  // namespace xkv::cuda::detail
