// Host side of the fused reconstruct+RoPE launch: argument validation and kernel selection.
#include <cstdint>
#include <vector>

#include "xkv/cuda/check.hpp"
#include "xkv/cuda/reconstruct.hpp"

namespace xkv::cuda {

namespace {

bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

void validate_output(const ReconstructParams& p, std::int64_t width) {
  const OutputSpec& o = p.out;
  XKV_REQUIRE(o.data != nullptr, "reconstruct: out.data is null");
  XKV_REQUIRE(aligned16(o.data), "reconstruct: out.data " << o.data << " is not 16-byte aligned");
  XKV_REQUIRE(o.token_stride >= 0 && o.head_stride >= 0 && o.token_stride % 8 == 0 && o.head_stride % 8 == 0,
              "reconstruct: out strides must be non-negative multiples of 8, got token_stride="
                  << o.token_stride << " head_stride=" << o.head_stride);
  XKV_REQUIRE(o.token_stride > 0 || o.head_stride > 0 || width == 0,
              "reconstruct: out.token_stride and out.head_stride are both 0");
  const std::int64_t last_row = p.output_row_offset + p.tokens - 1;  // without output_rows
  if (o.paged()) {
    XKV_REQUIRE(o.page_size > 0, "reconstruct: out.page_size must be positive, got " << o.page_size);
    XKV_REQUIRE(o.page_table_len > 0, "reconstruct: out.page_table_len must be positive, got " << o.page_table_len);
    XKV_REQUIRE(o.num_pages > 0, "reconstruct: out.num_pages must be positive, got " << o.num_pages);
    XKV_REQUIRE(o.page_stride >= 0 && o.page_stride % 8 == 0,
                "reconstruct: out.page_stride must be a non-negative multiple of 8, got " << o.page_stride);
    if (p.output_rows == nullptr) {
      XKV_REQUIRE(p.output_row_offset >= 0 && last_row / o.page_size < o.page_table_len,
                  "reconstruct: rows [" << p.output_row_offset << ", " << last_row + 1 << ") need "
                                        << last_row / o.page_size + 1 << " pages but out.page_table_len is "
                                        << o.page_table_len);
    }
  } else {
    XKV_REQUIRE(o.rows >= 0, "reconstruct: out.rows must be >= 0, got " << o.rows);
    if (p.output_rows == nullptr) {
      XKV_REQUIRE(p.output_row_offset >= 0 && last_row < o.rows,
                  "reconstruct: rows [" << p.output_row_offset << ", " << last_row + 1
                                        << ") do not fit an output of out.rows=" << o.rows);
    }
  }
}

}  // namespace

void Reconstruct::validate(const ReconstructParams& p) {
  XKV_REQUIRE(p.dtype == ScalarType::BFloat16 || p.dtype == ScalarType::Float16,
              "reconstruct: dtype must be bf16 or fp16, got " << static_cast<int>(p.dtype));
  XKV_REQUIRE(p.head_dim == 64 || p.head_dim == 128 || p.head_dim == 256,
              "reconstruct: head_dim must be 64, 128 or 256, got " << p.head_dim);
  XKV_REQUIRE(p.heads > 0 && p.heads <= 4096, "reconstruct: heads must be in [1, 4096], got " << p.heads);
  XKV_REQUIRE(p.tokens >= 0, "reconstruct: tokens must be >= 0, got " << p.tokens);
  const std::int64_t width = std::int64_t(p.heads) * p.head_dim;
  XKV_REQUIRE(p.a != nullptr, "reconstruct: a is null");
  XKV_REQUIRE(aligned16(p.a), "reconstruct: a " << p.a << " is not 16-byte aligned");
  XKV_REQUIRE(p.a_rows > 0, "reconstruct: a_rows must be positive, got " << p.a_rows);
  XKV_REQUIRE(p.lda > 0 && p.lda % 8 == 0, "reconstruct: lda must be a positive multiple of 8, got " << p.lda);
  if (p.b != nullptr) {
    XKV_REQUIRE(p.rank > 0, "reconstruct: rank must be positive, got " << p.rank);
    XKV_REQUIRE(p.lda >= p.rank, "reconstruct: lda " << p.lda << " is smaller than rank " << p.rank);
    XKV_REQUIRE(aligned16(p.b), "reconstruct: b " << p.b << " is not 16-byte aligned");
    XKV_REQUIRE(p.ldb >= width && p.ldb % 8 == 0,
                "reconstruct: ldb must be a multiple of 8 and >= heads*head_dim=" << width << ", got " << p.ldb);
    if (p.bt != nullptr) {
      XKV_REQUIRE(aligned16(p.bt), "reconstruct: bt " << p.bt << " is not 16-byte aligned");
      XKV_REQUIRE(p.ldbt >= p.rank && p.ldbt % 8 == 0,
                  "reconstruct: ldbt must be a multiple of 8 and >= rank=" << p.rank << ", got " << p.ldbt);
    }
  } else {
    XKV_REQUIRE(p.lda >= width,
                "reconstruct: without b, A holds rows of heads*head_dim=" << width << " but lda is " << p.lda);
  }
  if (p.token_indices == nullptr) {
    XKV_REQUIRE(p.token_begin >= 0 && p.token_begin + p.tokens <= p.a_rows,
                "reconstruct: token range [" << p.token_begin << ", " << p.token_begin + p.tokens
                                             << ") is outside the " << p.a_rows << " rows of A");
  }
  p.rope.validate(p.head_dim);
  const bool table = p.cos_table != nullptr || p.sin_table != nullptr;
  if (table) {
    XKV_REQUIRE(p.rope.enabled, "reconstruct: a cos/sin table was given but rope.enabled is false");
    XKV_REQUIRE(p.cos_table != nullptr && p.sin_table != nullptr,
                "reconstruct: cos_table and sin_table must be given together");
    XKV_REQUIRE(p.table_positions > 0, "reconstruct: table_positions must be positive, got " << p.table_positions);
    if (p.positions == nullptr && p.token_indices == nullptr && p.tokens > 0) {
      const std::int64_t first = p.position_offset + p.token_begin, last = first + p.tokens - 1;
      XKV_REQUIRE(first >= 0 && last < p.table_positions,
                  "reconstruct: positions [" << first << ", " << last + 1 << "] exceed the cos/sin table of "
                                             << p.table_positions << " positions");
    }
  }
  if (p.out.data != nullptr || p.tokens > 0) validate_output(p, width);
}

namespace detail {
bool have_sm90_kernels() {
#if defined(XKV_HAVE_SM90A)
  return true;
#else
  return false;
#endif
}
}  // namespace detail

namespace {
detail::RopeMode rope_mode(const ReconstructParams& p) {
  if (p.rope.rotated_dims(p.head_dim) == 0) return detail::RopeMode::None;
  return p.rope.style == RopeStyle::HalfSplit ? detail::RopeMode::HalfSplit : detail::RopeMode::Interleaved;
}
bool device_is_sm90() {
  int device = 0, major = 0, minor = 0;
  XKV_CUDA_CHECK(cudaGetDevice(&device));
  XKV_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  XKV_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major == 9 && minor == 0;
}
}  // namespace

KernelPath Reconstruct::selected_kernel() const {
  const ReconstructParams& p = params_;
  if (p.b == nullptr || p.kernel == KernelPath::MmaSync) return KernelPath::MmaSync;
  const bool supported = detail::wgmma_supports(p.head_dim, rope_mode(p), p.rope.rotated_dims(p.head_dim),
                                                p.token_indices != nullptr);
  const bool possible = detail::have_sm90_kernels() && p.bt != nullptr && supported && device_is_sm90();
  if (p.kernel == KernelPath::Wgmma) {
    XKV_REQUIRE(possible, "reconstruct: the wgmma kernel was requested but "
                              << (!detail::have_sm90_kernels() ? "this build has no sm_90a kernels"
                                  : p.bt == nullptr            ? "bt (B transposed) is not given"
                                  : !supported ? "it does not handle this head_dim / RoPE configuration"
                                               : "the device is not compute capability 9.0"));
    return KernelPath::Wgmma;
  }
  return possible ? KernelPath::Wgmma : KernelPath::MmaSync;
}

void Reconstruct::run(cudaStream_t stream) const {
  const ReconstructParams& p = params_;
  if (p.tokens == 0) return;
  detail::ReconstructArgs args{};
  args.a = p.a;
  args.b = p.b;
  args.bt = p.bt;
  args.a_rows = p.a_rows;
  args.lda = p.lda;
  args.ldb = p.ldb;
  args.ldbt = p.ldbt;
  args.rank = p.rank;
  args.heads = p.heads;
  args.head_dim = p.head_dim;
  args.tokens = p.tokens;
  args.token_begin = p.token_begin;
  args.token_indices = p.token_indices;
  args.positions = p.positions;
  args.position_offset = p.position_offset;
  args.rotary_dim = p.rope.rotated_dims(p.head_dim);
  const bool table = p.cos_table != nullptr;
  args.cos_table = p.cos_table;
  args.sin_table = p.sin_table;
  args.table_positions = p.table_positions;
  if (p.rope.enabled && !table) {
    const std::vector<double> inv = p.rope.inverse_frequencies(p.head_dim);
    for (std::size_t i = 0; i < inv.size() && i < std::size_t(detail::kMaxRopePairs); ++i) args.inv_freq[i] = inv[i];
  }
  args.out = p.out.data;
  args.out_rows = p.out.rows;
  args.out_token_stride = p.out.token_stride;
  args.out_head_stride = p.out.head_stride;
  args.page_table = p.out.page_table;
  args.page_table_len = p.out.page_table_len;
  args.page_size = p.out.page_size;
  args.num_pages = p.out.num_pages;
  args.page_stride = p.out.page_stride;
  args.output_rows = p.output_rows;
  args.output_row_offset = p.output_row_offset;
  args.error_flag = p.error_flag;
  args.early_reads = p.inputs_ready ? 1 : 0;

  const detail::RopeMode mode = rope_mode(p);
  const bool bf16 = p.dtype == ScalarType::BFloat16;
  if (selected_kernel() == KernelPath::Wgmma) {
#if defined(XKV_HAVE_SM90A)
    if (bf16)
      detail::launch_reconstruct_sm90_bf16(args, mode, table, stream);
    else
      detail::launch_reconstruct_sm90_fp16(args, mode, table, stream);
    return;
#endif
  }
  if (bf16)
    detail::launch_reconstruct_bf16(args, mode, table, stream);
  else
    detail::launch_reconstruct_fp16(args, mode, table, stream);
}

}  // namespace xkv::cuda
