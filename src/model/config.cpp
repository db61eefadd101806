// Llama hyperparameters from GGUF metadata; tensor table validated against them.
#include "xkv/model/config.hpp"

#include <cmath>
#include <limits>

namespace xkv::model {
namespace {

std::string shape_of(const std::vector<std::int64_t>& dims) {
  TensorInfo t;
  t.dims = dims;
  return t.shape_string();
}

void check_tensor(const GgufFile& file, const std::string& name, const std::vector<std::int64_t>& expected) {
  const TensorInfo* t = file.find_tensor(name);
  XKV_CHECK(t != nullptr, Format, "GGUF '" << file.name() << "': tensor '" << name << "' is missing");
  const auto info = tensor_type_info(static_cast<std::uint32_t>(t->type));
  XKV_CHECK(info && info->dequantizable, Format,
            "GGUF '" << file.name() << "': tensor '" << name << "' has type " << (info ? info->name : "unknown")
                     << ", which cannot be dequantised");
  XKV_CHECK(t->dims == expected, Format,
            "GGUF '" << file.name() << "': tensor '" << name << "' has shape " << t->shape_string()
                     << ", the hyperparameters require " << shape_of(expected));
}

}  // namespace

std::string layer_tensor_name(int layer, const char* suffix) {
  return "blk." + std::to_string(layer) + "." + suffix + ".weight";
}

LlamaConfig LlamaConfig::from_gguf(const GgufFile& file) {
  LlamaConfig c;
  const std::string& fname = file.name();
  c.architecture = file.get_string("general.architecture");
  XKV_CHECK(c.architecture == "llama", Format,
            "GGUF '" << fname << "': general.architecture is '" << c.architecture << "'; only 'llama' is supported");
  if (file.contains("general.name")) c.name = file.get_string("general.name");
  const std::string a = c.architecture + ".";
  constexpr std::int64_t kMaxDim = 1 << 20;

  c.num_layers = static_cast<int>(file.get_int(a + "block_count", 1, 4096));
  c.hidden = static_cast<int>(file.get_int(a + "embedding_length", 1, kMaxDim));
  c.ffn_hidden = static_cast<int>(file.get_int(a + "feed_forward_length", 1, kMaxDim));
  c.num_heads = static_cast<int>(file.get_int(a + "attention.head_count", 1, c.hidden));
  c.num_kv_heads = static_cast<int>(file.get_int_or(a + "attention.head_count_kv", c.num_heads, 1, c.num_heads));
  XKV_CHECK(c.num_heads % c.num_kv_heads == 0, Format,
            "GGUF '" << fname << "': " << a << "attention.head_count " << c.num_heads
                     << " is not a multiple of head_count_kv " << c.num_kv_heads);
  if (file.contains(a + "attention.key_length")) {
    c.head_dim = static_cast<int>(file.get_int(a + "attention.key_length", 1, kMaxDim));
    const auto value_length = file.get_int_or(a + "attention.value_length", c.head_dim, 1, kMaxDim);
    XKV_CHECK(value_length == c.head_dim, Format,
              "GGUF '" << fname << "': attention.value_length " << value_length << " differs from key_length "
                       << c.head_dim << "; not supported");
  } else {
    XKV_CHECK(c.hidden % c.num_heads == 0, Format,
              "GGUF '" << fname << "': " << a << "embedding_length " << c.hidden
                       << " is not a multiple of attention.head_count " << c.num_heads);
    c.head_dim = c.hidden / c.num_heads;
  }
  XKV_CHECK(std::int64_t(c.num_heads) * c.head_dim <= kMaxDim, Format,
            "GGUF '" << fname << "': " << c.num_heads << " heads of " << c.head_dim << " are too wide");
  c.context_length = file.get_int(a + "context_length", 1, std::int64_t(1) << 40);
  c.rms_eps = file.get_float(a + "attention.layer_norm_rms_epsilon");
  XKV_CHECK(c.rms_eps > 0 && c.rms_eps < 1, Format,
            "GGUF '" << fname << "': " << a << "attention.layer_norm_rms_epsilon " << c.rms_eps << " is outside (0, 1)");

  c.rope = RopeConfig{};
  c.rope.style = RopeStyle::Interleaved;  // GGUF permutes Q/K rows so pairs are (2i, 2i+1)
  c.rope.theta = file.get_float_or(a + "rope.freq_base", 10000.0);
  XKV_CHECK(c.rope.theta > 1, Format, "GGUF '" << fname << "': " << a << "rope.freq_base " << c.rope.theta
                                               << " must be greater than 1");
  const auto rot = file.get_int_or(a + "rope.dimension_count", c.head_dim, 2, c.head_dim);
  XKV_CHECK(rot % 2 == 0, Format, "GGUF '" << fname << "': " << a << "rope.dimension_count " << rot << " is odd");
  c.rope.rotary_dim = rot == c.head_dim ? 0 : static_cast<int>(rot);
  if (file.contains(a + "rope.scaling.type")) {
    const std::string scaling = file.get_string(a + "rope.scaling.type");
    XKV_CHECK(scaling == "none", Format,
              "GGUF '" << fname << "': RoPE scaling '" << scaling << "' is not supported");
  }
  XKV_CHECK(file.find_tensor("rope_freqs.weight") == nullptr, Format,
            "GGUF '" << fname << "': per-dimension RoPE frequency factors (rope_freqs.weight) are not supported");

  for (const auto& t : file.tensors())
    XKV_CHECK(!t.name.ends_with(".bias"), Format,
              "GGUF '" << fname << "': tensor '" << t.name << "' is a bias; Llama layers without biases are supported");

  const TensorInfo* embd = file.find_tensor("token_embd.weight");
  XKV_CHECK(embd != nullptr && embd->dims.size() == 2, Format,
            "GGUF '" << fname << "': tensor 'token_embd.weight' is missing or not 2-D");
  XKV_CHECK(embd->dims[1] <= std::numeric_limits<int>::max(), Format,
            "GGUF '" << fname << "': vocabulary of " << embd->dims[1] << " tokens is too large");
  c.vocab_size = static_cast<int>(embd->dims[1]);
  if (file.contains(a + "vocab_size")) {
    const auto declared = file.get_int(a + "vocab_size", 1, std::numeric_limits<int>::max());
    XKV_CHECK(declared == c.vocab_size, Format,
              "GGUF '" << fname << "': " << a << "vocab_size " << declared << " disagrees with token_embd.weight's "
                       << c.vocab_size << " rows");
  }
  if (file.contains("tokenizer.ggml.tokens")) {
    const auto& tokens = file.get_array("tokenizer.ggml.tokens", GgufValueType::String);
    XKV_CHECK(tokens.strings.size() == static_cast<std::size_t>(c.vocab_size), Format,
              "GGUF '" << fname << "': tokenizer.ggml.tokens has " << tokens.strings.size()
                       << " entries, token_embd.weight has " << c.vocab_size << " rows");
  }

  const std::int64_t h = c.hidden, q = c.q_width(), kv = c.kv_width(), f = c.ffn_hidden, v = c.vocab_size;
  check_tensor(file, "token_embd.weight", {h, v});
  check_tensor(file, "output_norm.weight", {h});
  c.tied_embeddings = file.find_tensor("output.weight") == nullptr;
  if (!c.tied_embeddings) check_tensor(file, "output.weight", {h, v});
  for (int l = 0; l < c.num_layers; ++l) {
    check_tensor(file, layer_tensor_name(l, "attn_norm"), {h});
    check_tensor(file, layer_tensor_name(l, "attn_q"), {h, q});
    check_tensor(file, layer_tensor_name(l, "attn_k"), {h, kv});
    check_tensor(file, layer_tensor_name(l, "attn_v"), {h, kv});
    check_tensor(file, layer_tensor_name(l, "attn_output"), {q, h});
    check_tensor(file, layer_tensor_name(l, "ffn_norm"), {h});
    check_tensor(file, layer_tensor_name(l, "ffn_gate"), {h, f});
    check_tensor(file, layer_tensor_name(l, "ffn_up"), {h, f});
    check_tensor(file, layer_tensor_name(l, "ffn_down"), {f, h});
  }
  return c;
}

}  // namespace xkv::model
