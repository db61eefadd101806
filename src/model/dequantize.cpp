// Dequantisation of ggml block formats to fp32, following ggml's reference (scalar) routines.
// Sizes were validated by the reader; each routine re-checks that `bytes` holds exactly the
// blocks `out` needs, so a caller cannot make it read past its input.
#include <cstring>

#include "xkv/model/gguf.hpp"

namespace xkv::model {
namespace {

/// IEEE-754 binary16 -> binary32 (handles subnormals, infinities and NaN).
float fp16_to_fp32(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exponent = (h >> 10) & 0x1Fu;
  std::uint32_t mantissa = h & 0x3FFu;
  std::uint32_t bits = 0;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  } else if (mantissa != 0) {  // subnormal: normalise
    exponent = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    mantissa &= 0x3FFu;
    bits = sign | (exponent << 23) | (mantissa << 13);
  } else {
    bits = sign;
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

float bf16_to_fp32(std::uint16_t b) {
  const std::uint32_t bits = static_cast<std::uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

std::uint16_t load_u16(const std::uint8_t* p) {
  std::uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Q8_0: fp16 scale d, 32 x int8.  y = d * q
void dequantize_q8_0(const std::uint8_t* block, float* y) {
  const float d = fp16_to_fp32(load_u16(block));
  const auto* q = reinterpret_cast<const std::int8_t*>(block + 2);
  for (int j = 0; j < 32; ++j) y[j] = d * static_cast<float>(q[j]);
}

// Q4_0: fp16 d, 16 bytes of nibbles; low nibbles are elements 0..15, high nibbles 16..31.  y = d * (q - 8)
void dequantize_q4_0(const std::uint8_t* block, float* y) {
  const float d = fp16_to_fp32(load_u16(block));
  const std::uint8_t* qs = block + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>((qs[j] & 0x0F) - 8);
    y[j + 16] = d * static_cast<float>((qs[j] >> 4) - 8);
  }
}

// Q4_1: fp16 d, fp16 m, 16 bytes of nibbles.  y = d * q + m
void dequantize_q4_1(const std::uint8_t* block, float* y) {
  const float d = fp16_to_fp32(load_u16(block));
  const float m = fp16_to_fp32(load_u16(block + 2));
  const std::uint8_t* qs = block + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(qs[j] & 0x0F) + m;
    y[j + 16] = d * static_cast<float>(qs[j] >> 4) + m;
  }
}

// 6-bit scale and min of sub-block j of a Q4_K block, packed in 12 bytes.
void q4_k_scale_min(int j, const std::uint8_t* q, std::uint8_t& scale, std::uint8_t& min) {
  if (j < 4) {
    scale = q[j] & 63;
    min = q[j + 4] & 63;
  } else {
    scale = static_cast<std::uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    min = static_cast<std::uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// Q4_K (256 elements): fp16 d, fp16 dmin, 12 bytes of 6-bit scales/mins for 8 sub-blocks of 32,
// 128 bytes of nibbles (each 32 bytes hold two sub-blocks: low then high nibbles).
void dequantize_q4_k(const std::uint8_t* block, float* y) {
  const float d = fp16_to_fp32(load_u16(block));
  const float dmin = fp16_to_fp32(load_u16(block + 2));
  const std::uint8_t* scales = block + 4;
  const std::uint8_t* q = block + 16;
  int is = 0;
  for (int j = 0; j < 256; j += 64) {
    std::uint8_t sc = 0, m = 0;
    q4_k_scale_min(is + 0, scales, sc, m);
    const float d1 = d * sc, m1 = dmin * m;
    q4_k_scale_min(is + 1, scales, sc, m);
    const float d2 = d * sc, m2 = dmin * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    q += 32;
    is += 2;
  }
}

// Q6_K (256 elements): 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 int8 scales, fp16 d.
void dequantize_q6_k(const std::uint8_t* block, float* y) {
  const std::uint8_t* ql = block;
  const std::uint8_t* qh = block + 128;
  const auto* sc = reinterpret_cast<const std::int8_t*>(block + 192);
  const float d = fp16_to_fp32(load_u16(block + 208));
  for (int n = 0; n < 256; n += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l + 0] = d * static_cast<float>(sc[is + 0]) * static_cast<float>(q1);
      y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
      y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
      y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

template <class BlockFn>
void for_each_block(std::span<const std::uint8_t> bytes, std::span<float> out, std::size_t block_elements,
                    std::size_t block_bytes, BlockFn fn) {
  const std::size_t blocks = out.size() / block_elements;
#pragma omp parallel for schedule(static) if (blocks > 4096)
  for (std::size_t b = 0; b < blocks; ++b) fn(bytes.data() + b * block_bytes, out.data() + b * block_elements);
}

}  // namespace

void dequantize(TensorType type, std::span<const std::uint8_t> bytes, std::span<float> out) {
  const auto info = tensor_type_info(static_cast<std::uint32_t>(type));
  XKV_CHECK(info && info->dequantizable, Format,
            "dequantize: tensor type " << static_cast<std::uint32_t>(type) << " (" << (info ? info->name : "unknown")
                                       << ") is not supported");
  const auto block_elements = static_cast<std::size_t>(info->block_elements);
  const auto block_bytes = static_cast<std::size_t>(info->block_bytes);
  XKV_REQUIRE(out.size() % block_elements == 0,
              "dequantize: " << out.size() << " elements of " << info->name << " are not whole blocks of "
                             << block_elements);
  XKV_REQUIRE(bytes.size() / block_bytes == out.size() / block_elements && bytes.size() % block_bytes == 0,
              "dequantize: " << bytes.size() << " bytes do not hold exactly " << out.size() << " elements of "
                             << info->name);
  switch (type) {
    case TensorType::F32:
      if (!out.empty()) std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
      return;
    case TensorType::F16:
      for (std::size_t i = 0; i < out.size(); ++i) out[i] = fp16_to_fp32(load_u16(bytes.data() + 2 * i));
      return;
    case TensorType::BF16:
      for (std::size_t i = 0; i < out.size(); ++i) out[i] = bf16_to_fp32(load_u16(bytes.data() + 2 * i));
      return;
    case TensorType::Q8_0: for_each_block(bytes, out, block_elements, block_bytes, dequantize_q8_0); return;
    case TensorType::Q4_0: for_each_block(bytes, out, block_elements, block_bytes, dequantize_q4_0); return;
    case TensorType::Q4_1: for_each_block(bytes, out, block_elements, block_bytes, dequantize_q4_1); return;
    case TensorType::Q4_K: for_each_block(bytes, out, block_elements, block_bytes, dequantize_q4_k); return;
    case TensorType::Q6_K: for_each_block(bytes, out, block_elements, block_bytes, dequantize_q6_k); return;
    default: break;
  }
  XKV_CHECK(false, Format, "dequantize: tensor type " << info->name << " is not supported");
}

}  // namespace xkv::model
