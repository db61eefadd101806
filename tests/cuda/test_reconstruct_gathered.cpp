// Gathered decode-sized selections (1100-2048 tokens of 8 column tiles): on an H200 the gather
// kernel's grid of 128-row tiles then fills the SMs and ends in a partly filled row block, which
// the short gathered tests do not reach. Ranks of 2 and 9 k steps, computed and tabulated cos/sin, both pair styles; and positions
// outside a caller's table on every kernel (NaN rows, kBadPosition); and launches right behind
// kernels that write late (the gathered kernels launch as programmatic dependents): their input,
// or with inputs_ready their output and error flag.
#include <cmath>
#include <cstdint>
#include <vector>

#include "late_writer.hpp"
#include "reconstruct_case.hpp"

namespace {

using namespace xkv_test::reconstruct;

/// A bf16 gathered reconstruct of `tokens` rows of A (a_rows x rank, leading dimension rank)
/// through B (rank x heads * d) and its transpose bt, token-major into `out`, with `flag` as the
/// error flag; RoPE, positions and the kernel path are left to the caller.
ReconstructParams gathered(const void* a, std::int64_t a_rows, int rank, const void* b, const void* bt, int heads,
                           int d, std::int64_t tokens, const std::int64_t* indices, void* out, int* flag) {
  ReconstructParams p;
  p.a = a;
  p.a_rows = a_rows;
  p.lda = rank;
  p.rank = rank;
  p.b = b;
  p.ldb = heads * d;
  p.bt = bt;
  p.ldbt = rank;
  p.heads = heads;
  p.head_dim = d;
  p.tokens = tokens;
  p.token_indices = indices;
  p.out = OutputSpec::token_major(out, tokens, heads, d);
  p.error_flag = flag;
  return p;
}

TEST(CudaReconstruct, GatheredDecodeSizedSelections) {
  SKIP_WITHOUT_GPU();
  std::uint64_t salt = 700;
  for (ScalarType dtype : kTypes)
    for (int d : {64, 128})
      for (auto style : {xkv::RopeStyle::HalfSplit, xkv::RopeStyle::Interleaved})
        for (bool table : {false, true}) {
          Rng rng(salt);
          Case c;
          c.dtype = dtype;
          c.head_dim = d;
          c.heads = 1024 / d;  // 8 column tiles of 128
          c.a_rows = 5000;
          // 2 k steps, or 9 (a partial last step)
          c.rank = (d == 128 && style == xkv::RopeStyle::HalfSplit && !table) ? 520 : 100;
          c.rope = rope(style, style == xkv::RopeStyle::Interleaved ? d / 2 : 0);
          c.table = table;
          c.positions_array = table;
          c.max_position = 30000;
          c.position_offset = 11;
          // 1100..2000 tokens: 9 to 16 row blocks of 128 over 8 column tiles, the last one partial
          const std::int64_t count = 1100 + static_cast<std::int64_t>(rng.uniform() * 900.0);
          for (std::int64_t i = 0; i < count; ++i)
            c.indices.push_back(static_cast<std::int64_t>(rng.uniform() * double(c.a_rows)));
          run_case(c, salt++);
        }
}

TEST(CudaReconstruct, PositionsOutsideTheTableGiveNaNAndFlag) {
  SKIP_WITHOUT_GPU();
  const int heads = 8, d = 128, rank = 64;
  // 2048 tokens (16 row blocks x 8 column tiles on an H200); rows 1, 2 and 1500 sit outside the table.
  const std::int64_t a_rows = 50, table_positions = 100, tokens = 2048;
  std::vector<std::int64_t> indices, positions;
  for (std::int64_t t = 0; t < tokens; ++t) {
    indices.push_back((t * 7) % a_rows);
    positions.push_back((t * 3) % table_positions);
  }
  positions[1] = table_positions;
  positions[2] = -3;
  positions[1500] = std::int64_t(1) << 40;
  auto bad = [](std::int64_t t) { return t == 1 || t == 2 || t == 1500; };
  std::vector<std::uint16_t> ones_bits(std::size_t(a_rows) * rank, 0x3f80);  // bf16 1.0
  const DeviceBuffer<std::uint16_t> a = upload(ones_bits);
  DeviceBuffer<std::uint16_t> b(std::size_t(rank) * heads * d), bt(std::size_t(heads) * d * rank);
  DeviceBuffer<std::uint16_t> out(std::size_t(tokens) * heads * d);
  XKV_CUDA_CHECK(cudaMemset(b.get(), 0, b.bytes()));
  XKV_CUDA_CHECK(cudaMemset(bt.get(), 0, bt.bytes()));
  xkv::RopeConfig config = rope(xkv::RopeStyle::HalfSplit);
  const xkv::RopeTable table = xkv::RopeTable::build(config, d, table_positions);
  const DeviceBuffer<float> cos_d = upload(table.cos), sin_d = upload(table.sin);
  const DeviceBuffer<std::int64_t> idx_d = upload(indices), pos_d = upload(positions);
  DeviceBuffer<int> flag(1);
  std::vector<xkv::cuda::KernelPath> paths = {xkv::cuda::KernelPath::MmaSync};
  if (xkv::cuda::detail::have_sm90_kernels() && device_is_sm90()) paths.push_back(xkv::cuda::KernelPath::Wgmma);
  for (const auto path : paths) {
    XKV_CUDA_CHECK(cudaMemset(out.get(), 0xff, out.bytes()));  // poison
    XKV_CUDA_CHECK(cudaMemset(flag.get(), 0, sizeof(int)));
    XKV_CUDA_CHECK(cudaDeviceSynchronize());  // legacy-stream memsets done before the run stream reads
    ReconstructParams p = gathered(a.get(), a_rows, rank, b.get(), bt.get(), heads, d, tokens, idx_d.get(), out.get(),
                                   flag.get());
    p.kernel = path;
    p.positions = pos_d.get();
    p.rope = config;
    p.cos_table = cos_d.get();
    p.sin_table = sin_d.get();
    p.table_positions = table_positions;
    xkv::cuda::reconstruct(p);
    XKV_CUDA_CHECK(cudaDeviceSynchronize());
    const auto host = download(out, std::size_t(tokens) * heads * d);
    EXPECT_EQ(download(flag, 1)[0], xkv::cuda::kBadPosition) << "path=" << int(path);
    for (std::int64_t t = 0; t < tokens; ++t)
      for (int i = 0; i < heads * d; ++i) {
        const double v = from_bits(host[std::size_t(t * heads * d + i)], ScalarType::BFloat16);
        if (bad(t))
          ASSERT_TRUE(std::isnan(v)) << "token " << t << " element " << i << " path=" << int(path);
        else
          ASSERT_EQ(v, 0.0) << "token " << t << " element " << i << " path=" << int(path);  // B = 0
      }
  }
}

/// A decode-sized gathered launch (2048 of 3000 tokens, rank 128, 8 x 128, bf16, RoPE) behind
/// kernels that let it launch at once and write ~20 us later (late_writer.cu). `bad_token`: one
/// index out of range (its row NaN, kBadTokenIndex raised). run(enqueue) checks the output of
/// direct launches and of the same replayed from a CUDA graph (a programmatic edge there), for
/// every kernel path.
struct BehindALateWriter {
  static constexpr int d = 128, rank = 128, heads = 8;
  static constexpr std::int64_t a_rows = 3000, tokens = 2048, bad_token = 5;
  std::vector<std::uint16_t> a, b, bt;
  std::vector<std::int64_t> idx;
  std::vector<double> ref;
  DeviceBuffer<std::uint16_t> a_source, b_d, bt_d, a_d, out;
  DeviceBuffer<std::int64_t> idx_d;
  DeviceBuffer<int> flag{1};
  ReconstructParams p;

  explicit BehindALateWriter(bool with_bad_token) {
    Rng rng(0xB2B);
    auto random_bits = [&](std::size_t count, double scale) {
      std::vector<std::uint16_t> bits(count);
      for (auto& v : bits) v = to_bits((rng.uniform() * 2.0 - 1.0) * scale, ScalarType::BFloat16);
      return bits;
    };
    a = random_bits(std::size_t(a_rows) * rank, 1.0);
    b = random_bits(std::size_t(rank) * heads * d, 0.1);
    bt.resize(b.size());
    for (int k = 0; k < rank; ++k)
      for (int j = 0; j < heads * d; ++j) bt[std::size_t(j) * rank + k] = b[std::size_t(k) * heads * d + j];
    for (std::int64_t t = 0; t < tokens; ++t) idx.push_back(static_cast<std::int64_t>(rng.uniform() * double(a_rows)));
    if (with_bad_token) idx[std::size_t(bad_token)] = a_rows + 7;
    a_source = upload(a);
    b_d = upload(b);
    bt_d = upload(bt);
    idx_d = upload(idx);
    a_d = DeviceBuffer<std::uint16_t>(a.size());
    out = DeviceBuffer<std::uint16_t>(std::size_t(tokens) * heads * d);
    p = gathered(a_d.get(), a_rows, rank, b_d.get(), bt_d.get(), heads, d, tokens, idx_d.get(), out.get(), flag.get());
    p.rope = rope(xkv::RopeStyle::HalfSplit);
    const std::vector<double> inv_freq = p.rope.inverse_frequencies(d);
    ref.assign(out.size(), 0.0);
    for (std::int64_t t = 0; t < tokens; ++t) {
      const std::int64_t token = idx[std::size_t(t)];
      if (token >= a_rows) continue;
      double* row = ref.data() + t * heads * d;
      for (int j = 0; j < heads * d; ++j) {
        double sum = 0.0;
        for (int k = 0; k < rank; ++k)
          sum += from_bits(a[std::size_t(token * rank + k)], ScalarType::BFloat16) *
                 from_bits(b[std::size_t(k * heads * d + j)], ScalarType::BFloat16);
        row[j] = sum;
      }
      for (int h = 0; h < heads; ++h) xkv::apply_rope_head(row + h * d, d, token, p.rope.style, inv_freq);
    }
  }

  /// enqueue(op, stream): the late writers, then op.run(stream).
  template <class Enqueue>
  void run(Enqueue enqueue, int expected_flag) {
    for (const auto path : kernel_paths(Case{}))
      for (bool captured : {false, true}) {  // direct launches, and the same replayed from a CUDA graph
        p.kernel = path;
        const xkv::cuda::Reconstruct op(p);
        const xkv::cuda::Stream stream;
        cudaGraphExec_t exec = nullptr;
        if (captured) {
          cudaGraph_t graph = nullptr;
          XKV_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeThreadLocal));
          enqueue(op, stream.get());
          XKV_CUDA_CHECK(cudaStreamEndCapture(stream.get(), &graph));
          const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
          (void)cudaGraphDestroy(graph);
          XKV_CUDA_CHECK(made);
        }
        for (int round = 0; round < 3; ++round) {
          SCOPED_TRACE(::testing::Message() << "path " << int(path) << " graph " << captured << " round " << round);
          if (captured)
            XKV_CUDA_CHECK(cudaGraphLaunch(exec, stream.get()));
          else
            enqueue(op, stream.get());
          XKV_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
          EXPECT_EQ(download(flag, 1)[0], expected_flag);
          const auto got = download(out, out.size());
          double err = 0.0, norm = 0.0;
          for (std::size_t i = 0; i < got.size(); ++i) {
            const double v = from_bits(got[i], ScalarType::BFloat16);
            if (idx[i / (heads * d)] >= a_rows) {
              ASSERT_TRUE(std::isnan(v)) << "element " << i << " of the bad token's row";
              continue;
            }
            ASSERT_TRUE(std::isfinite(v)) << "element " << i;
            err += (v - ref[i]) * (v - ref[i]);
            norm += ref[i] * ref[i];
          }
          EXPECT_LE(std::sqrt(err / norm), tolerance(ScalarType::BFloat16));
        }
        if (exec) XKV_CUDA_CHECK(cudaGraphExecDestroy(exec));
      }
  }
};

// The gathered kernels launch as programmatic dependents of the stream's previous kernel. Here
// that kernel lets them launch at once and writes their A only ~20 us later (late_copy): they
// must wait for it (griddepcontrol.wait) before reading anything, or they multiply the poison.
TEST(CudaReconstruct, DependentLaunchWaitsForThePreviousKernelsWrites) {
  SKIP_WITHOUT_GPU();
  BehindALateWriter c(false);
  c.run([&](const xkv::cuda::Reconstruct& op, cudaStream_t stream) {
    XKV_CUDA_CHECK(cudaMemsetAsync(c.a_d.get(), 0xff, c.a_d.bytes(), stream));  // NaN until late_copy
    XKV_CUDA_CHECK(cudaMemsetAsync(c.out.get(), 0xff, c.out.bytes(), stream));
    XKV_CUDA_CHECK(cudaMemsetAsync(c.flag.get(), 0, sizeof(int), stream));
    xkv_test::late_copy(c.a_source.get(), c.a_d.get(), std::int64_t(c.a.size()), 40000, stream);
    op.run(stream);
  }, 0);
}

// With inputs_ready the kernels read and multiply while the previous kernel still runs, but must
// not write before it has completed: here that kernel writes NaN over their whole output, then
// (a second late writer) zeroes their error flag, ~20 us after letting them launch. The output
// and the flag raised by the bad token must be theirs.
TEST(CudaReconstruct, EarlyInputReadsStillWriteAfterThePreviousKernel) {
  SKIP_WITHOUT_GPU();
  BehindALateWriter c(true);
  c.p.inputs_ready = true;
  XKV_CUDA_CHECK(cudaMemcpy(c.a_d.get(), c.a_source.get(), c.a_d.bytes(), cudaMemcpyDeviceToDevice));
  const std::vector<std::uint16_t> nan(c.out.size(), 0x7fc0);  // bf16 NaN
  const std::vector<std::uint16_t> zero(2, 0);
  const DeviceBuffer<std::uint16_t> nan_d = upload(nan), zero_d = upload(zero);
  c.run([&](const xkv::cuda::Reconstruct& op, cudaStream_t stream) {
    XKV_CUDA_CHECK(cudaMemsetAsync(c.flag.get(), 0xff, sizeof(int), stream));  // all bits: the late zeroing must land first
    xkv_test::late_copy(nan_d.get(), c.out.get(), std::int64_t(c.out.size()), 40000, stream);
    xkv_test::late_copy(zero_d.get(), reinterpret_cast<std::uint16_t*>(c.flag.get()), 2, 40000, stream);
    op.run(stream);
  }, xkv::cuda::kBadTokenIndex);
}

}  // namespace
