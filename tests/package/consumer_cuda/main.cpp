// Links xkv::cuda from the installed package: option checks run anywhere; on a machine with a GPU
// it also compresses a small exactly low-rank group and checks the factors.
#include <xkv/cuda/check.hpp>
#include <xkv/cuda/compressor.hpp>
#include <xkv/cuda/device.hpp>
#include <xkv/version.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

int main() {
  xkv::cuda::GpuCompressorOptions bad;
  bad.power_iterations = -1;
  try {
    bad.validate();
    std::fprintf(stderr, "no error for power_iterations = -1\n");
    return 1;
  } catch (const xkv::Error& e) {
    std::printf("bad options rejected: %s\n", e.what());
  }
  if (!xkv::cuda::device_available()) {
    std::printf("xkv::cuda %s linked; no CUDA device, the GPU run is skipped\n", XKV_VERSION_STRING);
    return 0;
  }
  // Two layers of 2 heads x 16, 256 tokens, rank 4 shared by both layers: exact at rank 4.
  constexpr std::int64_t kTokens = 256;
  constexpr int kLayers = 2, kHeads = 2, kHeadDim = 16, kWidth = kHeads * kHeadDim, kRank = 4;
  std::vector<float> host(std::size_t(kLayers) * kTokens * kWidth);
  for (int l = 0; l < kLayers; ++l)
    for (std::int64_t t = 0; t < kTokens; ++t)
      for (int c = 0; c < kWidth; ++c) {
        double x = 0;
        for (int j = 0; j < kRank; ++j)
          x += std::sin(0.37 * double(t + 1) * (j + 1)) * std::cos(0.11 * (c + 1) * (j + 2) + l);
        host[(std::size_t(l) * kTokens + std::size_t(t)) * kWidth + std::size_t(c)] = float(x);
      }
  xkv::cuda::DeviceBuffer<float> x(host.size()), a(std::size_t(kTokens) * kRank),
      b(std::size_t(kLayers) * kRank * kWidth);
  XKV_CUDA_CHECK(cudaMemcpy(x.get(), host.data(), x.bytes(), cudaMemcpyHostToDevice));
  std::vector<xkv::KVView<float>> layers;
  for (int l = 0; l < kLayers; ++l)
    layers.push_back(
        xkv::KVView<float>::token_major(x.get() + std::size_t(l) * kTokens * kWidth, kTokens, kHeads, kHeadDim));
  xkv::cuda::SvdArguments<float> args;
  args.layers = layers;
  args.rank = kRank;
  args.a = a.get();
  args.b = b.get();
  xkv::cuda::Compressor<float> compressor;
  xkv::cuda::Stream stream;
  (void)compressor.compress_stream(args, stream.get());
  std::vector<float> ha(std::size_t(kTokens) * kRank), hb(std::size_t(kLayers) * kRank * kWidth);
  XKV_CUDA_CHECK(cudaMemcpy(ha.data(), a.get(), a.bytes(), cudaMemcpyDeviceToHost));
  XKV_CUDA_CHECK(cudaMemcpy(hb.data(), b.get(), b.bytes(), cudaMemcpyDeviceToHost));
  double err = 0, norm = 0;
  for (int l = 0; l < kLayers; ++l)
    for (std::int64_t t = 0; t < kTokens; ++t)
      for (int c = 0; c < kWidth; ++c) {
        double y = 0;  // (A B_l)[t][c]
        for (int i = 0; i < kRank; ++i)
          y += double(ha[std::size_t(t) * kRank + std::size_t(i)]) *
               hb[(std::size_t(l) * kRank + std::size_t(i)) * kWidth + std::size_t(c)];
        const double ref = host[(std::size_t(l) * kTokens + std::size_t(t)) * kWidth + std::size_t(c)];
        err += (y - ref) * (y - ref);
        norm += ref * ref;
      }
  const double rel = std::sqrt(err / norm);
  std::printf("xkv::cuda %s: rank-%d group reconstructed to relative error %.2e\n", XKV_VERSION_STRING, kRank, rel);
  // The fast method multiplies fp32 inputs on the TF32 tensor cores: ~1e-4 here (H200).
  return rel < 1e-3 ? 0 : 1;
}
