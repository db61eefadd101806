// SvdArguments::bt: every method writes each B_l transposed next to B (bit for bit, padding
// columns untouched), and factors compressed on the GPU reconstruct on the GPU through the
// transposed copy (the wgmma kernel on sm_90) as they do through B alone (the mma.sync kernel).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "test_svd_util.hpp"
#include "xkv/cuda/reconstruct.hpp"

namespace xkv::test {
namespace {

using bf16 = __nv_bfloat16;
using cuda::GpuCompressorOptions;
using cuda::GpuSvdMethod;

struct Case {
  const char* name;
  std::int64_t n;
  GpuSvdMethod method;
  cuda::SubspaceProduct product;
  int rank;  ///< 0: energy rank
};

std::vector<std::uint16_t> fetch_bits(const cuda::DeviceBuffer<bf16>& buf) {
  std::vector<std::uint16_t> host(buf.size());
  XKV_CUDA_CHECK(cudaMemcpy(host.data(), buf.get(), buf.bytes(), cudaMemcpyDeviceToHost));
  return host;
}

TEST(GpuSvdTransposedB, EveryMethodWritesBTransposed) {
  XKV_SKIP_WITHOUT_GPU();
  const int layers = 2, heads = 2, head_dim = 64, width = heads * head_dim, capacity = 24;
  const std::int64_t ld = capacity + 8;  // padding columns stay poisoned
  const Case cases[] = {
      {"subspace, sketches", 300, GpuSvdMethod::Subspace, cuda::SubspaceProduct::Sketch, 20},
      {"subspace, Gram product", 300, GpuSvdMethod::Subspace, cuda::SubspaceProduct::Gram, 20},
      {"randomized", 300, GpuSvdMethod::Randomized, cuda::SubspaceProduct::Auto, 21},
      {"exact, columns side", 300, GpuSvdMethod::Exact, cuda::SubspaceProduct::Auto, 19},
      {"exact, rows side (n < D)", 100, GpuSvdMethod::Exact, cuda::SubspaceProduct::Auto, 17},
      {"energy rank", 300, GpuSvdMethod::Subspace, cuda::SubspaceProduct::Auto, 0},
  };
  std::uint64_t salt = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const auto x = spectrum_matrix(c.n, std::int64_t(layers) * width, 0.7, test_seed() + 600 + salt++);
    const auto group = upload<bf16>(x, layers, heads, head_dim, Layout::TokenMajorPadded);
    DeviceFactors<bf16> out(c.n, std::int64_t(layers) * width, capacity);
    cuda::DeviceBuffer<bf16> bt(std::size_t(layers) * width * ld);
    XKV_CUDA_CHECK(cudaMemset(bt.get(), 0xFF, bt.bytes()));
    XKV_CUDA_CHECK(cudaDeviceSynchronize());
    GpuCompressorOptions options;
    options.method = c.method;
    options.subspace_product = c.product;
    cuda::Compressor<bf16> svd(options);
    cuda::SvdArguments<bf16> args;
    args.layers = group.views;
    args.rank = c.rank;
    args.energy_fraction = 0.8;  // about rank 15 of this spectrum, within the capacity
    args.rank_capacity = capacity;
    args.a = out.a.get();
    args.b = out.b.get();
    args.bt = bt.get();
    args.bt_ld = ld;
    cuda::Stream stream;
    const int r = svd.compress_stream(args, stream.get()).rank;
    ASSERT_GE(r, 1);
    ASSERT_LE(r, capacity);
    if (c.rank > 0) {
      EXPECT_EQ(r, c.rank);
    }
    const auto b_bits = fetch_bits(out.b);
    const auto bt_bits = fetch_bits(bt);
    int mismatches = 0, padding_written = 0;
    for (int l = 0; l < layers; ++l)
      for (int j = 0; j < width; ++j)
        for (std::int64_t i = 0; i < ld; ++i) {
          const std::uint16_t got = bt_bits[std::size_t((std::int64_t(l) * width + j) * ld + i)];
          if (i < r)
            mismatches += got != b_bits[std::size_t((std::int64_t(l) * r + i) * width + j)];
          else
            padding_written += got != 0xFFFF;
        }
    EXPECT_EQ(mismatches, 0) << "rank " << r;
    EXPECT_EQ(padding_written, 0) << "rank " << r;
  }
}

TEST(GpuSvdTransposedB, LeadingDimensionBelowTheCapacityIsRejected) {
  XKV_SKIP_WITHOUT_GPU();
  const auto group = upload<float>(spectrum_matrix(40, 64, 0.5, test_seed() + 620), 2, 1, 32, Layout::TokenMajorPadded);
  DeviceFactors<float> out(40, 64, 8);
  cuda::DeviceBuffer<float> bt(64 * 8);
  cuda::SvdArguments<float> args;
  args.layers = group.views;
  args.rank = 6;
  args.rank_capacity = 8;
  args.a = out.a.get();
  args.b = out.b.get();
  args.bt = bt.get();
  args.bt_ld = 7;
  cuda::Compressor<float> svd;
  try {
    svd.validate(args);
    ADD_FAILURE() << "bt_ld below the capacity accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("bt_ld=7"), std::string::npos) << e.what();
  }
  args.bt_ld = 8;
  EXPECT_NO_THROW(svd.validate(args));
}

// Compress a group's keys on the GPU, then rebuild layer 1's rotated keys on the GPU twice: from
// B alone and from the transposed copy (the wgmma kernel where the device has it).
TEST(GpuSvdTransposedB, CompressedFactorsReconstructThroughTheTransposedCopy) {
  XKV_SKIP_WITHOUT_GPU();
  const int layers = 2, heads = 2, head_dim = 64, width = heads * head_dim, r = 24;
  const std::int64_t n = 777;
  const auto x = spectrum_matrix(n, std::int64_t(layers) * width, 0.6, test_seed() + 630);
  const auto group = upload<bf16>(x, layers, heads, head_dim, Layout::TokenMajorPadded);
  DeviceFactors<bf16> out(n, std::int64_t(layers) * width, r);
  cuda::DeviceBuffer<bf16> bt(std::size_t(layers) * width * r);
  cuda::SvdArguments<bf16> args;
  args.layers = group.views;
  args.rank = r;
  args.a = out.a.get();
  args.b = out.b.get();
  args.bt = bt.get();
  cuda::Compressor<bf16> svd;
  cuda::Stream stream;
  ASSERT_EQ(svd.compress_stream(args, stream.get()).rank, r);

  const int layer = 1;
  cuda::ReconstructParams p;
  p.dtype = cuda::ScalarType::BFloat16;
  p.a = out.a.get();
  p.a_rows = n;
  p.lda = r;
  p.rank = r;
  p.b = out.b.get() + std::size_t(layer) * r * width;
  p.ldb = width;
  p.heads = heads;
  p.head_dim = head_dim;
  p.tokens = n;
  p.position_offset = 5;
  p.rope = RopeConfig{};
  cuda::DeviceBuffer<bf16> from_b(std::size_t(n) * width), from_bt(std::size_t(n) * width);
  XKV_CUDA_CHECK(cudaMemset(from_b.get(), 0xFF, from_b.bytes()));
  XKV_CUDA_CHECK(cudaMemset(from_bt.get(), 0xFF, from_bt.bytes()));
  XKV_CUDA_CHECK(cudaDeviceSynchronize());
  p.out = cuda::OutputSpec::token_major(from_b.get(), n, heads, head_dim);
  p.kernel = cuda::KernelPath::MmaSync;
  cuda::Reconstruct(p).run(stream.get());
  p.bt = bt.get() + std::size_t(layer) * width * r;
  p.ldbt = r;
  p.kernel = cuda::KernelPath::Auto;
  p.out = cuda::OutputSpec::token_major(from_bt.get(), n, heads, head_dim);
  const cuda::Reconstruct through_bt(p);
  std::printf("reconstruct from the transposed copy: %s kernel\n",
              through_bt.selected_kernel() == cuda::KernelPath::Wgmma ? "wgmma" : "mma.sync");
  through_bt.run(stream.get());
  stream.synchronize();
  const auto a_bits = fetch_bits(from_b), b_bits = fetch_bits(from_bt);
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a_bits.size(); ++i) {
    float u = 0, v = 0;
    const std::uint32_t ua = std::uint32_t(a_bits[i]) << 16, ub = std::uint32_t(b_bits[i]) << 16;
    std::memcpy(&u, &ua, 4);
    std::memcpy(&v, &ub, 4);
    ASSERT_TRUE(std::isfinite(u) && std::isfinite(v)) << "element " << i << " not written";
    num += (double(u) - v) * (double(u) - v);
    den += double(u) * u;
  }
  EXPECT_LE(std::sqrt(num / den), 1e-2);
}

}  // namespace
}  // namespace xkv::test
