// Rotary position embedding (RoPE): configuration and the CPU reference implementation.
// xKV compresses pre-RoPE keys, so RoPE is applied after reconstruction at each token's position.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include "xkv/error.hpp"

namespace xkv {

/// Which dimensions form a rotated pair.
enum class RopeStyle {
  HalfSplit,    ///< HF / GPT-NeoX: (i, i + rotary_dim/2)
  Interleaved,  ///< GGUF / GPT-J: (2i, 2i + 1)
};

/// Llama-3 frequency scaling ("rope_type": "llama3" in HF configs).
struct Llama3Scaling {
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  double original_max_position = 8192.0;
};

struct RopeConfig {
  bool enabled = true;
  double theta = 10000.0;
  RopeStyle style = RopeStyle::HalfSplit;
  int rotary_dim = 0;  ///< dimensions rotated per head (even); 0 means the whole head
  std::optional<Llama3Scaling> llama3;

  /// No rotation at all (values; MLA latents).
  static RopeConfig disabled() {
    RopeConfig c;
    c.enabled = false;
    return c;
  }

  [[nodiscard]] int rotated_dims(int head_dim) const { return !enabled ? 0 : (rotary_dim > 0 ? rotary_dim : head_dim); }

  void validate(int head_dim) const {
    if (!enabled) return;
    XKV_REQUIRE(theta > 0 && std::isfinite(theta), "RopeConfig.theta must be positive and finite, got " << theta);
    const int rd = rotated_dims(head_dim);
    XKV_REQUIRE(rotary_dim >= 0, "RopeConfig.rotary_dim must be >= 0, got " << rotary_dim);
    XKV_REQUIRE(rd <= head_dim, "RopeConfig.rotary_dim " << rd << " exceeds head_dim " << head_dim);
    XKV_REQUIRE(rd % 2 == 0, "RopeConfig.rotary_dim must be even, got " << rd);
    if (llama3) {
      const auto& s = *llama3;
      XKV_REQUIRE(s.factor > 0, "Llama3Scaling.factor must be positive, got " << s.factor);
      XKV_REQUIRE(s.high_freq_factor > s.low_freq_factor && s.low_freq_factor > 0,
                  "Llama3Scaling needs 0 < low_freq_factor < high_freq_factor, got " << s.low_freq_factor << ", "
                                                                                      << s.high_freq_factor);
      XKV_REQUIRE(s.original_max_position > 0,
                  "Llama3Scaling.original_max_position must be positive, got " << s.original_max_position);
    }
  }

  /// Inverse frequencies of the rotated pairs, in fp64: inv_freq[i] = theta^(-2i/rotary_dim),
  /// then Llama-3 scaling if configured (the formula of HF's _compute_llama3_parameters).
  [[nodiscard]] std::vector<double> inverse_frequencies(int head_dim) const {
    validate(head_dim);
    const int rd = rotated_dims(head_dim);
    std::vector<double> inv(static_cast<std::size_t>(rd / 2));
    for (int i = 0; i < rd / 2; ++i) inv[i] = std::pow(theta, -2.0 * i / rd);
    if (llama3) {
      const auto& s = *llama3;
      const double pi = 3.14159265358979323846;
      const double low_freq_wavelen = s.original_max_position / s.low_freq_factor;
      const double high_freq_wavelen = s.original_max_position / s.high_freq_factor;
      for (double& f : inv) {
        const double wavelen = 2.0 * pi / f;
        if (wavelen < high_freq_wavelen) continue;  // high frequencies are kept
        if (wavelen > low_freq_wavelen) {
          f = f / s.factor;  // low frequencies are slowed by `factor`
        } else {             // a smooth blend in between
          const double smooth =
              (s.original_max_position / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
          f = (1.0 - smooth) * f / s.factor + smooth * f;
        }
      }
    }
    return inv;
  }
};

/// Index of the two dimensions forming rotated pair `i` of a head.
inline void rope_pair(RopeStyle style, int rotated_dims, int i, int& first, int& second) {
  if (style == RopeStyle::HalfSplit) {
    first = i;
    second = i + rotated_dims / 2;
  } else {
    first = 2 * i;
    second = 2 * i + 1;
  }
}

/// Rotates every head of one token's row [heads x head_dim] in place, given the cos/sin of that
/// token's position for each rotated pair (fp64 arithmetic). The one rotation kernel of the CPU
/// paths: the compressed cache feeds it from its table, the model from angles it evaluates.
inline void rotate_row(float* row, int heads, int head_dim, RopeStyle style, int pairs, const double* cos,
                       const double* sin) {
  for (int h = 0; h < heads; ++h) {
    float* head = row + static_cast<std::int64_t>(h) * head_dim;
    for (int i = 0; i < pairs; ++i) {
      int a = 0, b = 0;
      rope_pair(style, 2 * pairs, i, a, b);
      const double x = head[a], y = head[b];
      head[a] = static_cast<float>(x * cos[i] - y * sin[i]);
      head[b] = static_cast<float>(x * sin[i] + y * cos[i]);
    }
  }
}

/// Rotates one head vector in place at `position` (reference: angles in fp64, arithmetic in fp64).
/// `inv_freq` comes from RopeConfig::inverse_frequencies.
template <class Float>
void apply_rope_head(Float* head, int head_dim, std::int64_t position, RopeStyle style,
                     const std::vector<double>& inv_freq) {
  (void)head_dim;
  const int rd = static_cast<int>(inv_freq.size()) * 2;
  for (int i = 0; i < rd / 2; ++i) {
    const double angle = static_cast<double>(position) * inv_freq[i];
    const double c = std::cos(angle), s = std::sin(angle);
    int a = 0, b = 0;
    rope_pair(style, rd, i, a, b);
    const double x = static_cast<double>(head[a]), y = static_cast<double>(head[b]);
    head[a] = static_cast<Float>(x * c - y * s);
    head[b] = static_cast<Float>(x * s + y * c);
  }
}

/// Precomputed cos/sin per (position, pair) for repeated application; the layout the CUDA kernels
/// accept as a caller's table: cos[p * pairs + i], sin[p * pairs + i].
struct RopeTable {
  int pairs = 0;
  std::vector<float> cos, sin;

  static RopeTable build(const RopeConfig& cfg, int head_dim, std::int64_t positions) {
    XKV_REQUIRE(positions >= 0, "RopeTable positions must be >= 0, got " << positions);
    RopeTable t;
    const auto inv = cfg.inverse_frequencies(head_dim);
    t.pairs = static_cast<int>(inv.size());
    t.cos.resize(static_cast<std::size_t>(positions) * t.pairs);
    t.sin.resize(t.cos.size());
    for (std::int64_t p = 0; p < positions; ++p)
      for (int i = 0; i < t.pairs; ++i) {
        const double a = static_cast<double>(p) * inv[i];
        t.cos[p * t.pairs + i] = static_cast<float>(std::cos(a));
        t.sin[p * t.pairs + i] = static_cast<float>(std::sin(a));
      }
    return t;
  }
};

}  // namespace xkv
