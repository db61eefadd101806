// Writes the GGUF fuzzer's seed corpus into a directory: usage `xkv_gguf_seeds DIR`.
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>

#include "gguf_builder.hpp"

namespace t = xkv::model::testing;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTPUT_DIR\n", argv[0]);
    return 2;
  }
  const std::filesystem::path dir = argv[1];
  std::filesystem::create_directories(dir);
  int written = 0;
  const auto emit = [&](const std::string& name, const std::vector<std::uint8_t>& bytes) {
    t::write_file((dir / (name + ".gguf")).string(), bytes);
    ++written;
  };

  {  // every metadata value type
    t::GgufBuilder g;
    g.add_u8("u8", 1);
    g.add_i8("i8", -1);
    g.add_u16("u16", 2);
    g.add_i16("i16", -2);
    g.add_u32("u32", 3);
    g.add_i32("i32", -3);
    g.add_f32("f32", 0.5f);
    g.add_bool("bool", true);
    g.add_string("string", "text");
    g.add_u64("u64", 4);
    g.add_i64("i64", -4);
    g.add_f64("f64", 0.25);
    g.add_string_array("strings", {"a", "b"});
    g.add_i32_array("ints", {1, 2, 3});
    g.add_f32_array("floats", {1.0f});
    emit("metadata", g.build());
  }
  {  // every dequantisable tensor type, small
    std::mt19937 rng(1);
    t::GgufBuilder g;
    g.alignment = 64;
    g.add_tensor(t::f32_tensor("f32", {4}, {1, 2, 3, 4}));
    g.add_tensor(t::f16_tensor("f16", {4}, {1, 2, 3, 4}));
    g.add_tensor({"bf16", {2}, 30, {0x80, 0x3F, 0x00, 0x40}});
    g.add_tensor(t::random_blocks("q4_0", {32}, 2, 18, 1, {0}, rng));
    g.add_tensor(t::random_blocks("q4_1", {32}, 3, 20, 1, {0, 2}, rng));
    g.add_tensor(t::random_blocks("q8_0", {32}, 8, 34, 1, {0}, rng));
    g.add_tensor(t::random_blocks("q4_k", {256}, 12, 144, 1, {0, 2}, rng));
    g.add_tensor(t::random_blocks("q6_k", {256}, 14, 210, 1, {208}, rng));
    emit("tensor_types", g.build());
  }
  {  // tiny Llama models (tokenizer + config + weights), tied and untied
    t::TinyLlamaSpec s;
    s.layers = 1;
    s.hidden = 32;
    s.ffn = 32;
    s.heads = 2;
    s.kv_heads = 1;
    s.vocab = 270;  // 3 special + 256 byte + 8 merged tokens, 3 unused
    emit("tiny_llama_tied", t::tiny_llama(s).build());
    s.tied = false;
    s.q8_embeddings = false;
    s.hidden = 16;
    s.ffn = 16;
    emit("tiny_llama_untied", t::tiny_llama(s).build());
  }
  std::printf("%d seed files in %s\n", written, dir.string().c_str());
  return 0;
}
