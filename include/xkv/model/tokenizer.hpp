// Byte-level BPE tokenizer built from a GGUF file's `tokenizer.ggml.*` metadata, with special
// tokens and the ChatML chat template.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "xkv/model/gguf.hpp"

namespace xkv::model {

/// `tokenizer.ggml.token_type` values (llama.cpp's numbering).
enum class TokenKind : std::int32_t {
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
};

/// How text is split into words before BPE (`tokenizer.ggml.pre`).
enum class PreTokenizer {
  Gpt2,          ///< the GPT-2 regex ("gpt2", "default", absent)
  DigitsThenGpt2 ///< every number character on its own, then GPT-2 ("smollm", "starcoder", "refact")
};

struct ChatMessage {
  std::string role;  ///< "system", "user", "assistant"
  std::string content;
};

struct EncodeOptions {
  bool parse_special = true;             ///< match special tokens' text (e.g. "<|im_start|>") in the input
  std::optional<bool> add_bos;           ///< default: the file's tokenizer.ggml.add_bos_token
};

class Tokenizer {
 public:
  /// Reads vocabulary, token kinds, merges, special ids and the chat template. Throws
  /// xkv::Error(Format) for a missing or inconsistent vocabulary, naming the key and index.
  static Tokenizer from_gguf(const GgufFile& file);

  [[nodiscard]] std::vector<std::int32_t> encode(std::string_view text, const EncodeOptions& options = {}) const;
  /// Concatenated bytes of the tokens; special tokens as their text unless `skip_special`.
  [[nodiscard]] std::string decode(std::span<const std::int32_t> ids, bool skip_special = false) const;
  /// Bytes of one token (may be a partial UTF-8 sequence).
  [[nodiscard]] const std::string& token_bytes(std::int32_t id) const;
  /// The token as stored in the vocabulary (byte-level alphabet for normal tokens).
  [[nodiscard]] const std::string& token_piece(std::int32_t id) const;
  [[nodiscard]] std::optional<std::int32_t> find_piece(std::string_view piece) const;

  [[nodiscard]] std::int32_t vocab_size() const { return static_cast<std::int32_t>(pieces_.size()); }
  [[nodiscard]] TokenKind kind(std::int32_t id) const;
  [[nodiscard]] bool is_special(std::int32_t id) const;
  [[nodiscard]] std::optional<std::int32_t> bos_id() const { return bos_; }
  [[nodiscard]] std::optional<std::int32_t> eos_id() const { return eos_; }
  [[nodiscard]] bool adds_bos() const { return add_bos_; }
  [[nodiscard]] PreTokenizer pre_tokenizer() const { return pre_; }
  /// Tokens that end generation: EOS, and the chat template's end-of-turn token if it has one.
  [[nodiscard]] std::vector<std::int32_t> stop_tokens() const;

  /// True when the file's chat template is ChatML (<|im_start|>role\n...<|im_end|>\n).
  [[nodiscard]] bool has_chatml_template() const { return chatml_; }
  /// Formats `messages` with ChatML, inserting the template's default system prompt when the
  /// template has one and the first message is not a system message. Throws if the file's
  /// template is not ChatML.
  [[nodiscard]] std::string apply_chat_template(std::span<const ChatMessage> messages,
                                                bool add_generation_prompt = true) const;
  [[nodiscard]] const std::string& default_system_prompt() const { return default_system_prompt_; }

 private:
  void check_id(std::int32_t id) const;
  void encode_text(std::string_view text, std::vector<std::int32_t>& out) const;
  void bpe_word(std::string_view word, std::vector<std::int32_t>& out) const;

  std::vector<std::string> pieces_;
  std::vector<std::string> bytes_;  // decoded bytes per token
  std::vector<TokenKind> kinds_;
  std::unordered_map<std::string, std::int32_t> piece_to_id_;
  std::unordered_map<std::uint64_t, std::pair<std::int32_t, std::int32_t>> merges_;  // (left,right) -> (rank, merged)
  std::int32_t byte_token_[256] = {};  // -1: the byte has no token
  std::vector<std::int32_t> specials_;  // control / user-defined ids, longest text first
  std::optional<std::int32_t> bos_, eos_, unknown_, end_of_turn_;
  bool add_bos_ = false;
  PreTokenizer pre_ = PreTokenizer::Gpt2;
  bool chatml_ = false;
  std::string default_system_prompt_;
};

namespace detail {
/// Splits `text` into pre-tokenizer words (byte ranges of `text`). Invalid UTF-8 bytes are kept,
/// each as a character of its own that is neither letter, number nor space.
std::vector<std::string_view> pre_tokenize(std::string_view text, PreTokenizer kind);
bool is_unicode_letter(char32_t c);
bool is_unicode_number(char32_t c);
bool is_unicode_space(char32_t c);
}  // namespace detail

}  // namespace xkv::model
