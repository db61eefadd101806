// GGUF (v2/v3) reader: memory-mapped, metadata of every value type, tensor table, dequantisation.
// The file is treated as hostile: every count, length, dimension, size and offset is checked for
// overflow and against the file size before it is used; errors are xkv::Error(Format) naming
// what is wrong and the byte offset where it was found.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "xkv/error.hpp"

namespace xkv::model {

/// Type tags of GGUF metadata values (the file format's numbering).
enum class GgufValueType : std::uint32_t {
  UInt8 = 0,
  Int8 = 1,
  UInt16 = 2,
  Int16 = 3,
  UInt32 = 4,
  Int32 = 5,
  Float32 = 6,
  Bool = 7,
  String = 8,
  Array = 9,
  UInt64 = 10,
  Int64 = 11,
  Float64 = 12,
};
[[nodiscard]] const char* value_type_name(GgufValueType type);

/// ggml tensor types (the file format's numbering). Sizes are known for all listed types;
/// `dequantize` supports F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K and Q6_K.
enum class TensorType : std::uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  BF16 = 30,
};

/// Storage layout of a tensor type: `block_bytes` bytes hold `block_elements` consecutive elements.
struct TensorTypeInfo {
  const char* name = nullptr;
  std::int64_t block_elements = 0;
  std::int64_t block_bytes = 0;
  bool dequantizable = false;
};
/// Layout of `type`, or std::nullopt for a type id this reader does not know.
[[nodiscard]] std::optional<TensorTypeInfo> tensor_type_info(std::uint32_t type);

/// One metadata value. Arrays hold scalars or strings, never arrays (nested arrays are rejected).
class GgufValue {
 public:
  using Scalar = std::variant<std::uint64_t, std::int64_t, double, bool>;
  struct Array {
    GgufValueType element_type = GgufValueType::UInt8;
    std::vector<Scalar> scalars;       ///< numeric / bool elements
    std::vector<std::string> strings;  ///< string elements
    [[nodiscard]] std::size_t size() const { return element_type == GgufValueType::String ? strings.size() : scalars.size(); }
  };

  GgufValueType type = GgufValueType::UInt8;
  std::uint64_t offset = 0;  ///< byte offset of the value in the file (for messages)
  std::variant<Scalar, std::string, Array> data;

  [[nodiscard]] bool is_string() const { return type == GgufValueType::String; }
  [[nodiscard]] bool is_array() const { return type == GgufValueType::Array; }
  [[nodiscard]] bool is_integer() const;
  [[nodiscard]] bool is_float() const { return type == GgufValueType::Float32 || type == GgufValueType::Float64; }
  /// Human-readable rendering (arrays abbreviated to `max_elements`).
  [[nodiscard]] std::string to_string(std::size_t max_elements = 8) const;
};

/// One entry of the tensor table. `dims[0]` is the fastest-varying (ggml's ne[0]): a weight of
/// an `out x in` linear layer has dims {in, out} and is stored as `out` rows of `in` elements.
struct TensorInfo {
  std::string name;
  std::vector<std::int64_t> dims;
  TensorType type = TensorType::F32;
  std::uint64_t offset = 0;       ///< from the start of the data section, as stored
  std::uint64_t file_offset = 0;  ///< absolute offset in the file
  std::uint64_t byte_size = 0;
  std::int64_t elements = 0;
  std::uint64_t info_offset = 0;  ///< where the tensor's entry starts in the file (for messages)

  [[nodiscard]] std::int64_t rows() const { return elements / dims[0]; }
  [[nodiscard]] std::string shape_string() const;
};

/// Read-only bytes of an opened GGUF file (an mmap, or an owned copy for in-memory parsing).
class GgufStorage;

/// A parsed GGUF file. Cheap to move; tensor data stays in the mapping until dequantised.
class GgufFile {
 public:
  /// Maps and parses `path`. Throws xkv::Error(Io) if it cannot be opened, (Format) if malformed.
  static GgufFile open(const std::string& path);
  /// Parses a copy of `bytes` (fuzzing, tests).
  static GgufFile parse(std::span<const std::uint8_t> bytes, std::string name = "<memory>");

  [[nodiscard]] const std::string& name() const { return name_; }
  [[nodiscard]] std::uint32_t version() const { return version_; }
  [[nodiscard]] std::uint64_t alignment() const { return alignment_; }
  [[nodiscard]] std::uint64_t file_size() const;
  [[nodiscard]] std::uint64_t data_offset() const { return data_offset_; }

  /// Metadata in file order (keys are unique).
  [[nodiscard]] const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  [[nodiscard]] const GgufValue* find(std::string_view key) const;
  [[nodiscard]] bool contains(std::string_view key) const { return find(key) != nullptr; }

  /// Typed accessors: throw xkv::Error(Format) naming the key when it is missing or has another type.
  [[nodiscard]] const GgufValue& get(std::string_view key) const;
  [[nodiscard]] std::string get_string(std::string_view key) const;
  /// Any integer type whose value fits in [min, max].
  [[nodiscard]] std::int64_t get_int(std::string_view key, std::int64_t min, std::int64_t max) const;
  [[nodiscard]] std::int64_t get_int_or(std::string_view key, std::int64_t fallback, std::int64_t min,
                                        std::int64_t max) const;
  /// Float32/Float64 (or an integer), finite.
  [[nodiscard]] double get_float(std::string_view key) const;
  [[nodiscard]] double get_float_or(std::string_view key, double fallback) const;
  [[nodiscard]] bool get_bool_or(std::string_view key, bool fallback) const;
  [[nodiscard]] const GgufValue::Array& get_array(std::string_view key, GgufValueType element_type) const;

  [[nodiscard]] const std::vector<TensorInfo>& tensors() const { return tensors_; }
  [[nodiscard]] const TensorInfo* find_tensor(std::string_view name) const;
  /// The tensor's bytes inside the mapping.
  [[nodiscard]] std::span<const std::uint8_t> tensor_bytes(const TensorInfo& tensor) const;
  /// Dequantises a whole tensor to fp32, in storage order (dims[0] fastest).
  [[nodiscard]] std::vector<float> dequantize(const TensorInfo& tensor) const;
  void dequantize_into(const TensorInfo& tensor, std::span<float> out) const;

 private:
  GgufFile() = default;
  void parse_all();

  std::shared_ptr<const GgufStorage> storage_;
  std::string name_;
  std::uint32_t version_ = 0;
  std::uint64_t alignment_ = 32;
  std::uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::map<std::string, std::size_t, std::less<>> metadata_index_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t, std::less<>> tensor_index_;
};

/// Dequantises `elements` values of `type` from `bytes` (which must hold exactly the blocks they
/// need) into `out`. Throws xkv::Error for unsupported types and size mismatches.
void dequantize(TensorType type, std::span<const std::uint8_t> bytes, std::span<float> out);

}  // namespace xkv::model
