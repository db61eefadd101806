// Byte-level BPE (GPT-2 family) from GGUF metadata.
#include "xkv/model/tokenizer.hpp"

#include <algorithm>
#include <array>
#include <limits>
#include <queue>

namespace xkv::model {
namespace {

/// GPT-2's reversible map from bytes to printable code points (bytes_to_unicode).
std::array<char32_t, 256> byte_to_codepoint() {
  std::array<char32_t, 256> map{};
  std::array<bool, 256> direct{};
  for (int b = '!'; b <= '~'; ++b) direct[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) map[b] = direct[b] ? static_cast<char32_t>(b) : next++;
  return map;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::uint64_t pair_key(std::int32_t a, std::int32_t b) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
}

}  // namespace

Tokenizer Tokenizer::from_gguf(const GgufFile& file) {
  Tokenizer t;
  const std::string& fname = file.name();
  const std::string model = file.get_string("tokenizer.ggml.model");
  XKV_CHECK(model == "gpt2", Format,
            "GGUF '" << fname << "': tokenizer.ggml.model is '" << model
                     << "'; only byte-level BPE ('gpt2') tokenizers are supported");
  const std::string pre = file.contains("tokenizer.ggml.pre") ? file.get_string("tokenizer.ggml.pre") : "default";
  if (pre == "smollm" || pre == "starcoder" || pre == "refact") t.pre_ = PreTokenizer::DigitsThenGpt2;
  else if (pre == "gpt2" || pre == "default") t.pre_ = PreTokenizer::Gpt2;
  else XKV_CHECK(false, Format, "GGUF '" << fname << "': unsupported pre-tokenizer tokenizer.ggml.pre = '" << pre
                                         << "' (supported: smollm, starcoder, refact, gpt2, default)");

  const auto& tokens = file.get_array("tokenizer.ggml.tokens", GgufValueType::String);
  XKV_CHECK(!tokens.strings.empty() && tokens.strings.size() <= std::size_t(std::numeric_limits<std::int32_t>::max()),
            Format, "GGUF '" << fname << "': tokenizer.ggml.tokens has " << tokens.strings.size() << " entries");
  const std::size_t n = tokens.strings.size();
  t.pieces_ = tokens.strings;
  t.kinds_.assign(n, TokenKind::Normal);
  if (file.contains("tokenizer.ggml.token_type")) {
    const auto& types = file.get_array("tokenizer.ggml.token_type", GgufValueType::Int32);
    XKV_CHECK(types.scalars.size() == n, Format,
              "GGUF '" << fname << "': tokenizer.ggml.token_type has " << types.scalars.size()
                       << " entries, tokenizer.ggml.tokens has " << n);
    for (std::size_t i = 0; i < n; ++i) {
      const std::int64_t k = std::get<std::int64_t>(types.scalars[i]);
      XKV_CHECK(k >= 1 && k <= 6, Format,
                "GGUF '" << fname << "': tokenizer.ggml.token_type[" << i << "] = " << k << " is not a token kind (1..6)");
      t.kinds_[i] = static_cast<TokenKind>(k);
    }
  }

  // Decoded bytes of every token: byte-level alphabet for normal tokens, literal text otherwise.
  const auto to_cp = byte_to_codepoint();
  std::unordered_map<char32_t, std::uint8_t> to_byte;
  for (int b = 0; b < 256; ++b) to_byte.emplace(to_cp[b], static_cast<std::uint8_t>(b));
  t.bytes_.resize(n);
  t.piece_to_id_.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::string& piece = t.pieces_[i];
    t.piece_to_id_[piece] = static_cast<std::int32_t>(i);  // a repeated piece maps to its last id
    if (t.kinds_[i] != TokenKind::Normal && t.kinds_[i] != TokenKind::Byte) {
      t.bytes_[i] = piece;
      continue;
    }
    std::string decoded;
    // Each UTF-8 character of the piece must be one of the 256 byte-level code points.
    std::size_t p = 0;
    while (p < piece.size()) {
      const auto b0 = static_cast<unsigned char>(piece[p]);
      const std::size_t len = b0 < 0x80 ? 1 : (b0 & 0xE0) == 0xC0 ? 2 : (b0 & 0xF0) == 0xE0 ? 3 : 0;
      char32_t cp = len == 1 ? b0 : len == 2 ? (b0 & 0x1F) : (b0 & 0x0F);
      bool ok = len > 0 && p + len <= piece.size();
      for (std::size_t k = 1; ok && k < len; ++k) {
        ok = (static_cast<unsigned char>(piece[p + k]) & 0xC0) == 0x80;
        cp = (cp << 6) | (static_cast<unsigned char>(piece[p + k]) & 0x3F);
      }
      const auto it = ok ? to_byte.find(cp) : to_byte.end();
      XKV_CHECK(it != to_byte.end(), Format,
                "GGUF '" << fname << "': token " << i << " is not in the byte-level BPE alphabet (byte " << p
                         << " of its text)");
      decoded += static_cast<char>(it->second);
      p += len;
    }
    t.bytes_[i] = std::move(decoded);
  }
  // Bytes that never occur in training text (some control characters, invalid UTF-8 lead bytes)
  // may have no token; they encode as the unknown token, or are dropped when there is none.
  for (int b = 0; b < 256; ++b) {
    std::string piece;
    append_utf8(piece, to_cp[b]);
    const auto it = t.piece_to_id_.find(piece);
    t.byte_token_[b] = it == t.piece_to_id_.end() ? -1 : it->second;
  }

  const auto& merges = file.get_array("tokenizer.ggml.merges", GgufValueType::String);
  t.merges_.reserve(merges.strings.size());
  for (std::size_t r = 0; r < merges.strings.size(); ++r) {
    const std::string& m = merges.strings[r];
    const std::size_t space = m.find(' ');
    XKV_CHECK(space != std::string::npos && space > 0 && space + 1 < m.size() &&
                  m.find(' ', space + 1) == std::string::npos,
              Format, "GGUF '" << fname << "': tokenizer.ggml.merges[" << r << "] is not two tokens separated by one space");
    const auto left = t.piece_to_id_.find(m.substr(0, space));
    const auto right = t.piece_to_id_.find(m.substr(space + 1));
    const auto merged = t.piece_to_id_.find(m.substr(0, space) + m.substr(space + 1));
    XKV_CHECK(left != t.piece_to_id_.end() && right != t.piece_to_id_.end() && merged != t.piece_to_id_.end(), Format,
              "GGUF '" << fname << "': tokenizer.ggml.merges[" << r << "] names a token missing from the vocabulary");
    XKV_CHECK(r <= std::size_t(std::numeric_limits<std::int32_t>::max()), Format,
              "GGUF '" << fname << "': too many merges");
    // The first (lowest-rank) occurrence of a pair wins.
    t.merges_.try_emplace(pair_key(left->second, right->second), static_cast<std::int32_t>(r), merged->second);
  }

  const auto special_id = [&](const char* key) -> std::optional<std::int32_t> {
    if (!file.contains(key)) return std::nullopt;
    return static_cast<std::int32_t>(file.get_int(key, 0, static_cast<std::int64_t>(n) - 1));
  };
  t.bos_ = special_id("tokenizer.ggml.bos_token_id");
  t.unknown_ = special_id("tokenizer.ggml.unknown_token_id");
  t.eos_ = special_id("tokenizer.ggml.eos_token_id");
  t.add_bos_ = file.get_bool_or("tokenizer.ggml.add_bos_token", false);
  XKV_CHECK(!t.add_bos_ || t.bos_.has_value(), Format,
            "GGUF '" << fname << "': tokenizer.ggml.add_bos_token is true but there is no tokenizer.ggml.bos_token_id");

  for (std::size_t i = 0; i < n; ++i)
    if ((t.kinds_[i] == TokenKind::Control || t.kinds_[i] == TokenKind::UserDefined) && !t.pieces_[i].empty())
      t.specials_.push_back(static_cast<std::int32_t>(i));
  std::stable_sort(t.specials_.begin(), t.specials_.end(), [&](std::int32_t a, std::int32_t b) {
    return t.pieces_[a].size() > t.pieces_[b].size();
  });

  if (file.contains("tokenizer.chat_template")) {
    const std::string tmpl = file.get_string("tokenizer.chat_template");
    t.chatml_ = tmpl.find("<|im_start|>") != std::string::npos && tmpl.find("<|im_end|>") != std::string::npos;
    if (t.chatml_) {
      const auto end_turn = t.find_piece("<|im_end|>");
      if (end_turn && t.is_special(*end_turn)) t.end_of_turn_ = end_turn;
      // The default system prompt, if the template inserts one when the conversation has none.
      const std::string opener = "<|im_start|>system\n";
      const std::size_t at = tmpl.find(opener);
      if (at != std::string::npos && tmpl.find("!= 'system'") != std::string::npos) {
        const std::size_t begin = at + opener.size();
        const std::size_t end = tmpl.find("<|im_end|>", begin);
        if (end != std::string::npos && tmpl.find_first_of("{}'", begin) > end)
          t.default_system_prompt_ = tmpl.substr(begin, end - begin);
      }
    }
  }
  return t;
}

void Tokenizer::check_id(std::int32_t id) const {
  XKV_REQUIRE(id >= 0 && id < vocab_size(), "token id " << id << " is outside the vocabulary [0, " << vocab_size() << ")");
}

TokenKind Tokenizer::kind(std::int32_t id) const {
  check_id(id);
  return kinds_[id];
}

bool Tokenizer::is_special(std::int32_t id) const {
  const TokenKind k = kind(id);
  return k == TokenKind::Control || k == TokenKind::UserDefined;
}

const std::string& Tokenizer::token_bytes(std::int32_t id) const {
  check_id(id);
  return bytes_[id];
}

const std::string& Tokenizer::token_piece(std::int32_t id) const {
  check_id(id);
  return pieces_[id];
}

std::optional<std::int32_t> Tokenizer::find_piece(std::string_view piece) const {
  const auto it = piece_to_id_.find(std::string(piece));
  if (it == piece_to_id_.end()) return std::nullopt;
  return it->second;
}

std::vector<std::int32_t> Tokenizer::stop_tokens() const {
  std::vector<std::int32_t> out;
  if (eos_) out.push_back(*eos_);
  if (end_of_turn_ && (!eos_ || *end_of_turn_ != *eos_)) out.push_back(*end_of_turn_);
  return out;
}

std::vector<std::int32_t> Tokenizer::encode(std::string_view text, const EncodeOptions& options) const {
  std::vector<std::int32_t> out;
  if (options.add_bos.value_or(add_bos_)) {
    XKV_REQUIRE(bos_.has_value(), "encode: add_bos requested but the vocabulary has no BOS token");
    out.push_back(*bos_);
  }
  if (!options.parse_special || specials_.empty()) {
    encode_text(text, out);
    return out;
  }
  std::size_t plain_start = 0, i = 0;
  while (i < text.size()) {
    std::int32_t matched = -1;
    for (const std::int32_t id : specials_) {
      const std::string& s = pieces_[id];
      if (text.compare(i, s.size(), s) == 0) {
        matched = id;
        break;
      }
    }
    if (matched < 0) {
      ++i;
      continue;
    }
    encode_text(text.substr(plain_start, i - plain_start), out);
    out.push_back(matched);
    i += pieces_[matched].size();
    plain_start = i;
  }
  encode_text(text.substr(plain_start), out);
  return out;
}

void Tokenizer::encode_text(std::string_view text, std::vector<std::int32_t>& out) const {
  if (text.empty()) return;
  for (std::string_view word : detail::pre_tokenize(text, pre_)) bpe_word(word, out);
}

void Tokenizer::bpe_word(std::string_view word, std::vector<std::int32_t>& out) const {
  // Symbols in a doubly linked list; candidate merges in a min-heap by (rank, position), with
  // stale entries skipped on pop (O(n log n) even for long runs of one character).
  struct Symbol {
    std::int32_t id;
    int prev, next;
    bool alive;
  };
  std::vector<Symbol> sym(word.size());
  for (std::size_t i = 0; i < word.size(); ++i)
    sym[i] = {byte_token_[static_cast<unsigned char>(word[i])], int(i) - 1, int(i) + 1, true};
  if (sym.empty()) return;
  sym.back().next = -1;

  struct Candidate {
    std::int32_t rank;
    int left;
    std::int32_t left_id, right_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  const auto push = [&](int left) {
    if (left < 0 || sym[left].next < 0) return;
    const int right = sym[left].next;
    if (sym[left].id < 0 || sym[right].id < 0) return;  // a byte without a token merges with nothing
    const auto it = merges_.find(pair_key(sym[left].id, sym[right].id));
    if (it != merges_.end()) heap.push({it->second.first, left, sym[left].id, sym[right].id});
  };
  for (int i = 0; i + 1 < int(sym.size()); ++i) push(i);

  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    Symbol& left = sym[c.left];
    if (!left.alive || left.next < 0 || left.id != c.left_id || sym[left.next].id != c.right_id) continue;
    Symbol& right = sym[left.next];
    left.id = merges_.at(pair_key(c.left_id, c.right_id)).second;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) sym[right.next].prev = c.left;
    push(left.prev);
    push(c.left);
  }
  for (int i = 0; i >= 0; i = sym[i].next) {
    if (sym[i].id >= 0) out.push_back(sym[i].id);
    else if (unknown_) out.push_back(*unknown_);
  }
}

std::string Tokenizer::decode(std::span<const std::int32_t> ids, bool skip_special) const {
  std::string out;
  for (const std::int32_t id : ids) {
    check_id(id);
    if (skip_special && is_special(id)) continue;
    out += bytes_[id];
  }
  return out;
}

std::string Tokenizer::apply_chat_template(std::span<const ChatMessage> messages, bool add_generation_prompt) const {
  XKV_CHECK(chatml_, InvalidArgument, "apply_chat_template: the model's chat template is not ChatML");
  std::string out;
  if (!default_system_prompt_.empty() && (messages.empty() || messages.front().role != "system"))
    out += "<|im_start|>system\n" + default_system_prompt_ + "<|im_end|>\n";
  for (const auto& m : messages) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

}  // namespace xkv::model
