#include "xkv/model/model_path.hpp"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <system_error>
#include <vector>

namespace xkv::model {

std::optional<std::string> default_model_path() {
  if (const char* explicit_path = std::getenv("XKV_MODEL_PATH"); explicit_path != nullptr && *explicit_path != '\0')
    return std::string(explicit_path);
  std::filesystem::path dir;
  if (const char* d = std::getenv("XKV_MODEL_DIR"); d != nullptr && *d != '\0') dir = d;
  else if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') dir = std::filesystem::path(home) / ".cache" / "xkv";
  else return std::nullopt;

  std::error_code ec;
  std::vector<std::filesystem::path> found;
  for (std::filesystem::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it.depth() > 1) {
      it.disable_recursion_pending();
      continue;
    }
    if (it->is_regular_file(ec) && it->path().extension() == ".gguf") found.push_back(it->path());
  }
  if (found.empty()) return std::nullopt;
  std::sort(found.begin(), found.end());  // deterministic choice
  return found.front().string();
}

}  // namespace xkv::model
