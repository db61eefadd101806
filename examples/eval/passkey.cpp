#include "passkey.hpp"

#include <cctype>
#include <random>

#include "xkv/error.hpp"

namespace xkv::eval {
namespace {
constexpr const char* kIntro =
    "There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.";
constexpr const char* kFiller =
    " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
constexpr const char* kQuestion = "\nWhat is the pass key? The pass key is";

model::EncodeOptions no_bos() {
  model::EncodeOptions o;
  o.add_bos = false;
  o.parse_special = false;
  return o;
}
}  // namespace

PasskeyPieces PasskeyPieces::make(const model::Tokenizer& tokenizer) {
  PasskeyPieces p;
  model::EncodeOptions intro_options;
  intro_options.parse_special = false;  // the tokenizer's own BOS setting
  p.intro = tokenizer.encode(kIntro, intro_options);
  p.filler = tokenizer.encode(kFiller, no_bos());
  p.question = tokenizer.encode(kQuestion, no_bos());
  XKV_CHECK(!p.filler.empty() && !p.question.empty(), InvalidArgument, "passkey: the tokenizer produced no tokens");
  return p;
}

std::vector<std::int32_t> passkey_filler_context(const PasskeyPieces& pieces, int filler_units) {
  std::vector<std::int32_t> out = pieces.intro;
  for (int u = 0; u < filler_units; ++u) out.insert(out.end(), pieces.filler.begin(), pieces.filler.end());
  return out;
}

PasskeyDraw draw_passkey(std::uint64_t seed, std::int64_t target_tokens, int trial,
                         const std::function<int(const std::string& key)>& filler_units_for_key) {
  XKV_REQUIRE(trial >= 0, "draw_passkey: trial " << trial << " < 0");
  std::seed_seq seq{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32),
                    static_cast<std::uint32_t>(target_tokens), static_cast<std::uint32_t>(trial)};
  std::mt19937_64 rng(seq);
  PasskeyDraw d;
  d.key = std::to_string(std::uniform_int_distribution<int>(10000, 99999)(rng));
  d.filler_units = filler_units_for_key(d.key);
  XKV_REQUIRE(d.filler_units >= 0, "draw_passkey: " << d.filler_units << " filler units");
  d.insert_after_units = std::uniform_int_distribution<int>(0, d.filler_units)(rng);
  return d;
}

namespace {
std::string key_sentence(const std::string& key) {
  return " The pass key is " + key + ". Remember it. " + key + " is the pass key.";
}
}  // namespace

PasskeyTrial make_passkey_trial(const model::Tokenizer& tokenizer, const PasskeyPieces& pieces,
                                std::int64_t target_tokens, std::uint64_t seed, int trial) {
  std::vector<std::int32_t> key_tokens;
  const PasskeyDraw d = draw_passkey(seed, target_tokens, trial, [&](const std::string& key) {
    key_tokens = tokenizer.encode(key_sentence(key), no_bos());
    const std::int64_t fixed = std::int64_t(pieces.intro.size() + key_tokens.size() + pieces.question.size());
    const std::int64_t unit = static_cast<std::int64_t>(pieces.filler.size());
    XKV_REQUIRE(target_tokens >= fixed + 2 * unit,
                "make_passkey_trial: target_tokens " << target_tokens << " leaves no room for filler (needs >= "
                                                     << fixed + 2 * unit << ")");
    return static_cast<int>((target_tokens - fixed) / unit);
  });
  PasskeyTrial t;
  t.key = d.key;
  t.filler_units = d.filler_units;
  t.insert_after_units = d.insert_after_units;
  t.context = passkey_filler_context(pieces, t.insert_after_units);
  t.shared_prefix_tokens = static_cast<std::int64_t>(t.context.size());
  t.context.insert(t.context.end(), key_tokens.begin(), key_tokens.end());
  for (int u = t.insert_after_units; u < t.filler_units; ++u)
    t.context.insert(t.context.end(), pieces.filler.begin(), pieces.filler.end());
  t.question = pieces.question;
  return t;
}

bool passkey_answer_correct(const std::string& generated, const std::string& key) {
  std::size_t i = 0;
  while (i < generated.size() && !std::isdigit(static_cast<unsigned char>(generated[i]))) ++i;
  std::size_t j = i;
  while (j < generated.size() && std::isdigit(static_cast<unsigned char>(generated[j]))) ++j;
  return i < generated.size() && generated.substr(i, j - i) == key;
}

}  // namespace xkv::eval
