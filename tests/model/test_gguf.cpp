// GGUF reader: well-formed files (every value type, alignment, tensor table, dequantisation of
// every supported type) and hostile files generated here (each must give a clean xkv::Error).
#include <gtest/gtest.h>

#include <cstdlib>
#include <limits>
#include <random>

#include "gguf_builder.hpp"
#include "xkv/model/gguf.hpp"

namespace xkv::model {
namespace {

using testing::Bytes;
using testing::GgufBuilder;

std::uint32_t test_seed() {
  const char* env = std::getenv("XKV_SEED");
  const std::uint32_t seed = env ? static_cast<std::uint32_t>(std::strtoul(env, nullptr, 10)) : 20250325u;
  std::printf("XKV_SEED=%u\n", seed);
  return seed;
}

/// Parsing `bytes` must throw xkv::Error(Format) whose message contains `needle`.
void expect_format_error(const std::vector<std::uint8_t>& bytes, const std::string& needle) {
  try {
    (void)GgufFile::parse(bytes, "hostile.gguf");
    ADD_FAILURE() << "parsed a malformed file; expected an error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Format) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message: " << e.what();
  }
}

GgufBuilder small_valid_file() {
  GgufBuilder g;
  g.add_string("general.architecture", "test");
  g.add_u32("answer", 42);
  g.add_f32_array("floats", {1.5f, -2.0f});
  g.add_tensor(testing::f32_tensor("a", {4, 2}, {0, 1, 2, 3, 4, 5, 6, 7}));
  g.add_tensor(testing::f16_tensor("b", {3}, {1.0f, -0.5f, 2.0f}));
  return g;
}

TEST(GgufReader, ReadsEveryValueType) {
  GgufBuilder g;
  g.add_u8("u8", 200);
  g.add_i8("i8", -100);
  g.add_u16("u16", 60000);
  g.add_i16("i16", -30000);
  g.add_u32("u32", 4000000000u);
  g.add_i32("i32", -2000000000);
  g.add_f32("f32", 0.25f);
  g.add_bool("bool", true);
  g.add_string("string", "h\xC3\xA9llo");
  g.add_u64("u64", std::numeric_limits<std::uint64_t>::max());
  g.add_i64("i64", std::numeric_limits<std::int64_t>::min());
  g.add_f64("f64", -1e300);
  g.add_string_array("strings", {"a", "", "ccc"});
  g.add_i32_array("ints", {1, -2, 3});
  const GgufFile f = GgufFile::parse(g.build());
  EXPECT_EQ(f.version(), 3u);
  ASSERT_EQ(f.metadata().size(), 14u);
  EXPECT_EQ(f.get_int("u8", 0, 255), 200);
  EXPECT_EQ(f.get_int("i8", -128, 127), -100);
  EXPECT_EQ(f.get_int("u16", 0, 70000), 60000);
  EXPECT_EQ(f.get_int("i16", -40000, 0), -30000);
  EXPECT_EQ(f.get_int("u32", 0, 5000000000LL), 4000000000LL);
  EXPECT_EQ(f.get_int("i32", std::numeric_limits<std::int32_t>::min(), 0), -2000000000);
  EXPECT_EQ(f.get_float("f32"), 0.25);
  EXPECT_TRUE(f.get_bool_or("bool", false));
  EXPECT_EQ(f.get_string("string"), "h\xC3\xA9llo");
  EXPECT_EQ(f.get_int("i64", std::numeric_limits<std::int64_t>::min(), 0), std::numeric_limits<std::int64_t>::min());
  EXPECT_EQ(f.get_float("f64"), -1e300);
  EXPECT_EQ(f.get("u64").type, GgufValueType::UInt64);
  const auto& strings = f.get_array("strings", GgufValueType::String);
  EXPECT_EQ(strings.strings, (std::vector<std::string>{"a", "", "ccc"}));
  const auto& ints = f.get_array("ints", GgufValueType::Int32);
  ASSERT_EQ(ints.scalars.size(), 3u);
  EXPECT_EQ(std::get<std::int64_t>(ints.scalars[1]), -2);
  EXPECT_TRUE(f.tensors().empty());
}

TEST(GgufReader, TypedAccessorsRejectWrongTypesAndRanges) {
  const GgufFile f = GgufFile::parse(small_valid_file().build());
  EXPECT_THROW((void)f.get_string("answer"), Error);
  EXPECT_THROW((void)f.get_int("general.architecture", 0, 10), Error);
  EXPECT_THROW((void)f.get_int("answer", 0, 41), Error);
  EXPECT_THROW((void)f.get_array("floats", GgufValueType::Int32), Error);
  EXPECT_THROW((void)f.get("missing"), Error);
  EXPECT_EQ(f.get_int_or("missing", 7, 0, 10), 7);
  try {
    (void)f.get_int("answer", 0, 41);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'answer' = 42"), std::string::npos) << e.what();
  }
}

TEST(GgufReader, TensorTableAndAlignment) {
  for (const std::uint32_t alignment : {1u, 8u, 32u, 64u, 4096u}) {
    GgufBuilder g = small_valid_file();
    g.alignment = alignment;
    GgufBuilder::Layout layout;
    const auto bytes = g.build(&layout);
    const GgufFile f = GgufFile::parse(bytes);
    EXPECT_EQ(f.alignment(), alignment);
    EXPECT_EQ(f.data_offset(), layout.data_start);
    EXPECT_EQ(f.data_offset() % alignment, 0u);
    ASSERT_EQ(f.tensors().size(), 2u);
    const TensorInfo* a = f.find_tensor("a");
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(a->dims, (std::vector<std::int64_t>{4, 2}));
    EXPECT_EQ(a->elements, 8);
    EXPECT_EQ(a->rows(), 2);
    EXPECT_EQ(a->byte_size, 32u);
    EXPECT_EQ(f.dequantize(*a), (std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7}));
    const TensorInfo* b = f.find_tensor("b");
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(b->offset % alignment, 0u);
    EXPECT_EQ(f.dequantize(*b), (std::vector<float>{1.0f, -0.5f, 2.0f}));
    EXPECT_EQ(f.find_tensor("c"), nullptr);
  }
}

// ---------------------------------------------------------------- dequantisation
// Per-element readings of the block layouts (ggml's block_q* structs), written independently of
// the library's block loops.
float half_at(const std::uint8_t* p) { return testing::from_fp16(static_cast<std::uint16_t>(p[0] | (p[1] << 8))); }

float ref_q4_0(const std::uint8_t* blk, int e) {
  const int nib = e < 16 ? (blk[2 + e] & 15) : (blk[2 + e - 16] >> 4);
  return half_at(blk) * float(nib - 8);
}
float ref_q4_1(const std::uint8_t* blk, int e) {
  const int nib = e < 16 ? (blk[4 + e] & 15) : (blk[4 + e - 16] >> 4);
  return half_at(blk) * float(nib) + half_at(blk + 2);
}
float ref_q8_0(const std::uint8_t* blk, int e) { return half_at(blk) * float(static_cast<std::int8_t>(blk[2 + e])); }
float ref_q4_k(const std::uint8_t* blk, int e) {
  const std::uint8_t* scales = blk + 4;
  const std::uint8_t* qs = blk + 16;
  const int chunk = e / 64, w = e % 64, sub = 2 * chunk + (w >= 32 ? 1 : 0);
  const std::uint8_t byte = qs[32 * chunk + w % 32];
  const int nib = w < 32 ? (byte & 15) : (byte >> 4);
  int sc = 0, m = 0;
  if (sub < 4) {
    sc = scales[sub] & 63;
    m = scales[sub + 4] & 63;
  } else {
    sc = (scales[sub + 4] & 15) | ((scales[sub - 4] >> 6) << 4);
    m = (scales[sub + 4] >> 4) | ((scales[sub] >> 6) << 4);
  }
  return half_at(blk) * float(sc) * float(nib) - half_at(blk + 2) * float(m);
}
float ref_q6_k(const std::uint8_t* blk, int e) {
  const std::uint8_t* ql = blk;
  const std::uint8_t* qh = blk + 128;
  const auto* sc = reinterpret_cast<const std::int8_t*>(blk + 192);
  const int half = e / 128, w = e % 128, quarter = w / 32, l = w % 32;
  const std::uint8_t low_byte = ql[64 * half + l + (quarter & 1) * 32];
  const int low = quarter < 2 ? (low_byte & 15) : (low_byte >> 4);
  const int high = (qh[32 * half + l] >> (2 * quarter)) & 3;
  const int q = (low | (high << 4)) - 32;
  return half_at(blk + 208) * float(sc[8 * half + l / 16 + 2 * quarter]) * float(q);
}

struct QuantCase {
  const char* name;
  std::uint32_t type;
  int block_elements, block_bytes;
  std::vector<std::size_t> fp16_fields;
  float (*reference)(const std::uint8_t*, int);
};

TEST(GgufDequantize, BlockFormatsMatchPerElementReading) {
  std::mt19937 rng(test_seed());
  const std::vector<QuantCase> cases = {
      {"Q4_0", 2, 32, 18, {0}, ref_q4_0},      {"Q4_1", 3, 32, 20, {0, 2}, ref_q4_1},
      {"Q8_0", 8, 32, 34, {0}, ref_q8_0},      {"Q4_K", 12, 256, 144, {0, 2}, ref_q4_k},
      {"Q6_K", 14, 256, 210, {208}, ref_q6_k},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const std::size_t blocks = 3;  // rows of one block each, plus a 3-block row below
    GgufBuilder g;
    g.add_tensor(testing::random_blocks("w", {std::uint64_t(c.block_elements), blocks}, c.type,
                                        std::size_t(c.block_bytes), blocks, c.fp16_fields, rng));
    const auto bytes = g.build();
    const GgufFile f = GgufFile::parse(bytes);
    const TensorInfo& t = f.tensors().at(0);
    EXPECT_EQ(t.byte_size, blocks * std::uint64_t(c.block_bytes));
    std::vector<float> out(static_cast<std::size_t>(t.elements), std::numeric_limits<float>::quiet_NaN());
    f.dequantize_into(t, out);
    const auto raw = f.tensor_bytes(t);
    for (std::size_t b = 0; b < blocks; ++b)
      for (int e = 0; e < c.block_elements; ++e) {
        const float expected = c.reference(raw.data() + b * c.block_bytes, e);
        ASSERT_NEAR(out[b * c.block_elements + e], expected, 1e-6f * (1.0f + std::fabs(expected)))
            << "block " << b << " element " << e;
      }
  }
}

TEST(GgufDequantize, MatchesGgufPyGoldenValues) {
  // One block per format with bytes (i * 37 + 11) % 256 and the fp16 fields set as listed; the
  // expected values were computed with gguf-py's gguf.quants.dequantize (an implementation
  // independent of this one).
  struct Golden {
    TensorType type;
    int block_bytes;
    std::vector<std::pair<int, float>> fp16_fields;
    double sum;
    std::vector<std::pair<int, double>> values;
  };
  const std::vector<Golden> cases = {
      {TensorType::Q4_K, 144, {{0, 0.0125f}, {2, -0.03f}}, 986.5506591796875,
       {{0, 5.7913970947265625}, {37, 0.76995849609375}, {100, 2.41961669921875}, {129, 0.3599853515625},
        {200, 2.3470306396484375}, {255, 1.874755859375}}},
      {TensorType::Q6_K, 210, {{208, 0.02f}}, 92.25970458984375,
       {{0, -28.626113891601562}, {37, -5.04107666015625}, {100, 50.47077941894531}, {129, 8.32177734375},
        {200, 21.784652709960938}, {255, -1.20025634765625}}},
      {TensorType::Q4_0, 18, {{0, 0.5f}}, -10.5, {{0, -1.5}, {5, 3.0}, {17, -0.5}, {31, 0.0}}},
      {TensorType::Q4_1, 20, {{0, 0.25f}, {2, -1.5f}}, 13.25, {{0, 2.25}, {5, 0.5}, {17, 1.5}, {31, 1.5}}},
      {TensorType::Q8_0, 34, {{0, 0.01f}}, -1.7603759765625,
       {{0, 0.8501815795898438}, {5, 0.1400299072265625}, {17, -0.5401153564453125}, {31, -0.4801025390625}}},
  };
  for (const auto& g : cases) {
    std::vector<std::uint8_t> block(static_cast<std::size_t>(g.block_bytes));
    for (std::size_t i = 0; i < block.size(); ++i) block[i] = static_cast<std::uint8_t>((i * 37 + 11) % 256);
    for (const auto& [at, value] : g.fp16_fields) {
      const std::uint16_t h = testing::to_fp16(value);
      block[at] = static_cast<std::uint8_t>(h & 0xFF);
      block[at + 1] = static_cast<std::uint8_t>(h >> 8);
    }
    const auto info = tensor_type_info(static_cast<std::uint32_t>(g.type));
    std::vector<float> out(static_cast<std::size_t>(info->block_elements));
    dequantize(g.type, block, out);
    double sum = 0;
    for (float v : out) sum += v;
    EXPECT_NEAR(sum, g.sum, 1e-6 * (1 + std::fabs(g.sum))) << info->name;
    for (const auto& [i, v] : g.values) EXPECT_NEAR(out[std::size_t(i)], v, 1e-6 * (1 + std::fabs(v))) << info->name << "[" << i << "]";
  }
}

TEST(GgufDequantize, HalfPrecisionFormatsAreExact) {
  // BF16 and F16 of values exactly representable in both.
  const std::vector<float> values = {0.0f, -0.0f, 1.0f, -2.5f, 0.15625f, 1024.0f, -65504.0f};
  std::vector<std::uint8_t> bf16;
  for (float v : values) {
    std::uint32_t bits;
    std::memcpy(&bits, &v, 4);
    bf16.push_back(static_cast<std::uint8_t>((bits >> 16) & 0xFF));
    bf16.push_back(static_cast<std::uint8_t>(bits >> 24));
  }
  std::vector<float> out(values.size());
  dequantize(TensorType::BF16, bf16, out);
  for (std::size_t i = 0; i < 4; ++i) EXPECT_EQ(out[i], values[i]);
  GgufBuilder g;
  g.add_tensor(testing::f16_tensor("h", {values.size()}, values));
  const GgufFile f = GgufFile::parse(g.build());
  EXPECT_EQ(f.dequantize(f.tensors()[0]), values);
  // fp16 subnormal and infinity decode exactly.
  const std::vector<std::uint8_t> special = {0x01, 0x00, 0x00, 0x7C, 0x00, 0xFC};
  std::vector<float> s(3);
  dequantize(TensorType::F16, special, s);
  EXPECT_EQ(s[0], std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isinf(s[1]) && s[1] > 0);
  EXPECT_TRUE(std::isinf(s[2]) && s[2] < 0);
}

TEST(GgufDequantize, RejectsUnsupportedTypesAndSizeMismatches) {
  GgufBuilder g;
  g.add_tensor({"q5", {32}, 6, std::vector<std::uint8_t>(22, 0)});  // Q5_0: known layout, no decoder
  const GgufFile f = GgufFile::parse(g.build());
  EXPECT_THROW((void)f.dequantize(f.tensors()[0]), Error);
  std::vector<float> out(32);
  const std::vector<std::uint8_t> short_input(19, 0);
  EXPECT_THROW(dequantize(TensorType::Q4_1, short_input, out), Error);
  std::vector<float> ragged(31);
  const std::vector<std::uint8_t> block(20, 0);
  EXPECT_THROW(dequantize(TensorType::Q4_1, block, ragged), Error);
}

// ---------------------------------------------------------------- hostile files
TEST(GgufHostile, HeaderErrors) {
  auto bytes = small_valid_file().build();
  auto bad = bytes;
  bad[0] = 'X';
  expect_format_error(bad, "bad magic");
  for (const std::uint32_t version : {0u, 1u, 4u, 0xFFFFFFFFu}) {
    bad = bytes;
    Bytes b{bad};
    b.patch<std::uint32_t>(4, version);
    expect_format_error(b.data, "unsupported version");
  }
  bad = bytes;
  Bytes be{bad};
  be.patch<std::uint32_t>(4, 0x03000000u);
  expect_format_error(be.data, "big-endian");
  expect_format_error({}, "truncated");
  expect_format_error({'G', 'G', 'U', 'F'}, "truncated");
}

TEST(GgufHostile, CountsBeyondTheFile) {
  GgufBuilder::Layout layout;
  const auto bytes = small_valid_file().build(&layout);
  for (const std::uint64_t count : {std::uint64_t(1) << 40, std::numeric_limits<std::uint64_t>::max(),
                                    std::uint64_t(bytes.size())}) {
    Bytes b{bytes};
    b.patch(layout.kv_count, count);
    expect_format_error(b.data, "metadata count");
    Bytes t{bytes};
    t.patch(layout.tensor_count, count);
    expect_format_error(t.data, "tensor count");
  }
  // One more tensor than the table holds: the reader runs into the data section and fails.
  Bytes extra{bytes};
  extra.patch<std::uint64_t>(layout.tensor_count, 3);
  EXPECT_THROW((void)GgufFile::parse(extra.data), Error);
}

TEST(GgufHostile, StringAndArrayLengths) {
  for (const std::uint64_t length : {std::uint64_t(1) << 62, std::numeric_limits<std::uint64_t>::max(), std::uint64_t(100)}) {
    GgufBuilder g;
    Bytes v;
    v.put<std::uint32_t>(8);  // string
    v.put(length);
    v.data.insert(v.data.end(), {'a', 'b'});
    g.add_raw("s", v.data);
    expect_format_error(g.build(), "truncated");
  }
  for (const std::uint32_t element_type : {0u, 8u, 10u}) {
    for (const std::uint64_t count : {std::uint64_t(1) << 61, std::uint64_t(1) << 62, std::numeric_limits<std::uint64_t>::max()}) {
      GgufBuilder g;
      Bytes v;
      v.put<std::uint32_t>(9);
      v.put(element_type);
      v.put(count);
      g.add_raw("arr", v.data);
      expect_format_error(g.build(), "declares");
    }
  }
  GgufBuilder key;  // a key longer than the file
  key.add_u32("k", 1);
  auto bytes = key.build();
  Bytes b{bytes};
  b.patch<std::uint64_t>(24, std::uint64_t(1) << 40);
  expect_format_error(b.data, "metadata key");
}

TEST(GgufHostile, TypesAndStructure) {
  {
    GgufBuilder g;
    g.add_raw("nested", {9, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0});
    expect_format_error(g.build(), "nested array");
  }
  {
    GgufBuilder g;
    g.add_raw("unknown", {13, 0, 0, 0, 0, 0, 0, 0});
    expect_format_error(g.build(), "unknown value type 13");
  }
  {
    GgufBuilder g;
    g.add_raw("unknown_element", {9, 0, 0, 0, 200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0});
    expect_format_error(g.build(), "unknown element type 200");
  }
  {
    GgufBuilder g;
    g.add_raw("flag", {7, 0, 0, 0, 2});
    expect_format_error(g.build(), "bool");
  }
  {
    GgufBuilder g;
    g.add_u32("dup", 1);
    g.add_string("dup", "again");
    expect_format_error(g.build(), "duplicate metadata key");
  }
  {
    GgufBuilder g;
    g.add_raw("", {4, 0, 0, 0, 1, 0, 0, 0});
    expect_format_error(g.build(), "empty key");
  }
  {
    GgufBuilder g;
    g.add_tensor(testing::f32_tensor("same", {2}, {1, 2}));
    g.add_tensor(testing::f32_tensor("same", {2}, {3, 4}));
    expect_format_error(g.build(), "duplicate tensor name");
  }
  {
    GgufBuilder g;
    g.add_tensor(testing::f32_tensor(std::string(65, 'n'), {2}, {1, 2}));
    expect_format_error(g.build(), "tensor name");
  }
}

TEST(GgufHostile, Alignment) {
  for (const std::uint32_t alignment : {0u, 3u, 48u, 1u << 17, 0x80000000u}) {
    GgufBuilder g = small_valid_file();
    g.alignment = 32;
    g.add_u32("general.alignment", alignment);
    expect_format_error(g.build(), "general.alignment");
  }
  GgufBuilder g = small_valid_file();
  g.add_string("general.alignment", "32");
  expect_format_error(g.build(), "must be uint32");
}

TEST(GgufHostile, TensorDimensionsAndSizes) {
  GgufBuilder::Layout layout;
  const auto bytes = small_valid_file().build(&layout);
  const auto patched = [&](std::size_t at, auto value) {
    Bytes b{bytes};
    b.patch(at, value);
    return b.data;
  };
  const std::size_t n_dims_at = layout.tensor_dims[0] - 4;
  expect_format_error(patched(n_dims_at, std::uint32_t{0}), "dimensions");
  expect_format_error(patched(n_dims_at, std::uint32_t{5}), "dimensions");
  expect_format_error(patched(layout.tensor_dims[0], std::uint64_t{0}), "out of range");
  expect_format_error(patched(layout.tensor_dims[0], std::numeric_limits<std::uint64_t>::max()), "out of range");
  // 2^40 x 2^40 elements overflow int64; 2^31 x 2^31 F32 elements overflow the byte size.
  {
    Bytes b{bytes};
    b.patch(layout.tensor_dims[0], std::uint64_t(1) << 40);
    b.patch(layout.tensor_dims[0] + 8, std::uint64_t(1) << 40);
    expect_format_error(b.data, "element count overflows");
  }
  {
    Bytes b{bytes};
    b.patch(layout.tensor_dims[0], std::uint64_t(1) << 31);
    b.patch(layout.tensor_dims[0] + 8, std::uint64_t(1) << 31);
    expect_format_error(b.data, "byte size overflows");
  }
  // Big but representable: data past the end of the file.
  expect_format_error(patched(layout.tensor_dims[0], std::uint64_t(1) << 30), "past the");
  expect_format_error(patched(layout.tensor_type[0], std::uint32_t{99}), "unknown type 99");
  expect_format_error(patched(layout.tensor_type[0], std::uint32_t{3}), "not a multiple of its block size");
}

TEST(GgufHostile, TensorOffsets) {
  GgufBuilder::Layout layout;
  const auto bytes = small_valid_file().build(&layout);
  const auto patched = [&](std::size_t at, std::uint64_t value) {
    Bytes b{bytes};
    b.patch(at, value);
    return b.data;
  };
  expect_format_error(patched(layout.tensor_offset[1], 4), "not a multiple of the alignment");
  expect_format_error(patched(layout.tensor_offset[1], std::uint64_t(1) << 40), "past the");
  expect_format_error(patched(layout.tensor_offset[1], std::numeric_limits<std::uint64_t>::max() - 31), "past the");
  expect_format_error(patched(layout.tensor_offset[1], 0), "overlap");
}

TEST(GgufHostile, TruncatedAtEveryByte) {
  GgufBuilder g = small_valid_file();
  g.add_string_array("tokens", {"x", "yy"});
  g.add_bool("flag", false);
  const auto bytes = g.build();
  ASSERT_NO_THROW((void)GgufFile::parse(bytes));
  for (std::size_t size = 0; size < bytes.size(); ++size) {
    const std::vector<std::uint8_t> prefix(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(size));
    try {
      (void)GgufFile::parse(prefix);
      ADD_FAILURE() << "a file truncated to " << size << " of " << bytes.size() << " bytes parsed";
    } catch (const Error& e) {
      ASSERT_EQ(e.kind(), ErrorKind::Format) << e.what();
      ASSERT_NE(std::string(e.what()).find("offset"), std::string::npos) << e.what();
    }
  }
}

TEST(GgufHostile, RandomByteCorruptionNeverCrashes) {
  // Flip bytes of a valid file: parsing either succeeds or throws xkv::Error; and a parsed
  // file's tensors can be dequantised or refused cleanly.
  std::mt19937 rng(test_seed());
  const auto bytes = small_valid_file().build();
  std::uniform_int_distribution<std::size_t> pos(0, bytes.size() - 1);
  std::uniform_int_distribution<int> val(0, 255);
  for (int trial = 0; trial < 2000; ++trial) {
    auto b = bytes;
    for (int k = 0; k < 3; ++k) b[pos(rng)] = static_cast<std::uint8_t>(val(rng));
    try {
      const GgufFile f = GgufFile::parse(b);
      for (const auto& t : f.tensors())
        if (t.elements < (1 << 20)) (void)f.dequantize(t);
    } catch (const Error&) {
    }
  }
}

TEST(GgufFileOpen, MissingFileIsAnIoError) {
  try {
    (void)GgufFile::open("/nonexistent/dir/model.gguf");
    ADD_FAILURE() << "opened a missing file";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Io);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/model.gguf"), std::string::npos);
  }
  EXPECT_THROW((void)GgufFile::open("/"), Error);
}

}  // namespace
}  // namespace xkv::model
