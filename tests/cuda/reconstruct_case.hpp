// Harness of the fused reconstruct+RoPE kernel tests: a Case describes one launch (selection,
// positions, RoPE, output layout); run_case runs it on every kernel that can take it on this
// device and checks the output against the fp64 CPU reference (A*B in fp64 of the stored inputs,
// then xkv::apply_rope_head), poisoned-element bookkeeping included.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "core/test_util.hpp"
#include "xkv/cuda/device.hpp"
#include "xkv/cuda/reconstruct.hpp"
#include "xkv/rope.hpp"

namespace xkv_test::reconstruct {

using xkv::cuda::DeviceBuffer;
using xkv::cuda::OutputSpec;
using xkv::cuda::PagedLayout;
using xkv::cuda::ReconstructParams;
using xkv::cuda::ScalarType;
using xkv_test::Rng;

inline constexpr std::uint16_t kPoison = 0xFFFF;  // NaN in both bf16 and fp16

#define SKIP_WITHOUT_GPU()                                                         \
  do {                                                                             \
    if (!xkv::cuda::device_available()) GTEST_SKIP() << "no CUDA device available"; \
  } while (0)

std::uint16_t to_bits(double v, ScalarType t);
double from_bits(std::uint16_t bits, ScalarType t);
inline double tolerance(ScalarType t) { return t == ScalarType::BFloat16 ? 1e-2 : 1e-3; }

template <class V>
DeviceBuffer<V> upload(const std::vector<V>& host) {
  DeviceBuffer<V> d(std::max<std::size_t>(host.size(), 1));
  if (!host.empty()) XKV_CUDA_CHECK(cudaMemcpy(d.get(), host.data(), host.size() * sizeof(V), cudaMemcpyHostToDevice));
  XKV_CUDA_CHECK(cudaDeviceSynchronize());  // legacy-stream memset/copy done before any run stream reads
  return d;
}
template <class V>
std::vector<V> download(const DeviceBuffer<V>& d, std::size_t count) {
  std::vector<V> host(count);
  if (count) XKV_CUDA_CHECK(cudaMemcpy(host.data(), d.get(), count * sizeof(V), cudaMemcpyDeviceToHost));
  return host;
}

enum class Out { TokenMajor, HeadMajor, PagedNHD, PagedHND };

struct Case {
  ScalarType dtype = ScalarType::BFloat16;
  std::int64_t a_rows = 64;
  int rank = 32;
  int heads = 2;
  int head_dim = 128;
  bool copy = false;  ///< b == nullptr: A holds the rows
  // selection
  std::int64_t begin = 0;
  std::int64_t tokens = -1;  ///< -1: a_rows - begin
  std::vector<std::int64_t> indices;
  // positions
  bool positions_array = false;
  std::int64_t position_offset = 0;
  std::int64_t max_position = 4096;  ///< positions array entries in [0, max_position)
  // rope
  xkv::RopeConfig rope = xkv::RopeConfig::disabled();
  bool table = false;
  // output
  Out out = Out::TokenMajor;
  int page_size = 16;
  std::int64_t row_offset = 0;
  std::int64_t extra_rows = 0;  ///< output capacity beyond what is written (stays poisoned)
};

std::string describe(const Case& c, xkv::cuda::KernelPath path);
/// Runs one case on the GPU and checks it against the fp64 reference: returns the relative error
/// ||out - ref|| / ||ref|| over written elements; fails the test if an element that should be
/// written is not, or one that should not be is.
double run_case_on(const Case& c, xkv::cuda::KernelPath path, std::uint64_t salt);
bool device_is_sm90();
/// The kernels that can run a case here: mma.sync always, wgmma on sm_90 where it applies.
std::vector<xkv::cuda::KernelPath> kernel_paths(const Case& c);
/// Runs a case on every kernel that can take it; returns the largest relative error.
double run_case(const Case& c, std::uint64_t salt);
xkv::RopeConfig rope(xkv::RopeStyle style, int rotary_dim = 0, bool llama3 = false, double theta = 10000.0);

inline const ScalarType kTypes[] = {ScalarType::BFloat16, ScalarType::Float16};

}  // namespace xkv_test::reconstruct
