// libFuzzer target: GGUF parsing, tensor dequantisation, tokenizer and Llama config on arbitrary
// bytes. Any input must either parse or raise xkv::Error; sanitizers catch everything else.
#include <cstddef>
#include <cstdint>
#include <span>

#include "xkv/model/config.hpp"
#include "xkv/model/gguf.hpp"
#include "xkv/model/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace xkv::model;
  try {
    const GgufFile file = GgufFile::parse(std::span<const std::uint8_t>(data, size), "fuzz.gguf");
    for (const auto& [key, value] : file.metadata()) (void)value.to_string();
    for (const auto& t : file.tensors()) {
      (void)t.shape_string();
      if (t.elements <= (std::int64_t(1) << 16)) {
        try {
          (void)file.dequantize(t);
        } catch (const xkv::Error&) {
        }
      }
    }
    try {
      const Tokenizer tok = Tokenizer::from_gguf(file);
      const auto ids = tok.encode("Hello <|im_start|>w\xC3\xB6rld 123 \xF0\x9F\x9A\x80\n");
      (void)tok.decode(ids);
    } catch (const xkv::Error&) {
    }
    try {
      (void)LlamaConfig::from_gguf(file);
    } catch (const xkv::Error&) {
    }
  } catch (const xkv::Error&) {
  }
  return 0;
}
