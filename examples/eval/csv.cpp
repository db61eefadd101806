#include "csv.hpp"

#include <cmath>
#include <cstdio>

#include "xkv/error.hpp"

namespace xkv::eval {

CsvWriter::CsvWriter(const std::string& path, std::vector<std::string> header)
    : path_(path), columns_(header.size()), out_(path, std::ios::trunc) {
  XKV_CHECK(out_.good(), Io, "CsvWriter: cannot create '" << path << "'");
  std::vector<CsvCell> cells(header.begin(), header.end());
  row(cells);
}

namespace {
std::string quote(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) {
    if (c == '"') q += '"';
    q += c;
  }
  return q + "\"";
}
}  // namespace

std::string format_number(double value, int digits) {
  if (std::isnan(value)) return "nan";
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*g", digits, value);
  return buffer;
}

void CsvWriter::row(const std::vector<CsvCell>& cells) {
  XKV_REQUIRE(cells.size() == columns_, "CsvWriter '" << path_ << "': row of " << cells.size() << " cells, header has "
                                                      << columns_);
  for (std::size_t i = 0; i < cells.size(); ++i) {
    if (i) out_ << ',';
    if (const auto* s = std::get_if<std::string>(&cells[i])) out_ << quote(*s);
    else if (const auto* d = std::get_if<double>(&cells[i])) out_ << format_number(*d, 7);
    else out_ << std::get<long long>(cells[i]);
  }
  out_ << '\n';
  out_.flush();
  XKV_CHECK(out_.good(), Io, "CsvWriter: writing '" << path_ << "' failed");
}

}  // namespace xkv::eval
