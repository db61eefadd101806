// Fused reconstruct+RoPE kernels against an fp64 CPU reference (reconstruct_case.hpp): awkward
// sizes, every RoPE option, large positions, grids of many waves and persistent CTAs.
#include "reconstruct_case.hpp"

namespace {

using namespace xkv_test::reconstruct;

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
    c.position_offset = (std::int64_t{1} << 24) - 200;  // across the last position exact in fp32
    run_case(c, 305 + static_cast<int>(dtype));
    c.position_offset = 131072 * 4 - 150;
    c.positions_array = true;
    c.max_position = 1 << 20;
    run_case(c, 310 + static_cast<int>(dtype));
    // Gathered rows (the gather kernel's fp32 angles below 2^24, fp64 from there on), out of order,
    // at offsets that put some of their positions on each side of 2^24.
    c.positions_array = false;
    c.indices.clear();
    for (std::int64_t i = 0; i < 150; ++i) c.indices.push_back((i * 97 + 11) % c.a_rows);
    c.position_offset = (std::int64_t{1} << 24) - 150;
    run_case(c, 315 + static_cast<int>(dtype));
    c.positions_array = true;
    c.max_position = std::int64_t{1} << 25;
    run_case(c, 320 + static_cast<int>(dtype));
  }
}

// Grids of many waves at full width: rank 512 and a rank that ends mid k-tile (the ping-pong
// kernel on sm_90), rank 640 (B^T too large to stay resident: the cooperative kernel), a half-empty
// column tile, both RoPE styles, gathered rows with explicit positions, head-major output.
TEST(CudaReconstruct, ManyWavesFullWidth) {
  SKIP_WITHOUT_GPU();
  Rng rng(470);
  std::uint64_t salt = 471;
  for (ScalarType dtype : kTypes)
    for (int r : {512, 100, 640}) {
      Case c;
      c.dtype = dtype;
      c.a_rows = r == 640 ? 1500 + 13 : 6000 + 13;  // keeps the fp64 reference quick
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

// More row blocks than a persistent grid has CTAs (132 on an H200), so CTAs walk many row blocks
// (the ping-pong kernel's two warpgroups alternate through them, an odd number in some CTAs):
// arbitrary positions, five column tiles, a rank ending mid k-tile, and the caller's cos/sin
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

// A dense range long enough that every ping-pong warpgroup walks more than kItemsPerAnchor (32)
// items, so its carried cos/sin factors are stepped item to item and anchored again: one head
// of 64 (one column tile, 132 CTAs on an H200), positions straddling 2^24.
TEST(CudaReconstruct, CarriedRopeFactorsAcrossManyItems) {
  SKIP_WITHOUT_GPU();
  Case c;
  c.dtype = ScalarType::Float16;
  c.a_rows = 1400000;
  c.rank = 16;
  c.heads = 1;
  c.head_dim = 64;
  c.rope = rope(xkv::RopeStyle::HalfSplit, 0, true, 500000.0);
  c.position_offset = (std::int64_t{1} << 24) - 700000;
  run_case(c, 490);
  Case wide;  // two column tiles (66 slots), interleaved pairs, a rank ending mid k-tile
  wide.a_rows = 600000;
  wide.rank = 24;
  wide.heads = 2;
  wide.head_dim = 128;
  wide.rope = rope(xkv::RopeStyle::Interleaved);
  wide.position_offset = 12345;
  run_case(wide, 491);
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
