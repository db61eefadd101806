// Harness of the fused reconstruct+RoPE kernel tests (see reconstruct_case.hpp).
#include "reconstruct_case.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "xkv/scalar.hpp"

namespace xkv_test::reconstruct {

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
    if (c.copy) {
      for (std::int64_t j = 0; j < width; ++j) row[std::size_t(j)] = a_val[std::size_t(token * cols + j)];
    } else {  // row = A[token] * B, B walked row by row (contiguous) so the reference stays quick
      std::fill(row.begin(), row.end(), 0.0);
      for (int k = 0; k < c.rank; ++k) {
        const double a_tk = a_val[std::size_t(token * cols + k)];
        const double* b_row = b_val.data() + std::size_t(k) * std::size_t(width);
        for (std::int64_t j = 0; j < width; ++j) row[std::size_t(j)] += a_tk * b_row[j];
      }
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

double run_case(const Case& c, std::uint64_t salt) {
  double worst = 0;
  for (const auto path : kernel_paths(c)) worst = std::max(worst, run_case_on(c, path, salt));
  return worst;
}

xkv::RopeConfig rope(xkv::RopeStyle style, int rotary_dim, bool llama3, double theta) {
  xkv::RopeConfig r;
  r.style = style;
  r.rotary_dim = rotary_dim;
  r.theta = theta;
  if (llama3) r.llama3 = xkv::Llama3Scaling{};
  return r;
}

}  // namespace xkv_test::reconstruct
