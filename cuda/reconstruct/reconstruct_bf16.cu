// bf16 instantiations of the fused reconstruct+RoPE kernels (head_dim x RoPE mode x cos/sin source).
#include "xkv/cuda/reconstruct_kernels.cuh"

namespace xkv::cuda::detail {

void launch_reconstruct_bf16(const ReconstructArgs& args, RopeMode mode, bool table, cudaStream_t stream) {
  dispatch_reconstruct<__nv_bfloat16>(args, mode, table, stream);
}

}  // namespace xkv::cuda::detail
