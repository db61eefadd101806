// bf16, head_dim 256: every RoPE mode and cos/sin source of the fused reconstruct+RoPE kernels.
#include "xkv/cuda/reconstruct_kernels.cuh"

namespace xkv::cuda::detail {
template void dispatch_rope<__nv_bfloat16, 256>(const ReconstructArgs&, RopeMode, bool, cudaStream_t);
}  // namespace xkv::cuda::detail
