// A test kernel that lets the stream's next kernel launch at once (griddepcontrol.launch_dependents)
// and only then, after a delay, writes its output: a programmatic dependent that read before
// griddepcontrol.wait would see the old contents.
#include "late_writer.hpp"

#include "xkv/cuda/check.hpp"

namespace xkv_test {

namespace {

__global__ void late_copy_kernel(const std::uint16_t* src, std::uint16_t* dst, std::int64_t count,
                                 long long delay_cycles) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
  const long long start = clock64();
  while (clock64() - start < delay_cycles) {
  }
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < count;
       i += std::int64_t(gridDim.x) * blockDim.x)
    dst[i] = src[i];
}

}  // namespace

void late_copy(const std::uint16_t* src, std::uint16_t* dst, std::int64_t count, long long delay_cycles,
               cudaStream_t stream) {
  late_copy_kernel<<<8, 256, 0, stream>>>(src, dst, count, delay_cycles);
  XKV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace xkv_test
