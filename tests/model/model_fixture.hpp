// Shared helpers of the model tests: locating the real model (tests skip only when it is absent)
// and loading it once per test binary.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "xkv/model/model.hpp"

namespace xkv::model::testing {

/// The real model's path, or nullopt when no model file is present.
inline std::optional<std::string> real_model_path() {
  const auto path = default_model_path();
  if (!path || !std::filesystem::exists(*path)) return std::nullopt;
  return path;
}

#define XKV_REQUIRE_REAL_MODEL(path_var)                                                                   \
  const auto path_var##_found = ::xkv::model::testing::real_model_path();                                  \
  if (!path_var##_found) GTEST_SKIP() << "no model file (set XKV_MODEL_PATH or run scripts/fetch-model)"; \
  const std::string path_var = *path_var##_found

/// The real model's GGUF file, tokenizer and (lazily) weights, shared by the tests of one binary.
struct RealModel {
  GgufFile file;
  Tokenizer tokenizer;
  std::unique_ptr<LlamaModel> model;

  static RealModel& get(const std::string& path) {
    static std::unique_ptr<RealModel> instance;
    if (!instance) {
      GgufFile f = GgufFile::open(path);
      Tokenizer t = Tokenizer::from_gguf(f);
      instance.reset(new RealModel{std::move(f), std::move(t), nullptr});
    }
    return *instance;
  }
  const LlamaModel& llama() {
    if (!model) model = std::make_unique<LlamaModel>(LlamaModel::from_gguf(file));
    return *model;
  }
};

}  // namespace xkv::model::testing
