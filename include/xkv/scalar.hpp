// Storage scalar types: fp32, fp16 and bf16 (Eigen's, so they convert to and from float).
#pragma once

#include <Eigen/Core>

namespace xkv {

using half = Eigen::half;
using bfloat16 = Eigen::bfloat16;

template <class T>
inline float to_float(T v) {
  return static_cast<float>(v);
}
template <class T>
inline T from_float(float v) {
  return static_cast<T>(v);
}

/// Short name of a storage type, for messages and benchmark labels.
template <class T>
constexpr const char* scalar_name() {
  if constexpr (std::is_same_v<T, float>) return "fp32";
  else if constexpr (std::is_same_v<T, half>) return "fp16";
  else if constexpr (std::is_same_v<T, bfloat16>) return "bf16";
  else return "unknown";
}

}  // namespace xkv
