// fp16 wgmma (sm_90a) instantiations of the fused reconstruct+RoPE kernel: head_dim 64 and 128,
// every RoPE mode and cos/sin source. Compiled for sm_90a only (see sources.cmake).
#include "xkv/cuda/reconstruct_kernels_pingpong.cuh"

namespace xkv::cuda::detail {

void launch_reconstruct_sm90_fp16(const ReconstructArgs& args, RopeMode mode, bool table, cudaStream_t stream) {
  dispatch_wgmma<__half>(args, mode, table, stream);
}

}  // namespace xkv::cuda::detail
