// Passkey retrieval: a five-digit key hidden at a seeded depth in repeated filler text, then
// asked for. Prompts are assembled from separately tokenised pieces, so every trial of one
// length shares the filler's token prefix up to its insertion point (that prefix's KV cache can
// be computed once).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "xkv/model/tokenizer.hpp"

namespace xkv::eval {

/// Token pieces of the passkey prompt, fixed for a tokenizer.
struct PasskeyPieces {
  std::vector<std::int32_t> intro;     ///< task description (with BOS if the tokenizer adds one)
  std::vector<std::int32_t> filler;    ///< one filler unit (several sentences)
  std::vector<std::int32_t> question;  ///< "What is the pass key? The pass key is"

  static PasskeyPieces make(const model::Tokenizer& tokenizer);
};

struct PasskeyTrial {
  std::string key;                       ///< five digits
  int filler_units = 0;                  ///< filler units in the context
  int insert_after_units = 0;            ///< the key sentence follows this many filler units
  std::int64_t shared_prefix_tokens = 0; ///< tokens before the key sentence (intro + filler units)
  std::vector<std::int32_t> context;     ///< everything before the question
  std::vector<std::int32_t> question;
  [[nodiscard]] std::int64_t total_tokens() const { return std::int64_t(context.size() + question.size()); }
};

/// The seeded choices of one trial: the key, then (once the caller knows how many filler units
/// the prompt holds for that key) the unit the key sentence follows, in [0, filler_units].
struct PasskeyDraw {
  std::string key;
  int filler_units = 0;
  int insert_after_units = 0;
};
PasskeyDraw draw_passkey(std::uint64_t seed, std::int64_t target_tokens, int trial,
                         const std::function<int(const std::string& key)>& filler_units_for_key);

/// Trial `trial` of the length-`target_tokens` task: the number of filler units is chosen so the
/// prompt is at most target_tokens long; the key and the insertion unit come from a generator
/// seeded with (seed, target_tokens, trial), so a trial is reproducible on its own.
PasskeyTrial make_passkey_trial(const model::Tokenizer& tokenizer, const PasskeyPieces& pieces,
                                std::int64_t target_tokens, std::uint64_t seed, int trial);

/// The longest filler-only context (intro + filler units) any trial of this length starts with.
std::vector<std::int32_t> passkey_filler_context(const PasskeyPieces& pieces, int filler_units);

/// The first run of digits in `generated` equals `key`.
bool passkey_answer_correct(const std::string& generated, const std::string& key);

}  // namespace xkv::eval
