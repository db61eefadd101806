#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <set>

#include "eval_test_util.hpp"
#include "passkey.hpp"
#include "xkv/error.hpp"
#include "xkv/model/gguf.hpp"

namespace xkv::eval {
namespace {

TEST(PasskeyDraw, DeterministicPerSeedLengthAndTrial) {
  const std::uint64_t seed = testing::test_seed();
  const auto units = [](const std::string&) { return 40; };
  std::set<std::string> keys;
  std::set<int> positions;
  for (int trial = 0; trial < 30; ++trial) {
    const PasskeyDraw a = draw_passkey(seed, 2048, trial, units);
    const PasskeyDraw b = draw_passkey(seed, 2048, trial, units);
    EXPECT_EQ(a.key, b.key);
    EXPECT_EQ(a.insert_after_units, b.insert_after_units);
    ASSERT_EQ(a.key.size(), 5u);
    EXPECT_GE(std::stoi(a.key), 10000);
    EXPECT_GE(a.insert_after_units, 0);
    EXPECT_LE(a.insert_after_units, 40);
    keys.insert(a.key);
    positions.insert(a.insert_after_units);
  }
  // Trials differ from each other (30 draws of 90000 keys / 41 positions).
  EXPECT_GE(keys.size(), 29u);
  EXPECT_GE(positions.size(), 10u);
  // Another seed or length gives another task.
  int same = 0;
  for (int trial = 0; trial < 10; ++trial)
    same += draw_passkey(seed, 2048, trial, units).key == draw_passkey(seed + 1, 2048, trial, units).key;
  EXPECT_LE(same, 1);
  EXPECT_NE(draw_passkey(seed, 1024, 0, units).key, draw_passkey(seed, 2048, 0, units).key);
  EXPECT_THROW((void)draw_passkey(seed, 1024, -1, units), xkv::Error);
}

TEST(PasskeyAnswer, FirstDigitRunMustMatch) {
  EXPECT_TRUE(passkey_answer_correct(" 12345.", "12345"));
  EXPECT_TRUE(passkey_answer_correct("12345", "12345"));
  EXPECT_TRUE(passkey_answer_correct(" is 12345, remember", "12345"));
  EXPECT_FALSE(passkey_answer_correct(" 1234.", "12345"));
  EXPECT_FALSE(passkey_answer_correct(" 123456", "12345"));
  EXPECT_FALSE(passkey_answer_correct(" 54321 or 12345", "12345"));
  EXPECT_FALSE(passkey_answer_correct(" there. The grass", "12345"));
  EXPECT_FALSE(passkey_answer_correct("", "12345"));
}

// The full prompt needs the model's tokenizer: skipped when XKV_MODEL_PATH names no file.
TEST(PasskeyTrial, PromptIsReproducibleAndHasTheRequestedLength) {
  const char* path = std::getenv("XKV_MODEL_PATH");
  if (path == nullptr || !std::filesystem::exists(path)) GTEST_SKIP() << "XKV_MODEL_PATH is not set to a model file";
  const model::GgufFile file = model::GgufFile::open(path);
  const model::Tokenizer tokenizer = model::Tokenizer::from_gguf(file);
  const PasskeyPieces pieces = PasskeyPieces::make(tokenizer);
  const std::uint64_t seed = testing::test_seed();
  for (std::int64_t length : {512, 1024}) {
    for (int trial = 0; trial < 3; ++trial) {
      const PasskeyTrial a = make_passkey_trial(tokenizer, pieces, length, seed, trial);
      const PasskeyTrial b = make_passkey_trial(tokenizer, pieces, length, seed, trial);
      EXPECT_EQ(a.context, b.context);
      EXPECT_EQ(a.key, b.key);
      EXPECT_LE(a.total_tokens(), length);
      EXPECT_GT(a.total_tokens(), length - std::int64_t(pieces.filler.size()));
      // The shared prefix is exactly intro + filler units, so one filler cache serves every trial.
      const std::vector<std::int32_t> shared = passkey_filler_context(pieces, a.insert_after_units);
      ASSERT_EQ(std::int64_t(shared.size()), a.shared_prefix_tokens);
      EXPECT_TRUE(std::equal(shared.begin(), shared.end(), a.context.begin()));
      const std::string text = tokenizer.decode(a.context);
      EXPECT_NE(text.find("The pass key is " + a.key + "."), std::string::npos);
      EXPECT_EQ(tokenizer.decode(a.question), "\nWhat is the pass key? The pass key is");
    }
  }
  EXPECT_THROW((void)make_passkey_trial(tokenizer, pieces, 40, seed, 0), xkv::Error);
}

}  // namespace
}  // namespace xkv::eval
