// Minimal CSV output: a header, then rows flushed as they are written (a long run that is
// stopped keeps what it finished).
#pragma once

#include <fstream>
#include <initializer_list>
#include <string>
#include <variant>
#include <vector>

namespace xkv::eval {

using CsvCell = std::variant<std::string, double, long long>;

class CsvWriter {
 public:
  /// Creates (truncates) `path` and writes the header. Throws xkv::Error(Io) if it cannot.
  CsvWriter(const std::string& path, std::vector<std::string> header);
  /// One row; the cell count must match the header. Strings are quoted when needed.
  void row(const std::vector<CsvCell>& cells);
  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::size_t columns_ = 0;
  std::ofstream out_;
};

/// Formats a double with `digits` significant digits (no trailing noise in the CSVs).
std::string format_number(double value, int digits = 6);

}  // namespace xkv::eval
