// xkv-inspect MODEL: prints a GGUF file's metadata and tensor table. On a malformed file it
// prints one error line and exits with status 1.
#include <cstdio>
#include <iostream>
#include <string>

#include "xkv/model/model.hpp"

namespace {

int usage() {
  std::cerr << "usage: xkv-inspect [--model] MODEL.gguf [--all]\n"
               "  prints metadata, the tensor table and the Llama hyperparameters derived from them\n"
               "  --all   print every array element (default: the first 8)\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string path;
  bool all = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--model" && i + 1 < argc) path = argv[++i];
    else if (arg == "--all") all = true;
    else if (arg == "-h" || arg == "--help") return usage();
    else if (path.empty() && !arg.starts_with("-")) path = arg;
    else return usage();
  }
  if (path.empty()) return usage();

  try {
    const auto file = xkv::model::GgufFile::open(path);
    std::cout << "file:       " << path << "\n"
              << "size:       " << file.file_size() << " bytes\n"
              << "version:    " << file.version() << "\n"
              << "alignment:  " << file.alignment() << "\n"
              << "data at:    " << file.data_offset() << "\n\n"
              << "metadata (" << file.metadata().size() << " keys):\n";
    for (const auto& [key, value] : file.metadata()) {
      const std::string type = value.is_array()
                                   ? std::string("array<") +
                                         xkv::model::value_type_name(
                                             std::get<xkv::model::GgufValue::Array>(value.data).element_type) +
                                         ">"
                                   : xkv::model::value_type_name(value.type);
      std::printf("  %-44s %-15s %s\n", key.c_str(), type.c_str(), value.to_string(all ? SIZE_MAX : 8).c_str());
    }
    std::cout << "\ntensors (" << file.tensors().size() << "):\n";
    std::printf("  %-32s %-6s %-22s %14s %14s\n", "name", "type", "shape", "offset", "bytes");
    for (const auto& t : file.tensors()) {
      const auto info = xkv::model::tensor_type_info(static_cast<std::uint32_t>(t.type));
      std::printf("  %-32s %-6s %-22s %14llu %14llu\n", t.name.c_str(), info ? info->name : "?",
                  t.shape_string().c_str(), static_cast<unsigned long long>(t.file_offset),
                  static_cast<unsigned long long>(t.byte_size));
    }
    if (file.contains("general.architecture") && file.get_string("general.architecture") == "llama") {
      const auto c = xkv::model::LlamaConfig::from_gguf(file);
      std::cout << "\nllama: " << c.num_layers << " layers, hidden " << c.hidden << ", ffn " << c.ffn_hidden << ", "
                << c.num_heads << " heads, " << c.num_kv_heads << " kv heads, head_dim " << c.head_dim << ", vocab "
                << c.vocab_size << ", context " << c.context_length << ", rope theta " << c.rope.theta
                << ", rms eps " << c.rms_eps << (c.tied_embeddings ? ", tied embeddings" : "") << "\n";
      if (file.contains("tokenizer.ggml.model")) {
        const auto tok = xkv::model::Tokenizer::from_gguf(file);
        std::cout << "tokenizer: " << tok.vocab_size() << " tokens, chat template "
                  << (tok.has_chatml_template() ? "ChatML" : "none/other") << "\n";
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "xkv-inspect: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
