// Fused reconstruct+RoPE kernels against an fp64 CPU reference (A*B in fp64 of the stored inputs,
// then xkv::apply_rope_head in fp64): every RoPE option, every output layout, awkward sizes,
// gathered index lists, poisoned outputs and bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "core/test_util.hpp"
#include "xkv/cuda/device.hpp"
#include "xkv/cuda/reconstruct.hpp"
#include "xkv/rope.hpp"
#include "xkv/scalar.hpp"

namespace {

using xkv::cuda::DeviceBuffer;
using xkv::cuda::OutputSpec;
using xkv::cuda::PagedLayout;
using xkv::cuda::ReconstructParams;
using xkv::cuda::ScalarType;
using xkv_test::Rng;

constexpr std::uint16_t kPoison = 0xFFFF;  // NaN in both bf16 and fp16

#define SKIP_WITHOUT_GPU()                                                         \
  do {                                                                             \
    if (!xkv::cuda::device_available()) GTEST_SKIP() << "no CUDA device available"; \
  } while (0)

std::uint16_t to_bits(double v, ScalarType t) {
  std::uint16_t bits = 0;
  if (t == ScalarType::BFloat16) {
    const xkv::bfloat16 h(static_cast<float>(v));
    std::memcpy(&bits, &h, 2);
  } else {
    const xkv::half h(static_cast<float>(v));
    std::memcpy(&bits, &h, 2);
  }
  return bits;
}
double from_bits(std::uint16_t bits, ScalarType t) {
  if (t == ScalarType::BFloat16) {
    xkv::bfloat16 h;
    std::memcpy(static_cast<void*>(&h), &bits, 2);
    return static_cast<float>(h);
  }
  xkv::half h;
  std::memcpy(static_cast<void*>(&h), &bits, 2);
  return static_cast<float>(h);
}
double tolerance(ScalarType t) { return t == ScalarType::BFloat16 ? 1e-2 : 1e-3; }

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

std::string describe(const Case& c, xkv::cuda::KernelPath path) {
  std::string s = std::string(xkv::cuda::scalar_type_name(c.dtype)) + " a_rows=" + std::to_string(c.a_rows) +
                  " r=" + std::to_string(c.rank) + " H=" + std::to_string(c.heads) + " d=" + std::to_string(c.head_dim);
  s += c.copy ? " copy" : "";
  s += c.indices.empty() ? " range" : " list(" + std::to_string(c.indices.size()) + ")";
  if (c.rope.enabled)
    s += std::string(" rope ") + (c.rope.style == xkv::RopeStyle::HalfSplit ? "half" : "interleaved") +
         " rd=" + std::to_string(c.rope.rotated_dims(c.head_dim)) + (c.rope.llama3 ? " llama3" : "") +
         (c.table ? " table" : " computed") + (c.positions_array ? " positions[]" : " offset");
  s += " out=" + std::to_string(static_cast<int>(c.out));
  s += path == xkv::cuda::KernelPath::Wgmma ? " [wgmma]" : " [mma.sync]";
  return s;
}

/// Runs one case on the GPU and checks it against the fp64 reference: returns the relative error
/// ||out - ref|| / ||ref|| over written elements; fails the test if an element that should be
/// written is not, or one that should not be is.
double run_case_on(const Case& c, xkv::cuda::KernelPath path, std::uint64_t salt) {
  Rng rng(salt);
  const std::int64_t width = std::int64_t(c.heads) * c.head_dim;
  const std::int64_t tokens = c.indices.empty() ? (c.tokens < 0 ? c.a_rows - c.begin : c.tokens)
                                                : static_cast<std::int64_t>(c.indices.size());
  // Inputs, rounded to the storage type; the reference uses the rounded values. Padding columns of
  // A are poisoned: the kernel must never read them.
  const std::int64_t cols = c.copy ? width : c.rank;
  const std::int64_t lda = (cols + 7) / 8 * 8;
  std::vector<std::uint16_t> a_bits(std::size_t(c.a_rows * lda), kPoison);
  std::vector<double> a_val(std::size_t(c.a_rows * cols));
  for (std::int64_t i = 0; i < c.a_rows; ++i)
    for (std::int64_t j = 0; j < cols; ++j) {
      const std::uint16_t bits = to_bits(rng.normal(), c.dtype);
      a_bits[std::size_t(i * lda + j)] = bits;
      a_val[std::size_t(i * cols + j)] = from_bits(bits, c.dtype);
    }
  std::vector<std::uint16_t> b_bits, bt_bits;
  std::vector<double> b_val;
  const std::int64_t ldbt = (c.rank + 7) / 8 * 8;
  if (!c.copy) {
    b_bits.resize(std::size_t(c.rank * width));
    b_val.resize(b_bits.size());
    bt_bits.assign(std::size_t(width * ldbt), kPoison);  // padding poisoned: never read
    const double scale = 1.0 / std::sqrt(double(c.rank));
    for (std::size_t i = 0; i < b_bits.size(); ++i) {
      b_bits[i] = to_bits(scale * rng.normal(), c.dtype);
      b_val[i] = from_bits(b_bits[i], c.dtype);
      bt_bits[std::size_t(std::int64_t(i % width) * ldbt + std::int64_t(i / width))] = b_bits[i];
    }
  }
  std::vector<std::int64_t> positions;
  if (c.positions_array)
    for (std::int64_t t = 0; t < tokens; ++t)
      positions.push_back(static_cast<std::int64_t>(rng.uniform() * double(c.max_position)));

  // Output buffer and its addressing.
  const std::int64_t rows_needed = c.row_offset + tokens;
  const std::int64_t capacity = rows_needed + c.extra_rows;
  std::vector<std::int32_t> page_table;
  std::int64_t pool_pages = 0;
  if (c.out == Out::PagedNHD || c.out == Out::PagedHND) {
    const std::int64_t logical = (capacity + c.page_size - 1) / c.page_size;
    pool_pages = logical + 3;  // pages never referenced must stay poisoned
    std::vector<std::int32_t> perm(static_cast<std::size_t>(pool_pages));
    std::iota(perm.begin(), perm.end(), 0);
    for (std::size_t i = perm.size(); i > 1; --i) std::swap(perm[i - 1], perm[std::size_t(rng.bits() % i)]);
    page_table.assign(perm.begin(), perm.begin() + logical);
  }
  const std::size_t out_elems = page_table.empty() ? std::size_t(capacity * width)
                                                   : std::size_t(pool_pages * c.page_size * width);
  DeviceBuffer<std::uint16_t> out_d(out_elems);
  XKV_CUDA_CHECK(cudaMemset(out_d.get(), 0xFF, out_d.bytes()));
  XKV_CUDA_CHECK(cudaDeviceSynchronize());  // legacy-stream memset/copy done before any run stream reads
  const DeviceBuffer<std::int32_t> table_d = upload(page_table);

  OutputSpec spec;
  switch (c.out) {
    case Out::TokenMajor: spec = OutputSpec::token_major(out_d.get(), capacity, c.heads, c.head_dim); break;
    case Out::HeadMajor: spec = OutputSpec::head_major(out_d.get(), c.heads, capacity, c.head_dim); break;
    case Out::PagedNHD:
    case Out::PagedHND:
      spec = OutputSpec::paged_pool(out_d.get(), pool_pages, c.page_size, c.heads, c.head_dim,
                                    c.out == Out::PagedNHD ? PagedLayout::NHD : PagedLayout::HND, table_d.get(),
                                    static_cast<std::int64_t>(page_table.size()));
      break;
  }
  auto address = [&](std::int64_t row, int h, int i) -> std::size_t {
    if (page_table.empty()) return std::size_t(row * spec.token_stride + h * spec.head_stride + i);
    const std::int64_t page = page_table[std::size_t(row / c.page_size)];
    return std::size_t(page * spec.page_stride + (row % c.page_size) * spec.token_stride + h * spec.head_stride + i);
  };

  const DeviceBuffer<std::uint16_t> a_d = upload(a_bits), b_d = upload(b_bits), bt_d = upload(bt_bits);
  const DeviceBuffer<std::int64_t> idx_d = upload(c.indices), pos_d = upload(positions);
  xkv::RopeTable table;
  DeviceBuffer<float> cos_d, sin_d;
  const std::int64_t table_positions = std::max<std::int64_t>(c.max_position, c.position_offset + c.a_rows);
  if (c.table) {
    table = xkv::RopeTable::build(c.rope, c.head_dim, table_positions);
    cos_d = upload(table.cos);
    sin_d = upload(table.sin);
  }

  ReconstructParams p;
  p.dtype = c.dtype;
  p.a = a_d.get();
  p.a_rows = c.a_rows;
  p.lda = lda;
  p.rank = c.copy ? 0 : c.rank;
  p.b = c.copy ? nullptr : b_d.get();
  p.ldb = width;
  p.bt = c.copy ? nullptr : bt_d.get();
  p.ldbt = ldbt;
  p.kernel = path;
  p.heads = c.heads;
  p.head_dim = c.head_dim;
  p.tokens = tokens;
  p.token_begin = c.begin;
  p.token_indices = c.indices.empty() ? nullptr : idx_d.get();
  p.positions = c.positions_array ? pos_d.get() : nullptr;
  p.position_offset = c.position_offset;
  p.rope = c.rope;
  if (c.table) {
    p.cos_table = cos_d.get();
    p.sin_table = sin_d.get();
    p.table_positions = table_positions;
  }
  p.out = spec;
  p.output_row_offset = c.row_offset;
  DeviceBuffer<int> flag_d(1);
  XKV_CUDA_CHECK(cudaMemset(flag_d.get(), 0, sizeof(int)));
  XKV_CUDA_CHECK(cudaDeviceSynchronize());  // legacy-stream memset/copy done before any run stream reads
  p.error_flag = flag_d.get();
  const xkv::cuda::Reconstruct op(p);
  if (!c.copy && tokens > 0) {
    EXPECT_EQ(op.selected_kernel(), path);
  }
  op.run(nullptr);
  XKV_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<std::uint16_t> out = download(out_d, out_elems);
  EXPECT_EQ(download(flag_d, 1)[0], 0) << describe(c, path);

  // fp64 reference, scattered to where each element must land.
  std::vector<char> written(out_elems, 0);
  const std::vector<double> inv_freq = c.rope.enabled ? c.rope.inverse_frequencies(c.head_dim) : std::vector<double>{};
  double err2 = 0, ref2 = 0;
  std::int64_t unwritten = 0;
  std::vector<double> row(static_cast<std::size_t>(width));
  for (std::int64_t t = 0; t < tokens; ++t) {
    const std::int64_t token = c.indices.empty() ? c.begin + t : c.indices[std::size_t(t)];
    const std::int64_t position = c.positions_array ? positions[std::size_t(t)] : c.position_offset + token;
    for (std::int64_t j = 0; j < width; ++j) {
      double sum = 0;
      if (c.copy) {
        sum = a_val[std::size_t(token * cols + j)];
      } else {
        for (int k = 0; k < c.rank; ++k) sum += a_val[std::size_t(token * cols + k)] * b_val[std::size_t(k * width + j)];
      }
      row[std::size_t(j)] = sum;
    }
    for (int h = 0; h < c.heads; ++h) {
      double* head = row.data() + std::size_t(h) * c.head_dim;
      if (c.rope.enabled) xkv::apply_rope_head(head, c.head_dim, position, c.rope.style, inv_freq);
      for (int i = 0; i < c.head_dim; ++i) {
        const std::size_t at = address(c.row_offset + t, h, i);
        written[at] = 1;
        if (out[at] == kPoison) ++unwritten;
        const double got = from_bits(out[at], c.dtype);
        err2 += (got - head[i]) * (got - head[i]);
        ref2 += head[i] * head[i];
      }
    }
  }
  EXPECT_EQ(unwritten, 0) << describe(c, path) << ": elements left poisoned";
  std::int64_t stray = 0;
  for (std::size_t i = 0; i < out_elems; ++i)
    if (!written[i] && out[i] != kPoison) ++stray;
  EXPECT_EQ(stray, 0) << describe(c, path) << ": elements written outside the selected rows";
  const double rel = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  EXPECT_TRUE(std::isfinite(rel)) << describe(c, path);
  EXPECT_LE(rel, tolerance(c.dtype)) << describe(c, path);
  return rel;
}

bool device_is_sm90() {
  int device = 0, major = 0, minor = 0;
  XKV_CUDA_CHECK(cudaGetDevice(&device));
  XKV_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  XKV_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major == 9 && minor == 0;
}

/// The kernels that can run a case here: mma.sync always, wgmma on sm_90 where it applies.
std::vector<xkv::cuda::KernelPath> kernel_paths(const Case& c) {
  std::vector<xkv::cuda::KernelPath> paths = {xkv::cuda::KernelPath::MmaSync};
  const int rd = c.rope.rotated_dims(c.head_dim);
  const auto mode = rd == 0 ? xkv::cuda::detail::RopeMode::None
                    : c.rope.style == xkv::RopeStyle::HalfSplit ? xkv::cuda::detail::RopeMode::HalfSplit
                                                                 : xkv::cuda::detail::RopeMode::Interleaved;
  if (!c.copy && xkv::cuda::detail::have_sm90_kernels() && xkv::cuda::detail::wgmma_supports(c.head_dim, mode, rd, !c.indices.empty()) &&
      device_is_sm90())
    paths.push_back(xkv::cuda::KernelPath::Wgmma);
  return paths;
}

/// Runs a case on every kernel that can take it; returns the largest relative error.
double run_case(const Case& c, std::uint64_t salt) {
  double worst = 0;
  for (const auto path : kernel_paths(c)) worst = std::max(worst, run_case_on(c, path, salt));
  return worst;
}

xkv::RopeConfig rope(xkv::RopeStyle style, int rotary_dim = 0, bool llama3 = false, double theta = 10000.0) {
  xkv::RopeConfig r;
  r.style = style;
  r.rotary_dim = rotary_dim;
  r.theta = theta;
  if (llama3) r.llama3 = xkv::Llama3Scaling{};
  return r;
}

const ScalarType kTypes[] = {ScalarType::BFloat16, ScalarType::Float16};

TEST(CudaReconstruct, DenseAwkwardSizesEveryHeadDim) {
  SKIP_WITHOUT_GPU();
  std::uint64_t salt = 1;
  for (ScalarType dtype : kTypes)
    for (int d : {64, 128, 256})
      for (std::int64_t n : {1, 3, 1000})
        for (int r : {24, 100, 128}) {
          Case c;
          c.dtype = dtype;
          c.head_dim = d;
          c.heads = 3;
          c.a_rows = n;
          c.rank = r;
          c.rope = rope(xkv::RopeStyle::HalfSplit);
          run_case(c, salt++);
        }
}

TEST(CudaReconstruct, ValuesWithoutRope) {
  SKIP_WITHOUT_GPU();
  for (ScalarType dtype : kTypes)
    for (int d : {64, 128, 256}) {
      Case c;
      c.dtype = dtype;
      c.head_dim = d;
      c.heads = 2;
      c.a_rows = 517;
      c.rank = 96;
      run_case(c, 100 + d);
    }
}

TEST(CudaReconstruct, EveryRopeOption) {
  SKIP_WITHOUT_GPU();
  std::uint64_t salt = 200;
  for (ScalarType dtype : kTypes)
    for (int d : {64, 128, 256})
      for (auto style : {xkv::RopeStyle::HalfSplit, xkv::RopeStyle::Interleaved})
        for (int rd : {0, d / 2, 24})        // whole head, half (partial rotary), one not a multiple of 16
          for (bool llama3 : {false, true})
            for (bool table : {false, true})
              for (bool positions_array : {false, true}) {
                Case c;
                c.dtype = dtype;
                c.head_dim = d;
                c.heads = 2;
                c.a_rows = 150;
                c.rank = 40;
                c.rope = rope(style, rd, llama3, llama3 ? 500000.0 : 10000.0);
                c.table = table;
                c.positions_array = positions_array;
                c.position_offset = positions_array ? 0 : 37;
                c.max_position = 20000;
                run_case(c, salt++);
              }
}

TEST(CudaReconstruct, LargePositionsKeepFp16Accuracy) {
  SKIP_WITHOUT_GPU();
  for (ScalarType dtype : kTypes) {
    Case c;
    c.dtype = dtype;
    c.a_rows = 300;
    c.rank = 64;
    c.heads = 2;
    c.rope = rope(xkv::RopeStyle::HalfSplit);
    c.position_offset = 131072 * 4 - 150;  // angles of ~5e5 radians in the fastest pair
    run_case(c, 300 + static_cast<int>(dtype));
    c.positions_array = true;
    c.max_position = 1 << 20;
    run_case(c, 310 + static_cast<int>(dtype));
  }
}

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

// Grids of many waves at full width: rank 512 and a rank that ends mid k-tile, a half-empty
// column tile, both RoPE styles, gathered rows with explicit positions, head-major output.
TEST(CudaReconstruct, ManyWavesFullWidth) {
  SKIP_WITHOUT_GPU();
  Rng rng(470);
  std::uint64_t salt = 471;
  for (ScalarType dtype : kTypes)
    for (int r : {512, 100}) {
      Case c;
      c.dtype = dtype;
      c.a_rows = 6000 + 13;
      c.rank = r;
      c.heads = 8;
      c.head_dim = 128;
      c.rope = rope(xkv::RopeStyle::HalfSplit, 0, true, 500000.0);
      c.max_position = 100000;
      run_case(c, salt++);
    }
  Case narrow;  // 3 heads of 64: the second column tile is half empty
  narrow.a_rows = 20000;
  narrow.rank = 200;
  narrow.heads = 3;
  narrow.head_dim = 64;
  narrow.rope = rope(xkv::RopeStyle::Interleaved);
  narrow.out = Out::HeadMajor;
  run_case(narrow, salt++);
  Case gathered;
  gathered.a_rows = 9000;
  gathered.rank = 64;
  gathered.heads = 16;
  gathered.head_dim = 64;
  gathered.rope = rope(xkv::RopeStyle::HalfSplit);
  gathered.positions_array = true;
  gathered.max_position = 1 << 20;
  for (int i = 0; i < 5000; ++i)
    gathered.indices.push_back(static_cast<std::int64_t>(rng.uniform() * double(gathered.a_rows)));
  run_case(gathered, salt++);
}

// More row blocks than a persistent grid has CTAs (132 on an H200), so CTAs walk several row
// blocks and, within one, several column tiles that reuse the row's RoPE factors: arbitrary
// positions, a half-empty last column tile, a rank ending mid k-tile, and the caller's cos/sin
// table with partial interleaved rotary dims.
TEST(CudaReconstruct, PersistentRowBlocksShareRopeFactors) {
  SKIP_WITHOUT_GPU();
  Case c;
  c.a_rows = 3 * 132 * 128 + 1000;
  c.rank = 100;
  c.heads = 5;
  c.head_dim = 128;
  c.rope = rope(xkv::RopeStyle::HalfSplit, 0, true, 500000.0);
  c.positions_array = true;
  c.max_position = 1 << 17;
  run_case(c, 480);
  Case table;
  table.dtype = ScalarType::Float16;
  table.a_rows = 2 * 132 * 128 + 77;
  table.rank = 64;
  table.heads = 8;
  table.head_dim = 64;
  table.rope = rope(xkv::RopeStyle::Interleaved, 32);
  table.table = true;
  table.position_offset = 5;
  run_case(table, 481);
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

TEST(CudaReconstruct, ZeroTokensIsANoOp) {
  SKIP_WITHOUT_GPU();
  Case c;
  c.a_rows = 8;
  c.begin = 8;
  c.tokens = 0;
  c.extra_rows = 4;  // must stay poisoned
  run_case(c, 900);
}

}  // namespace
