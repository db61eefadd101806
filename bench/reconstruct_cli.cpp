// xkv_reconstruct_cli: times the fused reconstruct+RoPE kernel (and cuBLAS A*B alone) on one shape
// and prints one line of key=value pairs. Used by bench/reconstruct_side_by_side.py so that torch,
// cuBLAS and xkv are timed in one run on the same GPU.
//
//   xkv_reconstruct_cli --n 131072 --r 512 --heads 8 --d 128 [--dtype bf16|fp16] [--gather 2048]
//                       [--rope 1] [--iters 50] [--cublas 1] [--kernel auto|mma|wgmma]
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include "xkv/cuda/check.hpp"
#include "xkv/cuda/device.hpp"
#include "xkv/cuda/reconstruct.hpp"

namespace {

using xkv::cuda::DeviceBuffer;

/// Random bf16/fp16 bits (never zeros: zeros run faster than real data).
std::vector<std::uint16_t> random_bits(std::size_t count, bool bf16, float scale, std::uint64_t seed) {
  std::vector<std::uint16_t> out(count);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-scale, scale);
  for (auto& v : out) {
    const float f = u(rng);
    if (bf16) {
      std::uint32_t bits = 0;
      std::memcpy(&bits, &f, 4);
      v = static_cast<std::uint16_t>((bits + 0x8000u) >> 16);
    } else {
      // fp16 from float for |f| < 1 (normal range), round-to-nearest via scaling.
      std::uint32_t bits = 0;
      std::memcpy(&bits, &f, 4);
      const std::uint32_t sign = (bits >> 16) & 0x8000u;
      const int exp = int((bits >> 23) & 0xff) - 127 + 15;
      const std::uint32_t mant = bits & 0x7fffffu;
      v = exp <= 0 ? static_cast<std::uint16_t>(sign) : static_cast<std::uint16_t>(sign | (exp << 10) | (mant >> 13));
    }
  }
  return out;
}

struct Options {
  std::int64_t n = 131072, gather = 0;
  int r = 512, heads = 8, d = 128, iters = 50;
  bool bf16 = true, rope = true, cublas = true;
  xkv::cuda::KernelPath kernel = xkv::cuda::KernelPath::Auto;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--n") o.n = std::stoll(v);
    else if (k == "--r") o.r = std::stoi(v);
    else if (k == "--heads") o.heads = std::stoi(v);
    else if (k == "--d") o.d = std::stoi(v);
    else if (k == "--gather") o.gather = std::stoll(v);
    else if (k == "--iters") o.iters = std::stoi(v);
    else if (k == "--dtype") o.bf16 = v != "fp16";
    else if (k == "--rope") o.rope = v != "0";
    else if (k == "--cublas") o.cublas = v != "0";
    else if (k == "--kernel")
      o.kernel = v == "mma" ? xkv::cuda::KernelPath::MmaSync
                 : v == "wgmma" ? xkv::cuda::KernelPath::Wgmma : xkv::cuda::KernelPath::Auto;
    else throw std::runtime_error("unknown option " + k);
  }
  return o;
}

template <class F>
double median_us(int iters, void* flush, std::size_t flush_bytes, F&& launch) {
  xkv::cuda::EventTimer timer;
  for (int i = 0; i < 3; ++i) launch();  // warm-up
  std::vector<double> times;
  for (int i = 0; i < iters; ++i) {
    XKV_CUDA_CHECK(cudaMemsetAsync(flush, i & 0xff, flush_bytes, nullptr));  // evict L2
    timer.start(nullptr);
    launch();
    times.push_back(1000.0 * timer.stop(nullptr));
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  const std::int64_t width = std::int64_t(o.heads) * o.d;
  const std::int64_t lda = (o.r + 7) / 8 * 8;
  const std::int64_t rows = o.gather > 0 ? o.gather : o.n;
  DeviceBuffer<std::uint16_t> a(std::size_t(o.n * lda)), b(std::size_t(o.r * width)), out(std::size_t(rows * width));
  DeviceBuffer<std::uint16_t> bt(std::size_t(width * lda));  // B transposed, the wgmma kernel's operand
  {
    const auto ha = random_bits(a.size(), o.bf16, 1.0f, 1), hb = random_bits(b.size(), o.bf16, 0.05f, 2);
    std::vector<std::uint16_t> hbt(bt.size(), 0);
    for (std::int64_t k = 0; k < o.r; ++k)
      for (std::int64_t c = 0; c < width; ++c) hbt[std::size_t(c * lda + k)] = hb[std::size_t(k * width + c)];
    XKV_CUDA_CHECK(cudaMemcpy(a.get(), ha.data(), a.bytes(), cudaMemcpyHostToDevice));
    XKV_CUDA_CHECK(cudaMemcpy(b.get(), hb.data(), b.bytes(), cudaMemcpyHostToDevice));
    XKV_CUDA_CHECK(cudaMemcpy(bt.get(), hbt.data(), bt.bytes(), cudaMemcpyHostToDevice));
  }
  std::vector<std::int64_t> idx;
  if (o.gather > 0) {
    std::mt19937_64 rng(3);
    for (std::int64_t i = 0; i < o.gather; ++i) idx.push_back(std::int64_t(rng() % std::uint64_t(o.n)));
  }
  DeviceBuffer<std::int64_t> idx_d(std::max<std::size_t>(idx.size(), 1));
  if (!idx.empty())
    XKV_CUDA_CHECK(cudaMemcpy(idx_d.get(), idx.data(), idx.size() * 8, cudaMemcpyHostToDevice));
  int device = 0;
  cudaDeviceProp prop{};
  XKV_CUDA_CHECK(cudaGetDevice(&device));
  XKV_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  const std::size_t flush_bytes = std::size_t(prop.l2CacheSize) * 4;
  DeviceBuffer<unsigned char> flush(flush_bytes);

  xkv::cuda::ReconstructParams p;
  p.dtype = o.bf16 ? xkv::cuda::ScalarType::BFloat16 : xkv::cuda::ScalarType::Float16;
  p.a = a.get();
  p.a_rows = o.n;
  p.lda = lda;
  p.rank = o.r;
  p.b = b.get();
  p.ldb = width;
  p.bt = bt.get();
  p.ldbt = lda;
  p.kernel = o.kernel;
  p.heads = o.heads;
  p.head_dim = o.d;
  p.tokens = rows;
  p.token_indices = o.gather > 0 ? idx_d.get() : nullptr;
  if (o.rope) p.rope = xkv::RopeConfig{};
  p.out = xkv::cuda::OutputSpec::token_major(out.get(), rows, o.heads, o.d);
  const xkv::cuda::Reconstruct op(p);
  const double ours = median_us(o.iters, flush.get(), flush_bytes, [&] { op.run(nullptr); });
  XKV_CUDA_CHECK(cudaDeviceSynchronize());

  double cublas = 0;
  if (o.cublas && o.gather == 0 && lda == o.r) {
    cublasHandle_t handle = nullptr;
    XKV_CUDA_CHECK(cublasCreate(&handle));
    const float alpha = 1.f, beta = 0.f;
    const cudaDataType_t type = o.bf16 ? CUDA_R_16BF : CUDA_R_16F;
    // Row-major C[n x W] = A[n x r] B[r x W] is column-major C^T = B^T A^T.
    auto gemm = [&] {
      XKV_CUDA_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, int(width), int(o.n), o.r, &alpha, b.get(), type,
                                  int(width), a.get(), type, int(lda), &beta, out.get(), type, int(width),
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    };
    cublas = median_us(o.iters, flush.get(), flush_bytes, gemm);
    XKV_CUDA_CHECK(cublasDestroy(handle));
  }
  const double flops = 2.0 * double(rows) * o.r * double(width);
  std::printf("kernel=%s n=%lld gather=%lld r=%d heads=%d d=%d dtype=%s rope=%d xkv_us=%.2f xkv_tflops=%.1f cublas_us=%.2f "
              "cublas_tflops=%.1f\n",
              op.selected_kernel() == xkv::cuda::KernelPath::Wgmma ? "wgmma" : "mma.sync", static_cast<long long>(o.n),
              static_cast<long long>(o.gather), o.r, o.heads, o.d, o.bf16 ? "bf16" : "fp16",
              int(o.rope), ours, flops / ours * 1e-6, cublas, cublas > 0 ? flops / cublas * 1e-6 : 0.0);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "xkv_reconstruct_cli: %s\n", e.what());
  return 1;
}
