// GGUF parsing. Every read goes through Cursor, which checks the remaining length first; every
// count is bounded by the bytes left before anything is allocated for it.
#include "xkv/model/gguf.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

namespace xkv::model {

// ------------------------------------------------------------------ storage
class GgufStorage {
 public:
  GgufStorage() = default;
  GgufStorage(const GgufStorage&) = delete;
  GgufStorage& operator=(const GgufStorage&) = delete;
  ~GgufStorage() {
    if (mapping_ != nullptr) ::munmap(mapping_, size_);
  }

  static std::shared_ptr<GgufStorage> map_file(const std::string& path) {
    auto s = std::make_shared<GgufStorage>();
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    XKV_CHECK(fd >= 0, Io, "cannot open GGUF file '" << path << "': " << std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      XKV_CHECK(false, Io, "cannot stat GGUF file '" << path << "': " << std::strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      XKV_CHECK(false, Io, "GGUF path '" << path << "' is not a regular file");
    }
    s->size_ = static_cast<std::size_t>(st.st_size);
    if (s->size_ > 0) {
      void* m = ::mmap(nullptr, s->size_, PROT_READ, MAP_PRIVATE, fd, 0);
      const int err = errno;
      ::close(fd);
      XKV_CHECK(m != MAP_FAILED, Io, "cannot mmap GGUF file '" << path << "' (" << s->size_ << " bytes): "
                                                               << std::strerror(err));
      s->mapping_ = m;
      s->data_ = static_cast<const std::uint8_t*>(m);
    } else {
      ::close(fd);
    }
    return s;
  }

  static std::shared_ptr<GgufStorage> copy_of(std::span<const std::uint8_t> bytes) {
    auto s = std::make_shared<GgufStorage>();
    s->owned_.assign(bytes.begin(), bytes.end());
    s->data_ = s->owned_.data();
    s->size_ = s->owned_.size();
    return s;
  }

  [[nodiscard]] const std::uint8_t* data() const { return data_; }
  [[nodiscard]] std::size_t size() const { return size_; }

 private:
  void* mapping_ = nullptr;
  std::vector<std::uint8_t> owned_;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

namespace {

constexpr std::uint64_t kMaxKeyLength = 1u << 16;
constexpr std::uint64_t kMaxTensorNameLength = 64;  // GGUF spec (ggml's GGML_MAX_NAME)
constexpr std::uint32_t kMaxDims = 4;               // ggml's GGML_MAX_DIMS
constexpr std::uint64_t kMaxAlignment = 1u << 16;

/// Bounds-checked little-endian reader over the file bytes.
class Cursor {
 public:
  Cursor(const std::uint8_t* data, std::uint64_t size, const std::string& file) : data_(data), size_(size), file_(file) {}

  [[nodiscard]] std::uint64_t pos() const { return pos_; }
  [[nodiscard]] std::uint64_t remaining() const { return size_ - pos_; }

  void need(std::uint64_t bytes, const char* what) const {
    XKV_CHECK(bytes <= remaining(), Format,
              "GGUF '" << file_ << "': truncated at offset " << pos_ << ": " << what << " needs " << bytes
                       << " bytes, " << remaining() << " left in the file");
  }

  template <class T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string read_string(const char* what, std::uint64_t max_length) {
    const std::uint64_t at = pos_;
    const auto length = read<std::uint64_t>(what);
    XKV_CHECK(length <= max_length, Format,
              "GGUF '" << file_ << "': " << what << " at offset " << at << " has length " << length
                       << ", more than the limit " << max_length);
    need(length, what);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<std::size_t>(length));
    pos_ += length;
    return s;
  }

 private:
  const std::uint8_t* data_;
  std::uint64_t size_;
  std::uint64_t pos_ = 0;
  const std::string& file_;
};

bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t& out) { return !__builtin_mul_overflow(a, b, &out); }
bool checked_add(std::uint64_t a, std::uint64_t b, std::uint64_t& out) { return !__builtin_add_overflow(a, b, &out); }

/// Fewest bytes one element of `type` occupies in the file (strings: their 8-byte length).
std::uint64_t min_element_bytes(GgufValueType type) {
  switch (type) {
    case GgufValueType::UInt8:
    case GgufValueType::Int8:
    case GgufValueType::Bool: return 1;
    case GgufValueType::UInt16:
    case GgufValueType::Int16: return 2;
    case GgufValueType::UInt32:
    case GgufValueType::Int32:
    case GgufValueType::Float32: return 4;
    case GgufValueType::UInt64:
    case GgufValueType::Int64:
    case GgufValueType::Float64:
    case GgufValueType::String: return 8;
    case GgufValueType::Array: return 12;
  }
  return 1;
}

bool known_value_type(std::uint32_t t) { return t <= static_cast<std::uint32_t>(GgufValueType::Float64); }

GgufValue::Scalar read_scalar(Cursor& c, GgufValueType type, const std::string& file) {
  switch (type) {
    case GgufValueType::UInt8: return std::uint64_t{c.read<std::uint8_t>("uint8 value")};
    case GgufValueType::Int8: return std::int64_t{c.read<std::int8_t>("int8 value")};
    case GgufValueType::UInt16: return std::uint64_t{c.read<std::uint16_t>("uint16 value")};
    case GgufValueType::Int16: return std::int64_t{c.read<std::int16_t>("int16 value")};
    case GgufValueType::UInt32: return std::uint64_t{c.read<std::uint32_t>("uint32 value")};
    case GgufValueType::Int32: return std::int64_t{c.read<std::int32_t>("int32 value")};
    case GgufValueType::UInt64: return c.read<std::uint64_t>("uint64 value");
    case GgufValueType::Int64: return c.read<std::int64_t>("int64 value");
    case GgufValueType::Float32: return double{c.read<float>("float32 value")};
    case GgufValueType::Float64: return c.read<double>("float64 value");
    case GgufValueType::Bool: {
      const std::uint64_t at = c.pos();
      const auto b = c.read<std::uint8_t>("bool value");
      XKV_CHECK(b <= 1, Format, "GGUF '" << file << "': bool at offset " << at << " has byte value " << int(b));
      return b == 1;
    }
    default: break;
  }
  XKV_CHECK(false, Format, "GGUF '" << file << "': value type " << value_type_name(type) << " is not a scalar");
  return std::uint64_t{0};  // unreachable
}

GgufValue read_value(Cursor& c, GgufValueType type, const std::string& file, const std::string& key) {
  GgufValue v;
  v.type = type;
  v.offset = c.pos();
  if (type == GgufValueType::String) {
    v.data = c.read_string("string value", std::numeric_limits<std::uint64_t>::max());
    return v;
  }
  if (type != GgufValueType::Array) {
    v.data = read_scalar(c, type, file);
    return v;
  }
  const std::uint64_t type_at = c.pos();
  const auto raw_element_type = c.read<std::uint32_t>("array element type");
  XKV_CHECK(known_value_type(raw_element_type), Format,
            "GGUF '" << file << "': key '" << key << "' has an array of unknown element type " << raw_element_type
                     << " at offset " << type_at);
  const auto element_type = static_cast<GgufValueType>(raw_element_type);
  XKV_CHECK(element_type != GgufValueType::Array, Format,
            "GGUF '" << file << "': key '" << key << "' is a nested array (offset " << type_at
                     << "); nested arrays are not supported");
  const std::uint64_t count_at = c.pos();
  const auto count = c.read<std::uint64_t>("array length");
  std::uint64_t min_bytes = 0;
  XKV_CHECK(checked_mul(count, min_element_bytes(element_type), min_bytes) && min_bytes <= c.remaining(), Format,
            "GGUF '" << file << "': key '" << key << "' declares " << count << " elements of type "
                     << value_type_name(element_type) << " at offset " << count_at << ", more than the "
                     << c.remaining() << " bytes left in the file");
  GgufValue::Array arr;
  arr.element_type = element_type;
  if (element_type == GgufValueType::String) {
    arr.strings.reserve(static_cast<std::size_t>(count));
    for (std::uint64_t i = 0; i < count; ++i)
      arr.strings.push_back(c.read_string("array string element", std::numeric_limits<std::uint64_t>::max()));
  } else {
    arr.scalars.reserve(static_cast<std::size_t>(count));
    for (std::uint64_t i = 0; i < count; ++i) arr.scalars.push_back(read_scalar(c, element_type, file));
  }
  v.data = std::move(arr);
  return v;
}

std::string scalar_to_string(const GgufValue::Scalar& s) {
  std::ostringstream os;
  std::visit(
      [&](auto x) {
        if constexpr (std::is_same_v<decltype(x), bool>) os << (x ? "true" : "false");
        else os << x;
      },
      s);
  return os.str();
}

std::string quoted(const std::string& s, std::size_t max_chars = 80) {
  std::string out = "\"";
  for (std::size_t i = 0; i < s.size() && i < max_chars; ++i) {
    const unsigned char ch = static_cast<unsigned char>(s[i]);
    if (ch == '\n') out += "\\n";
    else if (ch == '"') out += "\\\"";
    else if (ch < 0x20) out += "?";
    else out += static_cast<char>(ch);
  }
  if (s.size() > max_chars) out += "...";
  return out + "\"";
}

}  // namespace

// ------------------------------------------------------------------ names and rendering
const char* value_type_name(GgufValueType type) {
  switch (type) {
    case GgufValueType::UInt8: return "uint8";
    case GgufValueType::Int8: return "int8";
    case GgufValueType::UInt16: return "uint16";
    case GgufValueType::Int16: return "int16";
    case GgufValueType::UInt32: return "uint32";
    case GgufValueType::Int32: return "int32";
    case GgufValueType::Float32: return "float32";
    case GgufValueType::Bool: return "bool";
    case GgufValueType::String: return "string";
    case GgufValueType::Array: return "array";
    case GgufValueType::UInt64: return "uint64";
    case GgufValueType::Int64: return "int64";
    case GgufValueType::Float64: return "float64";
  }
  return "unknown";
}

std::optional<TensorTypeInfo> tensor_type_info(std::uint32_t type) {
  switch (static_cast<TensorType>(type)) {
    case TensorType::F32: return TensorTypeInfo{"F32", 1, 4, true};
    case TensorType::F16: return TensorTypeInfo{"F16", 1, 2, true};
    case TensorType::BF16: return TensorTypeInfo{"BF16", 1, 2, true};
    case TensorType::Q4_0: return TensorTypeInfo{"Q4_0", 32, 18, true};
    case TensorType::Q4_1: return TensorTypeInfo{"Q4_1", 32, 20, true};
    case TensorType::Q5_0: return TensorTypeInfo{"Q5_0", 32, 22, false};
    case TensorType::Q5_1: return TensorTypeInfo{"Q5_1", 32, 24, false};
    case TensorType::Q8_0: return TensorTypeInfo{"Q8_0", 32, 34, true};
    case TensorType::Q8_1: return TensorTypeInfo{"Q8_1", 32, 36, false};
    case TensorType::Q2_K: return TensorTypeInfo{"Q2_K", 256, 84, false};
    case TensorType::Q3_K: return TensorTypeInfo{"Q3_K", 256, 110, false};
    case TensorType::Q4_K: return TensorTypeInfo{"Q4_K", 256, 144, true};
    case TensorType::Q5_K: return TensorTypeInfo{"Q5_K", 256, 176, false};
    case TensorType::Q6_K: return TensorTypeInfo{"Q6_K", 256, 210, true};
    case TensorType::Q8_K: return TensorTypeInfo{"Q8_K", 256, 292, false};
    case TensorType::I8: return TensorTypeInfo{"I8", 1, 1, false};
    case TensorType::I16: return TensorTypeInfo{"I16", 1, 2, false};
    case TensorType::I32: return TensorTypeInfo{"I32", 1, 4, false};
    case TensorType::I64: return TensorTypeInfo{"I64", 1, 8, false};
    case TensorType::F64: return TensorTypeInfo{"F64", 1, 8, false};
  }
  return std::nullopt;
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufValueType::UInt8:
    case GgufValueType::Int8:
    case GgufValueType::UInt16:
    case GgufValueType::Int16:
    case GgufValueType::UInt32:
    case GgufValueType::Int32:
    case GgufValueType::UInt64:
    case GgufValueType::Int64: return true;
    default: return false;
  }
}

std::string GgufValue::to_string(std::size_t max_elements) const {
  if (const auto* s = std::get_if<std::string>(&data)) return quoted(*s);
  if (const auto* sc = std::get_if<Scalar>(&data)) return scalar_to_string(*sc);
  const auto& arr = std::get<Array>(data);
  std::ostringstream os;
  os << "[" << value_type_name(arr.element_type) << " x " << arr.size() << "] [";
  for (std::size_t i = 0; i < arr.size() && i < max_elements; ++i) {
    if (i) os << ", ";
    os << (arr.element_type == GgufValueType::String ? quoted(arr.strings[i], 24) : scalar_to_string(arr.scalars[i]));
  }
  if (arr.size() > max_elements) os << ", ...";
  os << "]";
  return os.str();
}

std::string TensorInfo::shape_string() const {
  std::ostringstream os;
  os << "[";
  for (std::size_t i = 0; i < dims.size(); ++i) os << (i ? ", " : "") << dims[i];
  os << "]";
  return os.str();
}

// ------------------------------------------------------------------ parsing
GgufFile GgufFile::open(const std::string& path) {
  GgufFile f;
  f.name_ = path;
  f.storage_ = GgufStorage::map_file(path);
  f.parse_all();
  return f;
}

GgufFile GgufFile::parse(std::span<const std::uint8_t> bytes, std::string name) {
  GgufFile f;
  f.name_ = std::move(name);
  f.storage_ = GgufStorage::copy_of(bytes);
  f.parse_all();
  return f;
}

std::uint64_t GgufFile::file_size() const { return storage_ ? storage_->size() : 0; }

void GgufFile::parse_all() {
  const std::string& file = name_;
  Cursor c(storage_->data(), storage_->size(), file);

  c.need(4, "magic");
  const auto magic = c.read<std::uint32_t>("magic");
  XKV_CHECK(std::memcmp(&magic, "GGUF", 4) == 0, Format,
            "GGUF '" << file << "': bad magic at offset 0 (expected \"GGUF\"); not a GGUF file");
  const auto version = c.read<std::uint32_t>("version");
  XKV_CHECK(version != 0x03000000u && version != 0x02000000u, Format,
            "GGUF '" << file << "': version field at offset 4 reads " << version
                     << ", a big-endian file; only little-endian GGUF is supported");
  XKV_CHECK(version == 2 || version == 3, Format,
            "GGUF '" << file << "': unsupported version " << version << " at offset 4 (supported: 2, 3)");
  version_ = version;

  const std::uint64_t tensor_count_at = c.pos();
  const auto tensor_count = c.read<std::uint64_t>("tensor count");
  const std::uint64_t kv_count_at = c.pos();
  const auto kv_count = c.read<std::uint64_t>("metadata count");
  // Smallest possible entries: a key-value is 8 (key length) + 1 (key) + 4 (type) + 1 (value);
  // a tensor info is 8 (name length) + 1 (name) + 4 (n_dims) + 8 (one dim) + 4 (type) + 8 (offset).
  XKV_CHECK(kv_count <= c.remaining() / 14, Format,
            "GGUF '" << file << "': metadata count " << kv_count << " at offset " << kv_count_at
                     << " cannot fit in the " << c.remaining() << " bytes left in the file");
  XKV_CHECK(tensor_count <= c.remaining() / 33, Format,
            "GGUF '" << file << "': tensor count " << tensor_count << " at offset " << tensor_count_at
                     << " cannot fit in the " << c.remaining() << " bytes left in the file");

  metadata_.reserve(static_cast<std::size_t>(kv_count));
  for (std::uint64_t i = 0; i < kv_count; ++i) {
    const std::uint64_t key_at = c.pos();
    std::string key = c.read_string("metadata key", kMaxKeyLength);
    XKV_CHECK(!key.empty(), Format, "GGUF '" << file << "': metadata entry " << i << " at offset " << key_at
                                             << " has an empty key");
    XKV_CHECK(!metadata_index_.contains(key), Format,
              "GGUF '" << file << "': duplicate metadata key " << quoted(key) << " at offset " << key_at);
    const std::uint64_t type_at = c.pos();
    const auto raw_type = c.read<std::uint32_t>("metadata value type");
    XKV_CHECK(known_value_type(raw_type), Format,
              "GGUF '" << file << "': key " << quoted(key) << " has unknown value type " << raw_type << " at offset "
                       << type_at);
    GgufValue value = read_value(c, static_cast<GgufValueType>(raw_type), file, key);
    metadata_index_.emplace(key, metadata_.size());
    metadata_.emplace_back(std::move(key), std::move(value));
  }

  if (const GgufValue* a = find("general.alignment")) {
    XKV_CHECK(a->type == GgufValueType::UInt32, Format,
              "GGUF '" << file << "': general.alignment at offset " << a->offset << " must be uint32, is "
                       << value_type_name(a->type));
    const auto align = std::get<std::uint64_t>(std::get<GgufValue::Scalar>(a->data));
    XKV_CHECK(align >= 1 && align <= kMaxAlignment && (align & (align - 1)) == 0, Format,
              "GGUF '" << file << "': general.alignment " << align << " at offset " << a->offset
                       << " must be a power of two in [1, " << kMaxAlignment << "]");
    alignment_ = align;
  }

  tensors_.reserve(static_cast<std::size_t>(tensor_count));
  for (std::uint64_t i = 0; i < tensor_count; ++i) {
    TensorInfo t;
    t.info_offset = c.pos();
    t.name = c.read_string("tensor name", kMaxTensorNameLength);
    XKV_CHECK(!t.name.empty(), Format, "GGUF '" << file << "': tensor " << i << " at offset " << t.info_offset
                                                << " has an empty name");
    XKV_CHECK(!tensor_index_.contains(t.name), Format,
              "GGUF '" << file << "': duplicate tensor name " << quoted(t.name) << " at offset " << t.info_offset);
    const std::uint64_t dims_at = c.pos();
    const auto n_dims = c.read<std::uint32_t>("tensor dimension count");
    XKV_CHECK(n_dims >= 1 && n_dims <= kMaxDims, Format,
              "GGUF '" << file << "': tensor " << quoted(t.name) << " has " << n_dims << " dimensions at offset "
                       << dims_at << " (allowed: 1.." << kMaxDims << ")");
    std::uint64_t elements = 1;
    for (std::uint32_t d = 0; d < n_dims; ++d) {
      const std::uint64_t dim_at = c.pos();
      const auto dim = c.read<std::uint64_t>("tensor dimension");
      XKV_CHECK(dim >= 1 && dim <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()), Format,
                "GGUF '" << file << "': tensor " << quoted(t.name) << " dimension " << d << " = " << dim
                         << " at offset " << dim_at << " is out of range");
      XKV_CHECK(checked_mul(elements, dim, elements) &&
                    elements <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()),
                Format,
                "GGUF '" << file << "': tensor " << quoted(t.name) << " element count overflows at dimension " << d
                         << " (offset " << dim_at << ")");
      t.dims.push_back(static_cast<std::int64_t>(dim));
    }
    t.elements = static_cast<std::int64_t>(elements);
    const std::uint64_t type_at = c.pos();
    const auto raw_type = c.read<std::uint32_t>("tensor type");
    const auto info = tensor_type_info(raw_type);
    XKV_CHECK(info.has_value(), Format,
              "GGUF '" << file << "': tensor " << quoted(t.name) << " has unknown type " << raw_type << " at offset "
                       << type_at);
    t.type = static_cast<TensorType>(raw_type);
    XKV_CHECK(t.dims[0] % info->block_elements == 0, Format,
              "GGUF '" << file << "': tensor " << quoted(t.name) << " of type " << info->name << " has row length "
                       << t.dims[0] << ", not a multiple of its block size " << info->block_elements);
    XKV_CHECK(checked_mul(elements / info->block_elements, info->block_bytes, t.byte_size), Format,
              "GGUF '" << file << "': tensor " << quoted(t.name) << " byte size overflows (" << elements
                       << " elements of " << info->name << ")");
    const std::uint64_t offset_at = c.pos();
    t.offset = c.read<std::uint64_t>("tensor offset");
    XKV_CHECK(t.offset % alignment_ == 0, Format,
              "GGUF '" << file << "': tensor " << quoted(t.name) << " offset " << t.offset << " at offset "
                       << offset_at << " is not a multiple of the alignment " << alignment_);
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment.
  std::uint64_t data_start = 0;
  XKV_CHECK(checked_add(c.pos(), alignment_ - 1, data_start), Format,
            "GGUF '" << file << "': data section offset overflows");
  data_start -= data_start % alignment_;
  data_offset_ = data_start;
  if (tensors_.empty()) return;
  XKV_CHECK(data_start <= file_size(), Format,
            "GGUF '" << file << "': data section would start at offset " << data_start << ", past the end of the "
                     << file_size() << "-byte file");
  const std::uint64_t data_size = file_size() - data_start;
  for (auto& t : tensors_) {
    std::uint64_t end = 0;
    XKV_CHECK(checked_add(t.offset, t.byte_size, end) && end <= data_size, Format,
              "GGUF '" << file << "': tensor " << quoted(t.name) << " (entry at offset " << t.info_offset
                       << ") spans data bytes [" << t.offset << ", +" << t.byte_size << "), past the "
                       << data_size << "-byte data section");
    t.file_offset = data_start + t.offset;
  }
  // Tensors must not overlap: a hostile table could alias one tensor's bytes as another's.
  std::vector<const TensorInfo*> by_offset;
  for (const auto& t : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
  for (std::size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo& prev = *by_offset[i - 1];
    const TensorInfo& next = *by_offset[i];
    XKV_CHECK(prev.offset + prev.byte_size <= next.offset, Format,
              "GGUF '" << file << "': tensors " << quoted(prev.name) << " and " << quoted(next.name)
                       << " overlap in the data section (offsets " << prev.offset << "+" << prev.byte_size
                       << " and " << next.offset << ")");
  }
}

// ------------------------------------------------------------------ metadata access
const GgufValue* GgufFile::find(std::string_view key) const {
  const auto it = metadata_index_.find(key);
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

const GgufValue& GgufFile::get(std::string_view key) const {
  const GgufValue* v = find(key);
  XKV_CHECK(v != nullptr, Format, "GGUF '" << name_ << "': required metadata key '" << key << "' is missing");
  return *v;
}

std::string GgufFile::get_string(std::string_view key) const {
  const GgufValue& v = get(key);
  XKV_CHECK(v.is_string(), Format, "GGUF '" << name_ << "': metadata key '" << key << "' at offset " << v.offset
                                            << " must be a string, is " << value_type_name(v.type));
  return std::get<std::string>(v.data);
}

std::int64_t GgufFile::get_int(std::string_view key, std::int64_t min, std::int64_t max) const {
  const GgufValue& v = get(key);
  XKV_CHECK(v.is_integer(), Format, "GGUF '" << name_ << "': metadata key '" << key << "' at offset " << v.offset
                                             << " must be an integer, is " << value_type_name(v.type));
  const auto& s = std::get<GgufValue::Scalar>(v.data);
  bool in_range = false;
  std::int64_t out = 0;
  if (const auto* u = std::get_if<std::uint64_t>(&s)) {
    in_range = *u <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
    out = static_cast<std::int64_t>(*u);
  } else {
    in_range = true;
    out = std::get<std::int64_t>(s);
  }
  XKV_CHECK(in_range && out >= min && out <= max, Format,
            "GGUF '" << name_ << "': metadata key '" << key << "' = " << scalar_to_string(s) << " at offset "
                     << v.offset << " is outside [" << min << ", " << max << "]");
  return out;
}

std::int64_t GgufFile::get_int_or(std::string_view key, std::int64_t fallback, std::int64_t min,
                                  std::int64_t max) const {
  return contains(key) ? get_int(key, min, max) : fallback;
}

double GgufFile::get_float(std::string_view key) const {
  const GgufValue& v = get(key);
  XKV_CHECK(v.is_float() || v.is_integer(), Format,
            "GGUF '" << name_ << "': metadata key '" << key << "' at offset " << v.offset << " must be a number, is "
                     << value_type_name(v.type));
  const auto& s = std::get<GgufValue::Scalar>(v.data);
  double out = 0;
  if (const auto* d = std::get_if<double>(&s)) out = *d;
  else if (const auto* u = std::get_if<std::uint64_t>(&s)) out = static_cast<double>(*u);
  else out = static_cast<double>(std::get<std::int64_t>(s));
  XKV_CHECK(std::isfinite(out), Format,
            "GGUF '" << name_ << "': metadata key '" << key << "' at offset " << v.offset << " is not finite");
  return out;
}

double GgufFile::get_float_or(std::string_view key, double fallback) const {
  return contains(key) ? get_float(key) : fallback;
}

bool GgufFile::get_bool_or(std::string_view key, bool fallback) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return fallback;
  XKV_CHECK(v->type == GgufValueType::Bool, Format,
            "GGUF '" << name_ << "': metadata key '" << key << "' at offset " << v->offset << " must be a bool, is "
                     << value_type_name(v->type));
  return std::get<bool>(std::get<GgufValue::Scalar>(v->data));
}

const GgufValue::Array& GgufFile::get_array(std::string_view key, GgufValueType element_type) const {
  const GgufValue& v = get(key);
  XKV_CHECK(v.is_array(), Format, "GGUF '" << name_ << "': metadata key '" << key << "' at offset " << v.offset
                                           << " must be an array, is " << value_type_name(v.type));
  const auto& arr = std::get<GgufValue::Array>(v.data);
  XKV_CHECK(arr.element_type == element_type, Format,
            "GGUF '" << name_ << "': metadata key '" << key << "' at offset " << v.offset << " must be an array of "
                     << value_type_name(element_type) << ", has elements of type " << value_type_name(arr.element_type));
  return arr;
}

// ------------------------------------------------------------------ tensors
const TensorInfo* GgufFile::find_tensor(std::string_view name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const std::uint8_t> GgufFile::tensor_bytes(const TensorInfo& tensor) const {
  // The table was validated at parse time; re-check in case `tensor` did not come from this file.
  XKV_REQUIRE(tensor.file_offset <= file_size() && tensor.byte_size <= file_size() - tensor.file_offset,
              "tensor '" << tensor.name << "' does not lie inside GGUF '" << name_ << "'");
  return {storage_->data() + tensor.file_offset, static_cast<std::size_t>(tensor.byte_size)};
}

std::vector<float> GgufFile::dequantize(const TensorInfo& tensor) const {
  std::vector<float> out(static_cast<std::size_t>(tensor.elements));
  dequantize_into(tensor, out);
  return out;
}

void GgufFile::dequantize_into(const TensorInfo& tensor, std::span<float> out) const {
  XKV_REQUIRE(out.size() == static_cast<std::size_t>(tensor.elements),
              "dequantize_into: output holds " << out.size() << " floats, tensor '" << tensor.name << "' has "
                                               << tensor.elements);
  const auto info = tensor_type_info(static_cast<std::uint32_t>(tensor.type));
  XKV_CHECK(info && info->dequantizable, Format,
            "GGUF '" << name_ << "': tensor '" << tensor.name << "' has type "
                     << (info ? info->name : "unknown") << ", which cannot be dequantised "
                     << "(supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)");
  model::dequantize(tensor.type, tensor_bytes(tensor), out);
}

}  // namespace xkv::model
