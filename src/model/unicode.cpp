// Unicode classes and the pre-tokenizer of byte-level BPE (the GPT-2 pattern, with optional
// single-digit splitting), written as a scanner instead of a regex engine:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
#include <algorithm>
#include <limits>

#include "xkv/model/tokenizer.hpp"

namespace xkv::model::detail {
namespace {

struct CodepointRange {
  char32_t first, last;
};
#include "unicode_tables.inc"

template <std::size_t N>
bool in_ranges(const CodepointRange (&ranges)[N], char32_t c) {
  const auto* it = std::upper_bound(std::begin(ranges), std::end(ranges), c,
                                    [](char32_t v, const CodepointRange& r) { return v < r.first; });
  return it != std::begin(ranges) && c <= (it - 1)->last;
}

/// A decoded character: its code point (or a sentinel for an invalid byte) and byte extent.
struct Char {
  char32_t cp;
  std::uint32_t begin, length;
};
constexpr char32_t kInvalid = 0xFFFFFFFF;

std::vector<Char> decode_utf8(std::string_view s) {
  std::vector<Char> out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    const unsigned char b0 = p[i];
    std::size_t len = 0;
    char32_t cp = 0;
    if (b0 < 0x80) { len = 1; cp = b0; }
    else if ((b0 & 0xE0) == 0xC0) { len = 2; cp = b0 & 0x1F; }
    else if ((b0 & 0xF0) == 0xE0) { len = 3; cp = b0 & 0x0F; }
    else if ((b0 & 0xF8) == 0xF0) { len = 4; cp = b0 & 0x07; }
    bool ok = len > 0 && i + len <= n;
    for (std::size_t k = 1; ok && k < len; ++k) {
      ok = (p[i + k] & 0xC0) == 0x80;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    // Reject overlong forms, surrogates and values past U+10FFFF.
    if (ok) {
      static constexpr char32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
      ok = cp >= kMin[len] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
    }
    if (!ok) {
      out.push_back({kInvalid, static_cast<std::uint32_t>(i), 1});
      ++i;
    } else {
      out.push_back({cp, static_cast<std::uint32_t>(i), static_cast<std::uint32_t>(len)});
      i += len;
    }
  }
  return out;
}

enum class Class { Letter, Number, Space, Other };

Class classify(char32_t c) {
  if (c == kInvalid) return Class::Other;
  if (is_unicode_space(c)) return Class::Space;
  if (is_unicode_letter(c)) return Class::Letter;
  if (is_unicode_number(c)) return Class::Number;
  return Class::Other;
}

/// GPT-2 pattern over chars [begin, end); appends [first, last) char index pairs.
void split_gpt2(const std::vector<Char>& chars, const std::vector<Class>& cls, std::size_t begin, std::size_t end,
                std::vector<std::pair<std::size_t, std::size_t>>& words) {
  std::size_t i = begin;
  while (i < end) {
    const char32_t c = chars[i].cp;
    if (c == U'\'' && i + 1 < end) {  // contractions, case-sensitive as in GPT-2
      const char32_t a = chars[i + 1].cp;
      const char32_t b = i + 2 < end ? chars[i + 2].cp : 0;
      std::size_t len = 0;
      if (a == U's' || a == U't' || a == U'm' || a == U'd') len = 2;
      else if ((a == U'r' && b == U'e') || (a == U'v' && b == U'e') || (a == U'l' && b == U'l')) len = 3;
      if (len > 0) {
        words.emplace_back(i, i + len);
        i += len;
        continue;
      }
    }
    // ` ?X+` for X in letter, number, other: an optional ASCII space, then a run of one class.
    std::size_t j = i;
    if (c == U' ' && i + 1 < end && cls[i + 1] != Class::Space) ++j;
    if (cls[j] != Class::Space) {
      const Class run = cls[j];
      std::size_t k = j;
      while (k < end && cls[k] == run) ++k;
      words.emplace_back(i, k);
      i = k;
      continue;
    }
    // Whitespace: all of it at the end of the text; else all but the last character (which
    // then prefixes the next word), or the single character when the run has length one.
    std::size_t k = i;
    while (k < end && cls[k] == Class::Space) ++k;
    if (k < end && k - i >= 2) --k;
    words.emplace_back(i, k);
    i = k;
  }
}

}  // namespace

bool is_unicode_letter(char32_t c) { return in_ranges(kLetterRanges, c); }
bool is_unicode_number(char32_t c) { return in_ranges(kNumberRanges, c); }
bool is_unicode_space(char32_t c) {
  // The White_Space property.
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

std::vector<std::string_view> pre_tokenize(std::string_view text, PreTokenizer kind) {
  XKV_REQUIRE(text.size() < std::numeric_limits<std::int32_t>::max(),
              "pre_tokenize: text of " << text.size() << " bytes is too long (limit 2 GiB)");
  const std::vector<Char> chars = decode_utf8(text);
  std::vector<Class> cls(chars.size());
  for (std::size_t i = 0; i < chars.size(); ++i) cls[i] = classify(chars[i].cp);

  std::vector<std::pair<std::size_t, std::size_t>> words;
  if (kind == PreTokenizer::DigitsThenGpt2) {
    // Each number character is a word of its own; the GPT-2 pattern runs on the spans between.
    std::size_t start = 0;
    for (std::size_t i = 0; i < chars.size(); ++i) {
      if (cls[i] != Class::Number) continue;
      split_gpt2(chars, cls, start, i, words);
      words.emplace_back(i, i + 1);
      start = i + 1;
    }
    split_gpt2(chars, cls, start, chars.size(), words);
  } else {
    split_gpt2(chars, cls, 0, chars.size(), words);
  }

  std::vector<std::string_view> out;
  out.reserve(words.size());
  for (const auto& [first, last] : words) {
    const std::size_t b = chars[first].begin;
    const std::size_t e = chars[last - 1].begin + chars[last - 1].length;
    out.push_back(text.substr(b, e - b));
  }
  return out;
}

}  // namespace xkv::model::detail
