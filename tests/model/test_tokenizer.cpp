// Byte-level BPE tokenizer: pre-tokenizer rules, merges, special tokens, ChatML, and on the real
// model's vocabulary round trips and agreement with a reference implementation.
#include <gtest/gtest.h>

#include <random>

#include "gguf_builder.hpp"
#include "model_fixture.hpp"
#include "xkv/model/tokenizer.hpp"

namespace xkv::model {
namespace {

std::vector<std::string> words(std::string_view text, PreTokenizer kind) {
  std::vector<std::string> out;
  for (auto w : detail::pre_tokenize(text, kind)) out.emplace_back(w);
  return out;
}

TEST(PreTokenizer, Gpt2PatternRules) {
  using V = std::vector<std::string>;
  EXPECT_EQ(words("Hello world", PreTokenizer::Gpt2), (V{"Hello", " world"}));
  EXPECT_EQ(words("don't I'll we've", PreTokenizer::Gpt2), (V{"don", "'t", " I", "'ll", " we", "'ve"}));
  // Whitespace before a word keeps one space for the word; a trailing run stays whole.
  EXPECT_EQ(words("a   b  ", PreTokenizer::Gpt2), (V{"a", "  ", " b", "  "}));
  EXPECT_EQ(words("x\n\ny", PreTokenizer::Gpt2), (V{"x", "\n", "\n", "y"}));
  EXPECT_EQ(words("x \n y", PreTokenizer::Gpt2), (V{"x", " \n", " y"}));
  EXPECT_EQ(words("12345 abc", PreTokenizer::Gpt2), (V{"12345", " abc"}));
  EXPECT_EQ(words("(x)+=!?", PreTokenizer::Gpt2), (V{"(", "x", ")+=!?"}));
  EXPECT_EQ(words("caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC", PreTokenizer::Gpt2),
            (V{"caf\xC3\xA9", " \xE6\x97\xA5\xE6\x9C\xAC"}));
  EXPECT_EQ(words("", PreTokenizer::Gpt2), V{});
}

TEST(PreTokenizer, DigitsAreSplitIndividually) {
  using V = std::vector<std::string>;
  EXPECT_EQ(words("abc 2024!", PreTokenizer::DigitsThenGpt2), (V{"abc", " ", "2", "0", "2", "4", "!"}));
  EXPECT_EQ(words("x1y", PreTokenizer::DigitsThenGpt2), (V{"x", "1", "y"}));
  // U+00BD (vulgar fraction one half, category No) is a number too.
  EXPECT_EQ(words("a\xC2\xBD", PreTokenizer::DigitsThenGpt2), (V{"a", "\xC2\xBD"}));
}

TEST(PreTokenizer, InvalidUtf8IsKeptByteForByte) {
  const std::string text = "ok\xFF\xC3(\xE6\x97 end\x80";
  std::string joined;
  for (auto w : detail::pre_tokenize(text, PreTokenizer::Gpt2)) joined += w;
  EXPECT_EQ(joined, text);
}

TEST(UnicodeClasses, Categories) {
  EXPECT_TRUE(detail::is_unicode_letter(U'a'));
  EXPECT_TRUE(detail::is_unicode_letter(U'\u00E9'));
  EXPECT_TRUE(detail::is_unicode_letter(U'\u65E5'));
  EXPECT_FALSE(detail::is_unicode_letter(U'1'));
  EXPECT_TRUE(detail::is_unicode_number(U'7'));
  EXPECT_TRUE(detail::is_unicode_number(U'\u0663'));  // Arabic-Indic three
  EXPECT_FALSE(detail::is_unicode_number(U'x'));
  EXPECT_TRUE(detail::is_unicode_space(U'\u3000'));
  EXPECT_FALSE(detail::is_unicode_space(U'_'));
  EXPECT_FALSE(detail::is_unicode_letter(U'\U0001F680'));  // emoji: neither letter nor number
}

// ---------------------------------------------------------------- synthetic vocabulary
Tokenizer tiny_tokenizer() {
  testing::TinyLlamaSpec spec;
  return Tokenizer::from_gguf(GgufFile::parse(testing::tiny_llama(spec).build(), "tiny.gguf"));
}

TEST(Tokenizer, MergesApplyInRankOrder) {
  const Tokenizer t = tiny_tokenizer();
  // Merges: "Ġ t", "h e", "Ġt he", ... so " the" is one token and " and" is one token.
  const auto the = t.find_piece("\xC4\xA0" "the");
  const auto and_ = t.find_piece("\xC4\xA0" "and");
  ASSERT_TRUE(the && and_);
  EXPECT_EQ(t.encode(" the and"), (std::vector<std::int32_t>{*the, *and_}));
  // "he" alone merges; "eh" does not.
  const auto he = t.find_piece("he");
  ASSERT_TRUE(he.has_value());
  const auto ids = t.encode("eh he");
  ASSERT_EQ(ids.size(), 4u);  // e, h, Ġ, he  (" he" has no "Ġhe" merge)
  EXPECT_EQ(ids.back(), *he);
  EXPECT_EQ(t.decode(ids), "eh he");
}

TEST(Tokenizer, SpecialTokensAndChatTemplate) {
  const Tokenizer t = tiny_tokenizer();
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_TRUE(t.is_special(1));
  const auto ids = t.encode("<|im_start|>hi<|im_end|>");
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(ids.back(), 2);
  // Without special parsing the markers are plain text.
  const auto plain = t.encode("<|im_start|>", {.parse_special = false, .add_bos = std::nullopt});
  EXPECT_GT(plain.size(), 1u);
  EXPECT_EQ(t.decode(plain), "<|im_start|>");
  EXPECT_EQ(t.decode(ids, /*skip_special=*/true), "hi");
  ASSERT_TRUE(t.has_chatml_template());
  EXPECT_EQ(t.default_system_prompt(), "You are a test.");
  const std::vector<ChatMessage> msgs = {{"user", "Hi"}};
  EXPECT_EQ(t.apply_chat_template(msgs),
            "<|im_start|>system\nYou are a test.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  const std::vector<ChatMessage> with_system = {{"system", "S"}, {"user", "U"}};
  EXPECT_EQ(t.apply_chat_template(with_system, false), "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n");
  EXPECT_THROW((void)t.decode(std::vector<std::int32_t>{-1}), Error);
  EXPECT_THROW((void)t.decode(std::vector<std::int32_t>{t.vocab_size()}), Error);
}

TEST(Tokenizer, RoundTripsArbitraryBytes) {
  const Tokenizer t = tiny_tokenizer();  // has all 256 byte tokens
  const char* env = std::getenv("XKV_SEED");
  const std::uint32_t seed = env ? static_cast<std::uint32_t>(std::strtoul(env, nullptr, 10)) : 99u;
  std::printf("XKV_SEED=%u\n", seed);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255), len(0, 64);
  for (int trial = 0; trial < 300; ++trial) {
    std::string s(static_cast<std::size_t>(len(rng)), '\0');
    for (auto& c : s) c = static_cast<char>(byte(rng));
    ASSERT_EQ(t.decode(t.encode(s, {.parse_special = false, .add_bos = std::nullopt})), s) << "trial " << trial;
  }
}

TEST(Tokenizer, MalformedVocabulariesAreRejected) {
  const auto with = [](auto mutate) {
    testing::GgufBuilder g;
    g.add_string("tokenizer.ggml.model", "gpt2");
    mutate(g);
    return GgufFile::parse(g.build(), "tok.gguf");
  };
  const auto expect_error = [](const GgufFile& f, const std::string& needle) {
    try {
      (void)Tokenizer::from_gguf(f);
      ADD_FAILURE() << "accepted a malformed vocabulary";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(with([](auto& g) { g.add_string("tokenizer.ggml.tokens", "x"); }), "must be an array");
  expect_error(with([](auto& g) {
                 g.add_string_array("tokenizer.ggml.tokens", {"a", "b"});
                 g.add_i32_array("tokenizer.ggml.token_type", {1});
                 g.add_string_array("tokenizer.ggml.merges", {});
               }),
               "token_type has 1 entries");
  expect_error(with([](auto& g) {
                 g.add_string_array("tokenizer.ggml.tokens", {"a", "b"});
                 g.add_i32_array("tokenizer.ggml.token_type", {1, 9});
                 g.add_string_array("tokenizer.ggml.merges", {});
               }),
               "token_type[1] = 9");
  expect_error(with([](auto& g) {
                 g.add_string_array("tokenizer.ggml.tokens", {"a", "b", "ab"});
                 g.add_string_array("tokenizer.ggml.merges", {"a c"});
               }),
               "merges[0]");
  expect_error(with([](auto& g) {
                 g.add_string_array("tokenizer.ggml.tokens", {"a", "b", "ab"});
                 g.add_string_array("tokenizer.ggml.merges", {"ab"});
               }),
               "merges[0]");
  expect_error(with([](auto& g) {
                 g.add_string_array("tokenizer.ggml.tokens", {"a", "b"});
                 g.add_string_array("tokenizer.ggml.merges", {});
                 g.add_u32("tokenizer.ggml.bos_token_id", 2);
               }),
               "bos_token_id");
  expect_error(with([](auto& g) {
                 g.add_string_array("tokenizer.ggml.tokens", {"a", "\xE2\x82\xAC"});  // not byte-level
                 g.add_string_array("tokenizer.ggml.merges", {});
               }),
               "byte-level");
  expect_error(with([](auto& g) { g.add_string("tokenizer.ggml.pre", "llama-bpe"); }), "pre-tokenizer");
}

// ---------------------------------------------------------------- the real vocabulary
TEST(RealTokenizer, MatchesReferenceEncodings) {
  XKV_REQUIRE_REAL_MODEL(path);
  const Tokenizer& t = testing::RealModel::get(path).tokenizer;
  // Reference ids: Hugging Face `tokenizers` BPE built from this file's vocabulary and merges with
  // SmolLM2's pre-tokenizer (Digits(individual_digits) then ByteLevel).
  const std::vector<std::pair<std::string, std::vector<std::int32_t>>> cases = {
      {"The capital of France is", {504, 3575, 282, 4649, 314}},
      {"Hello, world! It's 2024-11-29 and I'm  testing   spaces\n\nnew lines\ttabs.",
       {19556, 28, 905, 17, 657, 506, 216, 34, 32, 34, 36, 29, 33, 33, 29, 34, 41, 284, 339, 5248, 216, 3728, 256, 5600,
        198, 198, 2241, 3204, 197, 100, 7366, 30}},
      {"x = 12345.678 + 0.5e10; // don't won't I'll we've they're",
       {104, 446, 216, 33, 34, 35, 36, 37, 30, 38, 39, 40, 1232, 216, 32, 30, 37, 85, 33, 32, 43, 13241, 1326, 982, 3763,
        982, 339, 3060, 392, 3543, 502, 2316}},
      {"   leading spaces and trailing   ", {256, 2899, 5600, 284, 35079, 333}},
      {"def f(x):\n    return x**2  # square\n", {1604, 275, 24, 104, 727, 472, 1003, 1792, 828, 34, 216, 907, 5222, 198}},
      {"\xC3\x9Cn\xC3\xAF" "c\xC3\xB6" "d\xC3\xA9: na\xC3\xAFve caf\xC3\xA9, \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E"
       "\xE3\x81\xAE\xE3\x83\x86\xE3\x82\xAD\xE3\x82\xB9\xE3\x83\x88, emoji \xF0\x9F\x9A\x80\xF0\x9F\x94\xA5, "
       "\xCE\x95\xCE\xBB\xCE\xBB\xCE\xB7\xCE\xBD\xCE\xB9\xCE\xBA\xCE\xAC, \xD1\x80\xD1\x83\xD1\x81\xD1\x81\xD0\xBA\xD0\xB8"
       "\xD0\xB9 \xD1\x82\xD0\xB5\xD0\xBA\xD1\x81\xD1\x82.",
       {142, 246, 94, 25972, 83, 7466, 84, 2756, 42, 15486, 46494, 37366, 28, 17097, 241, 115, 40993, 179, 120, 248,
        26453, 11100, 224, 10391, 251, 10391, 134, 11100, 226, 28, 649, 33777, 15107, 244, 218, 10813, 238, 115, 28,
        5664, 239, 17162, 17162, 25723, 11517, 12001, 21118, 26112, 28, 216, 9175, 14714, 9382, 39511, 7872, 24958,
        38106, 6643, 13760, 24674, 30}},
  };
  for (const auto& [text, expected] : cases) {
    EXPECT_EQ(t.encode(text), expected) << text;
    EXPECT_EQ(t.decode(expected), text);
  }
}

TEST(RealTokenizer, RoundTripsVariedText) {
  XKV_REQUIRE_REAL_MODEL(path);
  const Tokenizer& t = testing::RealModel::get(path).tokenizer;
  const std::vector<std::string> texts = {
      "", " ", "\n\n\n", "a", "Plain ASCII sentence, with punctuation; and (brackets)!",
      "Digits 0123456789 and 3.14159e-10, phone +1-555-0100.", "Tabs\tand\r\nCRLF\r\nline ends",
      "\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C", "\xF0\x9F\x98\x80\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD",
      "Mixed: caf\xC3\xA9 \xE2\x82\xAC" "5 \xCE\xB1\xCE\xB2\xCE\xB3 \xD7\xA9\xD7\x9C\xD7\x95\xD7\x9D", "    indented\n\tcode();",
      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
  for (const auto& s : texts) EXPECT_EQ(t.decode(t.encode(s)), s) << s;
}

TEST(RealTokenizer, SpecialTokensAgreeWithTheFile) {
  XKV_REQUIRE_REAL_MODEL(path);
  auto& real = testing::RealModel::get(path);
  const Tokenizer& t = real.tokenizer;
  EXPECT_EQ(t.vocab_size(), static_cast<std::int32_t>(real.file.get_array("tokenizer.ggml.tokens", GgufValueType::String).size()));
  EXPECT_EQ(t.bos_id(), real.file.get_int("tokenizer.ggml.bos_token_id", 0, t.vocab_size() - 1));
  EXPECT_EQ(t.eos_id(), real.file.get_int("tokenizer.ggml.eos_token_id", 0, t.vocab_size() - 1));
  const auto& types = real.file.get_array("tokenizer.ggml.token_type", GgufValueType::Int32);
  const auto& pieces = real.file.get_array("tokenizer.ggml.tokens", GgufValueType::String);
  int specials = 0;
  for (std::int32_t id = 0; id < t.vocab_size(); ++id) {
    if (std::get<std::int64_t>(types.scalars[id]) != 3) continue;
    ++specials;
    // Every control token's text encodes to exactly its own id, and decodes back.
    EXPECT_EQ(t.encode(pieces.strings[id]), std::vector<std::int32_t>{id}) << pieces.strings[id];
    EXPECT_EQ(t.decode(std::vector<std::int32_t>{id}), pieces.strings[id]);
  }
  EXPECT_GT(specials, 0);
  const auto im_start = t.find_piece("<|im_start|>");
  const auto im_end = t.find_piece("<|im_end|>");
  ASSERT_TRUE(im_start && im_end);
  const std::vector<ChatMessage> msgs = {{"user", "What is 2+2?"}};
  const auto ids = t.encode(t.apply_chat_template(msgs));
  EXPECT_EQ(ids.front(), *im_start);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), *im_start), 3);  // system, user, assistant
  EXPECT_EQ(std::count(ids.begin(), ids.end(), *im_end), 2);
  const auto stops = t.stop_tokens();
  EXPECT_NE(std::find(stops.begin(), stops.end(), *im_end), stops.end());
}

}  // namespace
}  // namespace xkv::model
