// xkv::Error — the one exception type the library throws, and the one macro that raises it.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace xkv {

/// What went wrong, coarsely; the message says exactly what and where.
enum class ErrorKind {
  InvalidArgument,  ///< a caller passed something out of range or inconsistent
  Format,           ///< an untrusted file (GGUF, saved cache) is malformed
  Io,               ///< a file could not be opened, mapped or read
  Device,           ///< a CUDA / cuBLAS / cuSOLVER call failed
  OutOfMemory,      ///< an allocation failed
  Numerical,        ///< a factorisation failed (e.g. devInfo != 0)
};

/// The single exception type of the library. Derives from std::runtime_error so that
/// engines catching std::exception or std::runtime_error see it; `kind()` distinguishes.
class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  [[nodiscard]] ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

namespace detail {
[[noreturn]] inline void raise(ErrorKind kind, const char* file, int line, const std::string& what) {
  std::ostringstream os;
  os << "xkv: " << what << " [" << file << ":" << line << "]";
  throw Error(kind, os.str());
}
}  // namespace detail

}  // namespace xkv

/// Throws xkv::Error(kind) with a streamed message when `cond` is false:
///   XKV_CHECK(rank > 0, InvalidArgument, "rank must be positive, got " << rank);
#define XKV_CHECK(cond, kind, message)                                              \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::ostringstream xkv_check_os_;                                             \
      xkv_check_os_ << message;                                                     \
      ::xkv::detail::raise(::xkv::ErrorKind::kind, __FILE__, __LINE__, xkv_check_os_.str()); \
    }                                                                               \
  } while (0)

/// Shorthand for argument validation.
#define XKV_REQUIRE(cond, message) XKV_CHECK(cond, InvalidArgument, message)
