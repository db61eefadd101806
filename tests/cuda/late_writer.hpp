// See late_writer.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace xkv_test {

/// dst[i] = src[i] for i < count, written `delay_cycles` SM clocks after the kernel has allowed
/// the stream's next kernel to launch (8 CTAs, so the SMs have room for that kernel's CTAs).
void late_copy(const std::uint16_t* src, std::uint16_t* dst, std::int64_t count, long long delay_cycles,
               cudaStream_t stream);

}  // namespace xkv_test
