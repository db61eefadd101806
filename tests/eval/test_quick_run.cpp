// Runs `xkv-eval --quick` on the real model: the full-rank compressed runs must reproduce the
// uncompressed one and the tables must be written. Skipped only when the model file is absent.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> split(const std::string& line) {  // the labels hold no commas
  std::vector<std::string> out;
  std::stringstream ss(line);
  std::string cell;
  while (std::getline(ss, cell, ',')) out.push_back(cell);
  return out;
}

TEST(XkvEvalQuick, FullRankMatchesBaselineAndTablesAreWritten) {
  const char* path = std::getenv("XKV_MODEL_PATH");
  if (path == nullptr || !std::filesystem::exists(path)) GTEST_SKIP() << "XKV_MODEL_PATH is not set to a model file";
  const std::filesystem::path out = std::filesystem::temp_directory_path() / "xkv-eval-quick-test";
  std::filesystem::remove_all(out);
  const std::string command = std::string("\"") + XKV_EVAL_BINARY + "\" --quick --model \"" + path + "\" --out \"" +
                              out.string() + "\" 2> \"" + (out.string() + ".log") + "\"";
  const int status = std::system(command.c_str());
  const std::string log = slurp(out.string() + ".log");
  ASSERT_EQ(status, 0) << command << "\n" << log;

  // The tool checks full rank itself (exit status); check the evidence too.
  EXPECT_NE(log.find("check passed: full-rank xKV-1"), std::string::npos) << log;
  EXPECT_NE(log.find("check passed: full-rank xKV-2"), std::string::npos) << log;
  const std::string accuracy = slurp(out / "accuracy.csv");
  std::istringstream lines(accuracy);
  std::string line;
  int full_rank_rows = 0, rows = 0;
  std::getline(lines, line);  // header
  const std::vector<std::string> header = split(line);
  const auto column = std::find(header.begin(), header.end(), "top1_agreement") - header.begin();
  ASSERT_LT(column, std::ptrdiff_t(header.size())) << line;
  const auto attention = std::find(header.begin(), header.end(), "mean_attention_error") - header.begin();
  ASSERT_LT(attention, std::ptrdiff_t(header.size())) << line;
  while (std::getline(lines, line)) {
    ++rows;
    const std::vector<std::string> cells = split(line);
    if (line.rfind("full-rank", 0) == 0) {
      ++full_rank_rows;
      EXPECT_EQ(cells.at(column), "1") << line;  // every scored position agrees
      // Full rank: each layer's attention output equals the plain cache's up to fp32 rounding.
      EXPECT_LT(std::stod(cells.at(attention)), 1e-3) << line;
    } else if (line.find("@") != std::string::npos) {
      // Compressed: a real, finite error (a metric stuck at zero could not fail).
      const double e = std::stod(cells.at(attention));
      EXPECT_TRUE(e > 1e-3 && e < 10) << line;
    }
  }
  EXPECT_EQ(full_rank_rows, 2);
  EXPECT_GE(rows, 7);
  const std::string summary = slurp(out / "summary.md");
  for (const char* section : {"## Rank for an energy fraction", "## Layer similarity", "## Accuracy vs compression",
                              "## Passkey retrieval", "| xKV-4 @4x |"})
    EXPECT_NE(summary.find(section), std::string::npos) << section << "\n" << summary;
  for (const char* csv : {"spectrum_ranks.csv", "spectrum_singular_values.csv", "similarity.csv", "passkey_trials.csv",
                          "passkey_summary.csv"})
    EXPECT_TRUE(std::filesystem::file_size(out / csv) > 0) << csv;
}

}  // namespace
