// Argument validation of the fused reconstruct+RoPE launch: every bad argument is rejected with an
// xkv::Error that names it. validate() never touches the device, so these run without a GPU.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "xkv/cuda/reconstruct.hpp"
#include "xkv/error.hpp"
#include "xkv/rope.hpp"

namespace {

using xkv::cuda::OutputSpec;
using xkv::cuda::PagedLayout;
using xkv::cuda::ReconstructParams;
using xkv::cuda::ScalarType;

xkv::RopeConfig rope(xkv::RopeStyle style) {
  xkv::RopeConfig r;
  r.style = style;
  return r;
}

// ------------------------------------------------------------------ validation (no GPU needed)
/// A valid parameter set over fake, aligned addresses: validate() never dereferences them.
ReconstructParams valid_params() {
  alignas(16) static std::uint16_t fake[64];
  ReconstructParams p;
  p.a = fake;
  p.a_rows = 100;
  p.lda = 64;
  p.rank = 60;
  p.b = fake;
  p.ldb = 256;
  p.heads = 2;
  p.head_dim = 128;
  p.tokens = 100;
  p.rope = rope(xkv::RopeStyle::HalfSplit);
  p.out = OutputSpec::token_major(fake, 100, 2, 128);
  return p;
}

void expect_invalid(const ReconstructParams& p, const std::string& needle) {
  try {
    xkv::cuda::Reconstruct::validate(p);
    ADD_FAILURE() << "accepted; expected an error mentioning '" << needle << "'";
  } catch (const xkv::Error& e) {
    EXPECT_EQ(e.kind(), xkv::ErrorKind::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(CudaReconstructValidate, AcceptsAValidSet) { EXPECT_NO_THROW(xkv::cuda::Reconstruct::validate(valid_params())); }

TEST(CudaReconstructValidate, RejectsBadInputNamingIt) {
  auto p = valid_params();
  p.head_dim = 96;
  expect_invalid(p, "head_dim");
  p = valid_params();
  p.heads = 0;
  expect_invalid(p, "heads");
  p = valid_params();
  p.lda = 61;
  expect_invalid(p, "lda");
  p = valid_params();
  p.lda = 56;  // < rank
  expect_invalid(p, "lda");
  p = valid_params();
  p.a = static_cast<const char*>(p.a) + 2;
  expect_invalid(p, "aligned");
  p = valid_params();
  p.a = nullptr;
  expect_invalid(p, "a is null");
  p = valid_params();
  p.ldb = 128;
  expect_invalid(p, "ldb");
  p = valid_params();
  p.rank = 0;
  expect_invalid(p, "rank");
  p = valid_params();
  p.token_begin = 50;  // [50, 150) is outside 100 rows
  expect_invalid(p, "token range");
  p = valid_params();
  p.tokens = -1;
  expect_invalid(p, "tokens");
  p = valid_params();
  p.rope.rotary_dim = 7;
  expect_invalid(p, "rotary_dim");
  p = valid_params();
  p.rope.theta = -1;
  expect_invalid(p, "theta");
  p = valid_params();
  p.cos_table = static_cast<const float*>(p.a);
  expect_invalid(p, "together");
  p = valid_params();
  p.cos_table = p.sin_table = static_cast<const float*>(p.a);
  p.table_positions = 50;
  expect_invalid(p, "table");
  p = valid_params();
  p.out.rows = 99;
  expect_invalid(p, "out.rows");
  p = valid_params();
  p.out.data = nullptr;
  expect_invalid(p, "out.data");
  p = valid_params();
  p.out.token_stride = 260;
  expect_invalid(p, "strides");
  p = valid_params();
  p.output_row_offset = 1;
  expect_invalid(p, "out.rows");
  p = valid_params();
  p.b = nullptr;  // copy mode: lda must hold a whole row
  expect_invalid(p, "lda");
  p = valid_params();
  p.dtype = static_cast<ScalarType>(7);
  expect_invalid(p, "dtype");
}

TEST(CudaReconstructValidate, RejectsBadPagedOutput) {
  static std::int32_t fake_table[4];
  auto p = valid_params();
  p.out = OutputSpec::paged_pool(const_cast<void*>(p.a), 10, 16, 2, 128, PagedLayout::NHD, fake_table, 4);
  expect_invalid(p, "page_table_len");  // 100 rows need 7 pages of 16
  p.out.page_table_len = 7;
  EXPECT_NO_THROW(xkv::cuda::Reconstruct::validate(p));
  p.out.page_size = 0;
  expect_invalid(p, "page_size");
  p.out.page_size = 16;
  p.out.num_pages = 0;
  expect_invalid(p, "num_pages");
}

}  // namespace
