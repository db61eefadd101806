// Fused reconstruct+RoPE kernels against an fp64 CPU reference (reconstruct_case.hpp): token
// selections (gathered lists, long and offset ranges), output layouts (head-major, paged with a
// shuffled page table), uncompressed rows, and bad device arrays flagged at run time.
#include <cstdint>
#include <vector>

#include "reconstruct_case.hpp"

namespace {

using namespace xkv_test::reconstruct;

TEST(CudaReconstruct, GatheredIndicesWithRepeatsOutOfOrder) {
  SKIP_WITHOUT_GPU();
  std::uint64_t salt = 400;
  for (ScalarType dtype : kTypes)
    for (int d : {64, 128, 256})
      for (std::int64_t count : {1, 3, 333}) {
        Rng rng(salt);
        Case c;
        c.dtype = dtype;
        c.head_dim = d;
        c.heads = 3;
        c.a_rows = 1000;
        c.rank = 100;
        c.rope = rope(xkv::RopeStyle::HalfSplit);
        for (std::int64_t i = 0; i < count; ++i)
          c.indices.push_back(static_cast<std::int64_t>(rng.uniform() * double(c.a_rows)));
        if (count > 2) {
          c.indices[1] = c.indices[0];  // a repeat
          std::sort(c.indices.begin(), c.indices.end(), std::greater<>());
          std::swap(c.indices[0], c.indices[count / 2]);
        }
        run_case(c, salt++);
      }
}

TEST(CudaReconstruct, LongSelections) {
  SKIP_WITHOUT_GPU();
  Rng rng(450);
  Case dense;  // many row blocks, dense, gathered and paged
  dense.a_rows = 65536 + 77;
  dense.rank = 40;
  dense.heads = 1;
  dense.head_dim = 128;
  dense.rope = rope(xkv::RopeStyle::HalfSplit);
  run_case(dense, 451);

  Case gathered;
  gathered.a_rows = 3000;
  gathered.rank = 24;
  gathered.heads = 3;
  gathered.head_dim = 64;
  gathered.rope = rope(xkv::RopeStyle::Interleaved);
  gathered.out = Out::HeadMajor;
  for (int i = 0; i < 65600; ++i)
    gathered.indices.push_back(static_cast<std::int64_t>(rng.uniform() * double(gathered.a_rows)));
  run_case(gathered, 452);

  Case values;
  values.dtype = ScalarType::Float16;
  values.a_rows = 66000;
  values.rank = 32;
  values.heads = 2;
  values.head_dim = 128;
  values.out = Out::PagedNHD;
  run_case(values, 453);
}

TEST(CudaReconstruct, SubRangeWithRowOffset) {
  SKIP_WITHOUT_GPU();
  Case c;
  c.a_rows = 700;
  c.begin = 123;
  c.tokens = 301;
  c.row_offset = 17;
  c.extra_rows = 9;
  c.rank = 72;
  c.rope = rope(xkv::RopeStyle::Interleaved);
  run_case(c, 500);
}

TEST(CudaReconstruct, HeadMajorOutput) {
  SKIP_WITHOUT_GPU();
  for (ScalarType dtype : kTypes)
    for (int d : {64, 128, 256}) {
      Case c;
      c.dtype = dtype;
      c.head_dim = d;
      c.heads = 3;
      c.a_rows = 257;
      c.rank = 56;
      c.rope = rope(xkv::RopeStyle::HalfSplit);
      c.out = Out::HeadMajor;
      c.extra_rows = 31;  // capacity beyond the rows written stays poisoned
      run_case(c, 600 + d);
    }
}

TEST(CudaReconstruct, PagedOutputShuffledPageTable) {
  SKIP_WITHOUT_GPU();
  std::uint64_t salt = 700;
  for (ScalarType dtype : kTypes)
    for (Out layout : {Out::PagedNHD, Out::PagedHND})
      for (int page_size : {1, 16, 13}) {
        Case c;
        c.dtype = dtype;
        c.heads = 2;
        c.head_dim = 128;
        c.a_rows = 500;
        c.rank = 64;
        c.rope = rope(xkv::RopeStyle::HalfSplit);
        c.out = layout;
        c.page_size = page_size;
        c.row_offset = 5;
        c.extra_rows = 7;
        run_case(c, salt++);
        c.indices = {499, 0, 250, 250, 17, 3, 498};
        run_case(c, salt++);
      }
}

TEST(CudaReconstruct, UncompressedRowsCopyWithRope) {
  SKIP_WITHOUT_GPU();
  std::uint64_t salt = 800;
  for (ScalarType dtype : kTypes)
    for (int d : {64, 128, 256})
      for (auto style : {xkv::RopeStyle::HalfSplit, xkv::RopeStyle::Interleaved})
        for (bool table : {false, true}) {
          Case c;
          c.dtype = dtype;
          c.head_dim = d;
          c.heads = 3;
          c.a_rows = 77;
          c.copy = true;
          c.rope = rope(style, d == 64 ? 24 : 0);
          c.table = table;
          c.position_offset = 1000;
          run_case(c, salt++);
          c.indices = {76, 0, 5, 5, 40};
          c.out = Out::PagedHND;
          run_case(c, salt++);
        }
}

TEST(CudaReconstruct, BadDeviceArraysGiveNaNOrSkipAndFlag) {
  SKIP_WITHOUT_GPU();
  const int heads = 2, d = 64, rank = 16;
  const std::int64_t a_rows = 10, tokens = 4;
  DeviceBuffer<std::uint16_t> a(a_rows * rank), rows_a(std::size_t(a_rows) * heads * d);
  DeviceBuffer<std::uint16_t> b(std::size_t(rank) * heads * d), out(tokens * heads * d);
  for (auto* buf : {&a, &rows_a, &b, &out}) XKV_CUDA_CHECK(cudaMemset(buf->get(), 0, buf->bytes()));
  const std::vector<std::int64_t> indices = {3, -1, a_rows + 5, 2};
  const std::vector<std::int64_t> rows = {0, 1, 2, 99};  // row 99 is outside the output
  const DeviceBuffer<std::int64_t> idx_d = upload(indices), rows_d = upload(rows);
  DeviceBuffer<int> flag(1);
  XKV_CUDA_CHECK(cudaMemset(flag.get(), 0, sizeof(int)));
  XKV_CUDA_CHECK(cudaDeviceSynchronize());  // legacy-stream memset/copy done before any run stream reads
  std::vector<std::pair<bool, xkv::cuda::KernelPath>> runs = {{false, xkv::cuda::KernelPath::MmaSync},
                                                                {true, xkv::cuda::KernelPath::MmaSync}};
  if (xkv::cuda::detail::have_sm90_kernels() && device_is_sm90()) runs.push_back({false, xkv::cuda::KernelPath::Wgmma});
  const std::int64_t ldbt = rank;
  DeviceBuffer<std::uint16_t> bt(std::size_t(heads) * d * ldbt);
  XKV_CUDA_CHECK(cudaMemset(bt.get(), 0, bt.bytes()));
  XKV_CUDA_CHECK(cudaDeviceSynchronize());  // legacy-stream memset/copy done before any run stream reads
  for (const auto& [copy, path] : runs) {
    ReconstructParams p;
    p.bt = copy ? nullptr : bt.get();
    p.ldbt = ldbt;
    p.kernel = path;
    p.a = copy ? rows_a.get() : a.get();
    p.a_rows = a_rows;
    p.lda = copy ? heads * d : rank;
    p.rank = rank;
    p.b = copy ? nullptr : b.get();
    p.ldb = heads * d;
    p.heads = heads;
    p.head_dim = d;
    p.tokens = tokens;
    p.token_indices = idx_d.get();
    p.output_rows = rows_d.get();
    p.rope = rope(xkv::RopeStyle::HalfSplit);
    p.out = OutputSpec::token_major(out.get(), tokens, heads, d);
    p.error_flag = flag.get();
    xkv::cuda::reconstruct(p);
    XKV_CUDA_CHECK(cudaDeviceSynchronize());
    const auto host = download(out, std::size_t(tokens) * heads * d);
    const int bits = download(flag, 1)[0];
    EXPECT_EQ(bits, xkv::cuda::kBadTokenIndex | xkv::cuda::kBadOutputRow) << "copy=" << copy << " path=" << int(path);
    for (int i = 0; i < heads * d; ++i) {
      EXPECT_EQ(from_bits(host[std::size_t(i)], ScalarType::BFloat16), 0.0) << "row 0 is a valid zero row";
      EXPECT_TRUE(std::isnan(from_bits(host[std::size_t(heads * d + i)], ScalarType::BFloat16))) << "row 1: index -1";
      EXPECT_TRUE(std::isnan(from_bits(host[std::size_t(2 * heads * d + i)], ScalarType::BFloat16))) << "row 2";
      EXPECT_EQ(host[std::size_t(3 * heads * d + i)], 0) << "row 3 is never written";
    }
    XKV_CUDA_CHECK(cudaMemset(out.get(), 0, out.bytes()));
    XKV_CUDA_CHECK(cudaMemset(flag.get(), 0, sizeof(int)));
    XKV_CUDA_CHECK(cudaDeviceSynchronize());  // legacy-stream memset/copy done before any run stream reads
  }
}

}  // namespace
