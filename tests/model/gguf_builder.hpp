// Writes GGUF files for tests and the fuzzer's seed corpus: well-formed ones (every value type,
// tensors of every supported type, a tiny Llama model) and, through the raw hooks, hostile ones.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace xkv::model::testing {

/// Little-endian byte sink with patchable positions.
struct Bytes {
  std::vector<std::uint8_t> data;

  template <class T>
  std::size_t put(T v) {
    const std::size_t at = data.size();
    data.resize(at + sizeof(T));
    std::memcpy(data.data() + at, &v, sizeof(T));
    return at;
  }
  std::size_t put_string(const std::string& s) {
    const std::size_t at = put<std::uint64_t>(s.size());
    data.insert(data.end(), s.begin(), s.end());
    return at;
  }
  template <class T>
  void patch(std::size_t at, T v) {
    std::memcpy(data.data() + at, &v, sizeof(T));
  }
};

/// fp32 -> IEEE binary16, round to nearest even (normal range; tests use modest values).
inline std::uint16_t to_fp16(float f) {
  std::uint32_t x;
  std::memcpy(&x, &f, 4);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const int exponent = static_cast<int>((x >> 23) & 0xFF) - 127 + 15;
  std::uint32_t mantissa = x & 0x7FFFFFu;
  if (exponent <= 0) return static_cast<std::uint16_t>(sign);  // flush tiny values to zero
  if (exponent >= 31) return static_cast<std::uint16_t>(sign | 0x7C00u);
  std::uint32_t h = sign | (static_cast<std::uint32_t>(exponent) << 10) | (mantissa >> 13);
  const std::uint32_t rest = mantissa & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return static_cast<std::uint16_t>(h);
}
inline float from_fp16(std::uint16_t h) {  // normal numbers and zero only (what to_fp16 makes)
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
  std::uint32_t bits = sign;
  if (exponent != 0) bits |= ((exponent + 112u) << 23) | (mantissa << 13);
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// A tensor to write: its raw bytes are produced by the caller (see the quantisers below).
struct TensorSpec {
  std::string name;
  std::vector<std::uint64_t> dims;
  std::uint32_t type = 0;
  std::vector<std::uint8_t> bytes;
};

/// Builds a GGUF v3 file: header, metadata, tensor infos, aligned data.
class GgufBuilder {
 public:
  std::uint32_t version = 3;
  std::uint32_t alignment = 32;

  void add_u32(const std::string& key, std::uint32_t v) { kv(key, 4, [&](Bytes& b) { b.put(v); }); }
  void add_i32(const std::string& key, std::int32_t v) { kv(key, 5, [&](Bytes& b) { b.put(v); }); }
  void add_f32(const std::string& key, float v) { kv(key, 6, [&](Bytes& b) { b.put(v); }); }
  void add_bool(const std::string& key, bool v) { kv(key, 7, [&](Bytes& b) { b.put<std::uint8_t>(v ? 1 : 0); }); }
  void add_string(const std::string& key, const std::string& v) { kv(key, 8, [&](Bytes& b) { b.put_string(v); }); }
  void add_u8(const std::string& key, std::uint8_t v) { kv(key, 0, [&](Bytes& b) { b.put(v); }); }
  void add_i8(const std::string& key, std::int8_t v) { kv(key, 1, [&](Bytes& b) { b.put(v); }); }
  void add_u16(const std::string& key, std::uint16_t v) { kv(key, 2, [&](Bytes& b) { b.put(v); }); }
  void add_i16(const std::string& key, std::int16_t v) { kv(key, 3, [&](Bytes& b) { b.put(v); }); }
  void add_u64(const std::string& key, std::uint64_t v) { kv(key, 10, [&](Bytes& b) { b.put(v); }); }
  void add_i64(const std::string& key, std::int64_t v) { kv(key, 11, [&](Bytes& b) { b.put(v); }); }
  void add_f64(const std::string& key, double v) { kv(key, 12, [&](Bytes& b) { b.put(v); }); }
  void add_string_array(const std::string& key, const std::vector<std::string>& v) {
    kv(key, 9, [&](Bytes& b) {
      b.put<std::uint32_t>(8);
      b.put<std::uint64_t>(v.size());
      for (const auto& s : v) b.put_string(s);
    });
  }
  void add_i32_array(const std::string& key, const std::vector<std::int32_t>& v) {
    kv(key, 9, [&](Bytes& b) {
      b.put<std::uint32_t>(5);
      b.put<std::uint64_t>(v.size());
      for (auto x : v) b.put(x);
    });
  }
  void add_f32_array(const std::string& key, const std::vector<float>& v) {
    kv(key, 9, [&](Bytes& b) {
      b.put<std::uint32_t>(6);
      b.put<std::uint64_t>(v.size());
      for (auto x : v) b.put(x);
    });
  }
  /// Any value as raw bytes after the key (type tag included by the caller).
  void add_raw(const std::string& key, const std::vector<std::uint8_t>& type_and_value) {
    Bytes b;
    b.put_string(key);
    b.data.insert(b.data.end(), type_and_value.begin(), type_and_value.end());
    metadata_.push_back(std::move(b.data));
  }

  void add_tensor(TensorSpec t) { tensors_.push_back(std::move(t)); }

  /// Offsets of interesting fields in the last build(), for hostile patches.
  struct Layout {
    std::size_t tensor_count = 0, kv_count = 0;
    std::vector<std::size_t> tensor_info;    ///< start of each tensor info (its name length)
    std::vector<std::size_t> tensor_dims;    ///< first dim of each tensor
    std::vector<std::size_t> tensor_type;    ///< type field
    std::vector<std::size_t> tensor_offset;  ///< offset field
    std::size_t data_start = 0;
  };

  std::vector<std::uint8_t> build(Layout* layout = nullptr) const {
    Bytes b;
    b.data.insert(b.data.end(), {'G', 'G', 'U', 'F'});
    b.put(version);
    Layout l;
    l.tensor_count = b.put<std::uint64_t>(tensors_.size());
    l.kv_count = b.put<std::uint64_t>(metadata_.size() + (alignment != 32 ? 1 : 0));
    if (alignment != 32) {
      b.put_string("general.alignment");
      b.put<std::uint32_t>(4);
      b.put(alignment);
    }
    for (const auto& m : metadata_) b.data.insert(b.data.end(), m.begin(), m.end());
    std::uint64_t offset = 0;
    std::vector<std::uint64_t> offsets;
    for (const auto& t : tensors_) {
      l.tensor_info.push_back(b.put_string(t.name));
      b.put<std::uint32_t>(static_cast<std::uint32_t>(t.dims.size()));
      l.tensor_dims.push_back(b.data.size());
      for (auto d : t.dims) b.put(d);
      l.tensor_type.push_back(b.put(t.type));
      l.tensor_offset.push_back(b.put(offset));
      offsets.push_back(offset);
      offset += (t.bytes.size() + alignment - 1) / alignment * alignment;
    }
    while (b.data.size() % alignment) b.data.push_back(0);
    l.data_start = b.data.size();
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      b.data.resize(l.data_start + offsets[i]);
      b.data.insert(b.data.end(), tensors_[i].bytes.begin(), tensors_[i].bytes.end());
    }
    if (layout) *layout = l;
    return b.data;
  }

 private:
  template <class Fn>
  void kv(const std::string& key, std::uint32_t type, Fn value) {
    Bytes b;
    b.put_string(key);
    b.put(type);
    value(b);
    metadata_.push_back(std::move(b.data));
  }

  std::vector<std::vector<std::uint8_t>> metadata_;
  std::vector<TensorSpec> tensors_;
};

// ---------------------------------------------------------------- tensor encoders
inline TensorSpec f32_tensor(const std::string& name, std::vector<std::uint64_t> dims, const std::vector<float>& v) {
  TensorSpec t{name, std::move(dims), 0, {}};
  t.bytes.resize(v.size() * 4);
  std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
  return t;
}

inline TensorSpec f16_tensor(const std::string& name, std::vector<std::uint64_t> dims, const std::vector<float>& v) {
  TensorSpec t{name, std::move(dims), 1, {}};
  for (float x : v) {
    const std::uint16_t h = to_fp16(x);
    t.bytes.push_back(static_cast<std::uint8_t>(h & 0xFF));
    t.bytes.push_back(static_cast<std::uint8_t>(h >> 8));
  }
  return t;
}

/// Q8_0 with the scale chosen as max|x|/127 (the values the test expects are recomputed from the
/// stored bytes, so this only needs to be a reasonable quantiser).
inline TensorSpec q8_0_tensor(const std::string& name, std::vector<std::uint64_t> dims, const std::vector<float>& v) {
  TensorSpec t{name, std::move(dims), 8, {}};
  for (std::size_t b = 0; b < v.size(); b += 32) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(v[b + j]));
    const std::uint16_t dh = to_fp16(amax / 127.0f);
    const float d = from_fp16(dh);
    t.bytes.push_back(static_cast<std::uint8_t>(dh & 0xFF));
    t.bytes.push_back(static_cast<std::uint8_t>(dh >> 8));
    for (int j = 0; j < 32; ++j) {
      const int q = d == 0 ? 0 : static_cast<int>(std::lround(v[b + j] / d));
      t.bytes.push_back(static_cast<std::uint8_t>(static_cast<std::int8_t>(std::clamp(q, -127, 127))));
    }
  }
  return t;
}

/// Random bytes for a block-quantised tensor whose fp16 fields (at the given byte offsets of each
/// block) hold modest finite scales; the test then checks the decoder against its own reading.
inline TensorSpec random_blocks(const std::string& name, std::vector<std::uint64_t> dims, std::uint32_t type,
                                std::size_t block_bytes, std::size_t blocks, std::vector<std::size_t> fp16_fields,
                                std::mt19937& rng) {
  TensorSpec t{name, std::move(dims), type, {}};
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(-0.05f, 0.05f);
  t.bytes.resize(block_bytes * blocks);
  for (auto& x : t.bytes) x = static_cast<std::uint8_t>(byte(rng));
  for (std::size_t b = 0; b < blocks; ++b)
    for (std::size_t f : fp16_fields) {
      const std::uint16_t h = to_fp16(scale(rng));
      t.bytes[b * block_bytes + f] = static_cast<std::uint8_t>(h & 0xFF);
      t.bytes[b * block_bytes + f + 1] = static_cast<std::uint8_t>(h >> 8);
    }
  return t;
}

// ---------------------------------------------------------------- a tiny Llama model
struct TinyLlamaSpec {
  int layers = 2, hidden = 64, ffn = 96, heads = 4, kv_heads = 2, vocab = 300;
  float rope_theta = 10000.0f;
  std::uint32_t seed = 7;
  bool tied = true;
  bool q8_embeddings = true;  ///< token_embd as Q8_0 (else F32); layer weights alternate F32 / F16
};

/// Byte-level vocabulary (all 256 byte tokens), a few merges, three special tokens; padded to
/// `vocab` with unused tokens. Weights are random (seeded).
inline GgufBuilder tiny_llama(const TinyLlamaSpec& s) {
  GgufBuilder g;
  g.add_string("general.architecture", "llama");
  g.add_string("general.name", "tiny-test-llama");
  g.add_u32("llama.block_count", static_cast<std::uint32_t>(s.layers));
  g.add_u32("llama.context_length", 256);
  g.add_u32("llama.embedding_length", static_cast<std::uint32_t>(s.hidden));
  g.add_u32("llama.feed_forward_length", static_cast<std::uint32_t>(s.ffn));
  g.add_u32("llama.attention.head_count", static_cast<std::uint32_t>(s.heads));
  g.add_u32("llama.attention.head_count_kv", static_cast<std::uint32_t>(s.kv_heads));
  g.add_f32("llama.rope.freq_base", s.rope_theta);
  g.add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);

  // Tokenizer: specials, the 256 byte-level tokens, merged tokens, padding.
  std::vector<std::string> tokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  std::vector<std::int32_t> types = {3, 3, 3};
  const auto byte_piece = [](int b) {
    std::vector<char32_t> map(256);
    int next = 256;
    for (int i = 0; i < 256; ++i) {
      const bool direct = (i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE && i <= 0xFF);
      map[i] = direct ? char32_t(i) : char32_t(next++);
    }
    const char32_t cp = map[b];
    std::string out;
    if (cp < 0x80) out += char(cp);
    else {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    }
    return out;
  };
  for (int b = 0; b < 256; ++b) {
    tokens.push_back(byte_piece(b));
    types.push_back(1);
  }
  const std::vector<std::string> merges = {"Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "Ġa n", "Ġan d"};
  for (const auto& m : merges) {
    const auto sp = m.find(' ');
    tokens.push_back(m.substr(0, sp) + m.substr(sp + 1));
    types.push_back(1);
  }
  while (static_cast<int>(tokens.size()) < s.vocab) {
    tokens.push_back("<unused" + std::to_string(tokens.size()) + ">");
    types.push_back(5);
  }
  g.add_string("tokenizer.ggml.model", "gpt2");
  g.add_string("tokenizer.ggml.pre", "smollm");
  g.add_string_array("tokenizer.ggml.tokens", tokens);
  g.add_i32_array("tokenizer.ggml.token_type", types);
  g.add_string_array("tokenizer.ggml.merges", merges);
  g.add_u32("tokenizer.ggml.bos_token_id", 1);
  g.add_u32("tokenizer.ggml.eos_token_id", 2);
  g.add_string("tokenizer.chat_template",
               "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
               "{{ '<|im_start|>system\nYou are a test.<|im_end|>\n' }}{% endif %}"
               "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
               "{% endfor %}");

  std::mt19937 rng(s.seed);
  const auto random = [&](std::size_t n, float scale) {
    std::normal_distribution<float> dist(0.0f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = dist(rng);
    return v;
  };
  const auto u = [](int x) { return static_cast<std::uint64_t>(x); };
  const int head_dim = s.hidden / s.heads;
  const int q = s.heads * head_dim, kv = s.kv_heads * head_dim;
  const auto emb = random(std::size_t(s.vocab) * s.hidden, 0.5f);
  g.add_tensor(s.q8_embeddings ? q8_0_tensor("token_embd.weight", {u(s.hidden), u(s.vocab)}, emb)
                               : f32_tensor("token_embd.weight", {u(s.hidden), u(s.vocab)}, emb));
  std::vector<float> ones_ish = random(s.hidden, 0.1f);
  for (auto& x : ones_ish) x += 1.0f;
  g.add_tensor(f32_tensor("output_norm.weight", {u(s.hidden)}, ones_ish));
  if (!s.tied) g.add_tensor(f32_tensor("output.weight", {u(s.hidden), u(s.vocab)}, random(std::size_t(s.vocab) * s.hidden, 0.5f)));
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    const auto mat = [&](const std::string& name, int in, int out) {
      const float scale = 1.0f / std::sqrt(float(in));
      const auto v = random(std::size_t(in) * out, scale);
      g.add_tensor(l % 2 == 0 ? f32_tensor(p + name + ".weight", {u(in), u(out)}, v)
                              : f16_tensor(p + name + ".weight", {u(in), u(out)}, v));
    };
    std::vector<float> n1 = random(s.hidden, 0.1f), n2 = random(s.hidden, 0.1f);
    for (auto& x : n1) x += 1.0f;
    for (auto& x : n2) x += 1.0f;
    g.add_tensor(f32_tensor(p + "attn_norm.weight", {u(s.hidden)}, n1));
    mat("attn_q", s.hidden, q);
    mat("attn_k", s.hidden, kv);
    mat("attn_v", s.hidden, kv);
    mat("attn_output", q, s.hidden);
    g.add_tensor(f32_tensor(p + "ffn_norm.weight", {u(s.hidden)}, n2));
    mat("ffn_gate", s.hidden, s.ffn);
    mat("ffn_up", s.hidden, s.ffn);
    mat("ffn_down", s.ffn, s.hidden);
  }
  return g;
}

inline void write_file(const std::string& path, const std::vector<std::uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace xkv::model::testing
