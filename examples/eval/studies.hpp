// The studies xkv-eval runs on a real model, each writing CSVs into an output directory and
// returning what the summary tables need.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "methods.hpp"
#include "xkv/model/llama.hpp"
#include "xkv/model/tokenizer.hpp"

namespace xkv::eval {

/// "[xkv-eval +12.3s] message" lines on stderr.
class Progress {
 public:
  Progress() : start_(std::chrono::steady_clock::now()) {}
  void line(const std::string& message) const;
  [[nodiscard]] double elapsed() const;

 private:
  std::chrono::steady_clock::time_point start_;
};

// ------------------------------------------------------------------ spectrum and similarity
struct SpectrumSummary {
  std::string stream;  ///< "keys" (pre-RoPE) or "values"
  int group_size = 0;
  double mean_rank_fraction[3] = {0, 0, 0};  ///< 90/95/99%: mean over groups of rank / (G * width)
  double mean_rank_per_layer[3] = {0, 0, 0}; ///< mean over groups of rank / G
};

/// Rank for 90/95/99% energy and full singular-value spectra of every consecutive group of
/// each size, keys and values. Writes spectrum_ranks.csv and spectrum_singular_values.csv.
std::vector<SpectrumSummary> run_spectrum_study(const model::PlainKvCache& cache, const std::vector<int>& group_sizes,
                                                const std::string& out_dir, const Progress& progress);

struct SimilaritySummary {
  std::string stream;
  double mean_adjacent_cka = 0, mean_adjacent_cosine = 0;  ///< over pairs (l, l+1)
  double mean_all_cka = 0, mean_all_cosine = 0;            ///< over all pairs l < m
};

/// Linear CKA and mean token-wise cosine similarity of every pair of layers, keys (pre-RoPE)
/// and values. Writes similarity.csv.
std::vector<SimilaritySummary> run_similarity_study(const model::PlainKvCache& cache, const std::string& out_dir,
                                                    const Progress& progress);

// ------------------------------------------------------------------ accuracy vs compression
struct AccuracyOptions {
  std::int64_t prefix_tokens = 2048;  ///< N: compressed
  std::int64_t scored_tokens = 512;   ///< M: scored after the compressed prefix
  int windows = 1;                    ///< disjoint windows of N + M + 1 tokens from the text
  std::string csv_name = "accuracy";  ///< writes <csv_name>.csv and <csv_name>_attention_error.csv
};

struct AccuracyRow {
  Method method;
  double prefix_ratio = 1, stream_ratio = 1;
  int key_rank = 0, value_rank = 0;
  double retained_fraction = 0;
  double nll = 0, perplexity = 0, perplexity_increase_pct = 0;
  double top1_agreement = 0;  ///< fraction of scored positions where argmax equals the baseline's
  double mean_attention_error = 0;  ///< relative attention-output error, mean over layers
  double compress_seconds = 0;
};

struct AccuracyResults {
  double baseline_nll = 0, baseline_perplexity = 0;
  double mean_first_token_attention = 0;  ///< uncompressed: mean softmax weight on token 0
  std::int64_t scored_positions = 0;
  std::vector<AccuracyRow> rows;
};

/// Perplexity of the scored tokens when the model decodes from each method's compressed prefix,
/// top-1 agreement with the uncompressed run, and (when the forward can report its queries)
/// per-layer attention-output error. Writes the two CSVs named by options.csv_name.
AccuracyResults run_accuracy_study(const model::LlamaModel& model, const std::vector<std::int32_t>& text_tokens,
                                   const AccuracyOptions& options, const std::vector<Method>& methods,
                                   const std::string& out_dir, const Progress& progress);

/// Mean NLL (nats) of targets[i] under logits row i, in fp64.
double mean_nll_of_logits(const model::RowMatrix& logits, std::span<const std::int32_t> targets);

// ------------------------------------------------------------------ passkey
struct PasskeyOptions {
  std::vector<std::int64_t> lengths = {1024, 2048, 4096};
  int trials = 30;
  std::uint64_t seed = 1234;
  int max_new_tokens = 7;
  /// false: the context alone is prefilled and compressed, the question is read from the
  /// compressed cache (a follow-up question on a stored context). true: the whole prompt,
  /// question included, is prefilled exactly and then compressed, as an engine does and as the
  /// paper evaluates; the first answer token comes from the exact prefill.
  bool question_in_prefill = false;
};

struct PasskeySummaryRow {
  std::int64_t length = 0;
  std::string method;  ///< label; "uncompressed" for the baseline
  double mean_ratio = 1;
  int trials = 0, correct = 0;
};

/// Passkey retrieval per length and method: the context (filler with the key) is prefilled once
/// per trial, uncompressed; the baseline then reads the plain cache, every method its own
/// compressed copy of it; the question and the answer tokens are decoded from that cache.
/// Trials run in rounds (trial t at every length) so a stopped run is balanced. Writes
/// passkey_trials.csv and passkey_summary.csv.
std::vector<PasskeySummaryRow> run_passkey_study(const model::LlamaModel& model, const model::Tokenizer& tokenizer,
                                                 const PasskeyOptions& options, const std::vector<Method>& methods,
                                                 const std::string& out_dir, const Progress& progress);

}  // namespace xkv::eval
