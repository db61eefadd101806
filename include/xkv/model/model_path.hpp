// Where the tools and tests look for a model when none is given.
#pragma once

#include <optional>
#include <string>

namespace xkv::model {

/// $XKV_MODEL_PATH if set (even if the file is absent, so a wrong path is reported), else the
/// first *.gguf under ${XKV_MODEL_DIR:-$HOME/.cache/xkv} (two levels deep, as scripts/fetch-model
/// places it), else std::nullopt.
std::optional<std::string> default_model_path();

}  // namespace xkv::model
