#include "studies.hpp"

#include <cmath>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "attention_error.hpp"
#include "csv.hpp"
#include "linear_algebra.hpp"
#include "xkv/error.hpp"

namespace xkv::eval {

void Progress::line(const std::string& message) const {
  std::fprintf(stderr, "[xkv-eval +%.1fs] %s\n", elapsed(), message.c_str());
  std::fflush(stderr);
}

double Progress::elapsed() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

namespace {
std::vector<Eigen::MatrixXf> layer_matrices(const model::PlainKvCache& cache, bool keys) {
  std::vector<Eigen::MatrixXf> out;
  for (int l = 0; l < cache.shape().num_layers; ++l)
    out.push_back(to_matrix(keys ? cache.pre_rope_keys(l) : cache.values(l)));
  return out;
}
}  // namespace

// ------------------------------------------------------------------ spectrum
std::vector<SpectrumSummary> run_spectrum_study(const model::PlainKvCache& cache, const std::vector<int>& group_sizes,
                                                const std::string& out_dir, const Progress& progress) {
  const int layers = cache.shape().num_layers;
  CsvWriter ranks(out_dir + "/spectrum_ranks.csv",
                  {"stream", "group_size", "group", "first_layer", "layers", "tokens", "width", "rank90", "rank95",
                   "rank99", "rank90_fraction", "rank95_fraction", "rank99_fraction"});
  CsvWriter values(out_dir + "/spectrum_singular_values.csv",
                   {"stream", "group_size", "group", "index", "singular_value", "cumulative_energy"});
  const double fractions[3] = {0.90, 0.95, 0.99};
  std::vector<SpectrumSummary> summary;
  for (const bool keys : {true, false}) {
    const std::string stream = keys ? "keys" : "values";
    const std::vector<Eigen::MatrixXf> mats = layer_matrices(cache, keys);
    for (const int g : group_sizes) {
      SpectrumSummary s;
      s.stream = stream;
      s.group_size = g;
      int groups = 0;
      for (int first = 0; first < layers; first += g) {
        const int members = std::min(g, layers - first);
        const Eigen::MatrixXf x = concat_columns(std::span<const Eigen::MatrixXf>(mats.data() + first, members));
        const Spectrum sp = spectrum(x);
        std::vector<CsvCell> row = {stream, (long long)g, (long long)groups, (long long)first, (long long)members,
                                    (long long)x.rows(), (long long)x.cols()};
        int r[3];
        for (int k = 0; k < 3; ++k) row.push_back((long long)(r[k] = energy_rank(sp, fractions[k])));
        for (int k = 0; k < 3; ++k) {
          // Normalised by what the group could need at most: its width G*D (the paper's rank ratio).
          const double fraction = double(r[k]) / double(x.cols());
          row.push_back(fraction);
          s.mean_rank_fraction[k] += fraction;
          s.mean_rank_per_layer[k] += double(r[k]) / members;
        }
        ranks.row(row);
        double cumulative = 0;
        for (std::size_t i = 0; i < sp.singular_values.size(); ++i) {
          cumulative += sp.singular_values[i] * sp.singular_values[i];
          values.row({stream, (long long)g, (long long)groups, (long long)i, sp.singular_values[i],
                      cumulative / sp.total_energy});
        }
        ++groups;
      }
      for (int k = 0; k < 3; ++k) {
        s.mean_rank_fraction[k] /= groups;
        s.mean_rank_per_layer[k] /= groups;
      }
      summary.push_back(s);
      std::ostringstream os;
      os << "spectrum " << stream << " G=" << g << ": mean rank for 95% energy " << s.mean_rank_per_layer[1]
         << " per layer (" << 100 * s.mean_rank_fraction[1] << "% of the group width)";
      progress.line(os.str());
    }
  }
  return summary;
}

// ------------------------------------------------------------------ similarity
std::vector<SimilaritySummary> run_similarity_study(const model::PlainKvCache& cache, const std::string& out_dir,
                                                    const Progress& progress) {
  const int layers = cache.shape().num_layers;
  CsvWriter csv(out_dir + "/similarity.csv", {"stream", "layer_a", "layer_b", "cka", "cosine"});
  std::vector<SimilaritySummary> summary;
  for (const bool keys : {true, false}) {
    SimilaritySummary s;
    s.stream = keys ? "keys" : "values";
    const std::vector<Eigen::MatrixXf> mats = layer_matrices(cache, keys);
    std::vector<CenteredRepresentation> reps;
    for (const auto& m : mats) reps.push_back(center_representation(m));
    int all_pairs = 0;
    for (int a = 0; a < layers; ++a) {
      for (int b = a; b < layers; ++b) {
        const double cka = a == b ? 1.0 : linear_cka(reps[a], reps[b]);
        const double cosine = mean_token_cosine(mats[a], mats[b]);
        csv.row({s.stream, (long long)a, (long long)b, cka, cosine});
        if (a != b) csv.row({s.stream, (long long)b, (long long)a, cka, cosine});
        if (b == a + 1) {
          s.mean_adjacent_cka += cka / (layers - 1);
          s.mean_adjacent_cosine += cosine / (layers - 1);
        }
        if (b > a) {
          s.mean_all_cka += cka;
          s.mean_all_cosine += cosine;
          ++all_pairs;
        }
      }
    }
    s.mean_all_cka /= all_pairs;
    s.mean_all_cosine /= all_pairs;
    std::ostringstream os;
    os << "similarity " << s.stream << ": adjacent layers mean CKA " << s.mean_adjacent_cka << ", mean cosine "
       << s.mean_adjacent_cosine;
    progress.line(os.str());
    summary.push_back(s);
  }
  return summary;
}

// ------------------------------------------------------------------ accuracy
double mean_nll_of_logits(const model::RowMatrix& logits, std::span<const std::int32_t> targets) {
  XKV_REQUIRE(logits.rows() == static_cast<Eigen::Index>(targets.size()) && logits.rows() > 0,
              "mean_nll_of_logits: " << logits.rows() << " logit rows for " << targets.size() << " targets");
  double total = 0;
  for (Eigen::Index i = 0; i < logits.rows(); ++i) {
    const auto row = logits.row(i).cast<double>();
    const double peak = row.maxCoeff();
    const double log_sum = peak + std::log((row.array() - peak).exp().sum());
    const std::int32_t t = targets[static_cast<std::size_t>(i)];
    XKV_REQUIRE(t >= 0 && t < logits.cols(), "mean_nll_of_logits: target " << t << " outside the vocabulary");
    total += log_sum - row(t);
  }
  return total / double(logits.rows());
}

namespace {
std::vector<std::int32_t> row_argmax(const model::RowMatrix& logits) {
  std::vector<std::int32_t> out;
  for (Eigen::Index i = 0; i < logits.rows(); ++i) {
    Eigen::Index best = 0;
    logits.row(i).maxCoeff(&best);
    out.push_back(static_cast<std::int32_t>(best));
  }
  return out;
}
}  // namespace

AccuracyResults run_accuracy_study(const model::LlamaModel& model, const std::vector<std::int32_t>& text_tokens,
                                   const AccuracyOptions& options, const std::vector<Method>& methods,
                                   const std::string& out_dir, const Progress& progress) {
  const std::int64_t n = options.prefix_tokens, m = options.scored_tokens;
  XKV_REQUIRE(n >= 2 && m >= 1 && options.windows >= 1,
              "accuracy study: prefix " << n << ", scored " << m << ", windows " << options.windows);
  const std::int64_t window = n + m + 1;
  XKV_REQUIRE(std::int64_t(text_tokens.size()) >= window * options.windows,
              "accuracy study: the text has " << text_tokens.size() << " tokens, " << options.windows
                                              << " windows of " << window << " need " << window * options.windows);
  AccuracyResults results;
  std::vector<AccuracyRow> rows(methods.size());
  std::vector<double> nll_sum(methods.size(), 0), agree(methods.size(), 0), ratio_sum(methods.size(), 0),
      stream_sum(methods.size(), 0);
  std::vector<std::vector<double>> attn_layers(methods.size());
  std::vector<double> first_token;  // per layer, mean over windows
  double base_nll_sum = 0;
  for (int w = 0; w < options.windows; ++w) {
    const auto begin = text_tokens.begin() + w * window;
    const std::vector<std::int32_t> prefix(begin, begin + n);
    const std::vector<std::int32_t> inputs(begin + n, begin + n + m);
    const std::vector<std::int32_t> targets(begin + n + 1, begin + n + m + 1);
    model::PlainKvCache prefilled = model.make_plain_cache();
    model.forward(prefix, prefilled, model::Logits::None);
    model::PlainKvCache baseline = prefilled;
    QueryRecorder queries;
    const model::RowMatrix base_logits = model.forward(inputs, baseline, model::Logits::All, &queries);
    const double base_nll = mean_nll_of_logits(base_logits, targets);
    base_nll_sum += base_nll * m;
    {  // how much of the uncompressed model's attention lands on token 0 (the attention sink)
      const std::vector<double> w0 = layer_first_token_attention(queries, baseline);
      first_token.resize(w0.size(), 0);
      for (std::size_t l = 0; l < w0.size(); ++l) first_token[l] += w0[l] / options.windows;
    }
    const std::vector<std::int32_t> base_top = row_argmax(base_logits);
    {
      std::ostringstream os;
      os << "accuracy window " << w + 1 << "/" << options.windows << ": baseline perplexity " << std::exp(base_nll);
      progress.line(os.str());
    }
    for (std::size_t i = 0; i < methods.size(); ++i) {
      PreparedCache prep = prepare_cache(methods[i], prefilled);
      const model::RowMatrix logits = model.forward(inputs, *prep.cache, model::Logits::All);
      const double nll = mean_nll_of_logits(logits, targets);
      const std::vector<std::int32_t> top = row_argmax(logits);
      std::int64_t same = 0;
      for (std::size_t j = 0; j < top.size(); ++j) same += top[j] == base_top[j];
      AccuracyRow& row = rows[i];
      row.method = methods[i];
      ratio_sum[i] += prep.prefix_ratio;
      stream_sum[i] += prep.stream_ratio;
      row.key_rank = prep.key_rank;
      row.value_rank = prep.value_rank;
      row.retained_fraction += prep.retained_fraction;
      row.compress_seconds += prep.seconds;
      nll_sum[i] += nll * m;
      agree[i] += double(same);
      {
        // Same queries, same tail: a fresh compressed prefix plus the baseline's own scored tokens,
        // so the error is the cache's alone, not the drift of earlier layers.
        PreparedCache probe = prepare_cache(methods[i], prefilled);
        const ModelShape& s = baseline.shape();
        for (int l = 0; l < s.num_layers; ++l) {
          const KVView<float> k = baseline.pre_rope_keys(l), v = baseline.values(l);
          probe.cache->append(l, k.data + n * s.key_width(), v.data + n * s.value_width(), m);
        }
        const std::vector<double> errors = layer_attention_errors(queries, baseline, *probe.cache);
        attn_layers[i].resize(errors.size(), 0);
        for (std::size_t l = 0; l < errors.size(); ++l) attn_layers[i][l] += errors[l] / options.windows;
      }
      std::ostringstream os;
      os << "  " << methods[i].label() << ": ratio " << prep.prefix_ratio << ", perplexity " << std::exp(nll)
         << " (baseline " << std::exp(base_nll) << "), top-1 agreement " << double(same) / double(m);
      progress.line(os.str());
    }
  }
  const double positions = double(m) * options.windows;
  results.scored_positions = static_cast<std::int64_t>(positions);
  results.baseline_nll = base_nll_sum / positions;
  results.baseline_perplexity = std::exp(results.baseline_nll);
  CsvWriter csv(out_dir + "/" + options.csv_name + ".csv",
                {"method", "family", "group_size", "target_ratio", "achieved_ratio", "stream_ratio", "key_rank",
                 "value_rank", "retained_fraction", "nll", "perplexity", "baseline_perplexity",
                 "perplexity_increase_pct", "top1_agreement", "mean_attention_error", "compress_seconds",
                 "scored_positions"});
  CsvWriter attn(out_dir + "/" + options.csv_name + "_attention_error.csv", {"method", "achieved_ratio", "layer", "relative_error"});
  {
    CsvWriter sink(out_dir + "/" + options.csv_name + "_first_token_attention.csv", {"layer", "mean_weight_on_token_0"});
    double mean = 0;
    for (std::size_t l = 0; l < first_token.size(); ++l) {
      sink.row({(long long)l, first_token[l]});
      mean += first_token[l] / double(first_token.size());
    }
    results.mean_first_token_attention = mean;
    std::ostringstream os;
    os << "uncompressed model: mean attention weight on token 0 over layers, heads and scored queries " << mean;
    progress.line(os.str());
  }
  for (std::size_t i = 0; i < methods.size(); ++i) {
    AccuracyRow& row = rows[i];
    row.prefix_ratio = ratio_sum[i] / options.windows;
    row.stream_ratio = stream_sum[i] / options.windows;
    row.retained_fraction /= options.windows;
    row.nll = nll_sum[i] / positions;
    row.perplexity = std::exp(row.nll);
    row.perplexity_increase_pct = 100 * (row.perplexity / results.baseline_perplexity - 1);
    row.top1_agreement = agree[i] / positions;
    for (std::size_t l = 0; l < attn_layers[i].size(); ++l) {
      row.mean_attention_error += attn_layers[i][l] / attn_layers[i].size();
      attn.row({row.method.label(), row.prefix_ratio, (long long)l, attn_layers[i][l]});
    }
    const bool ratio_kind = row.method.kind != MethodKind::MiniCache && row.method.kind != MethodKind::FullRank;
    csv.row({row.method.label(), row.method.name, (long long)row.method.group_size,
             ratio_kind ? row.method.target_ratio : std::nan(""), row.prefix_ratio, row.stream_ratio,
             (long long)row.key_rank, (long long)row.value_rank, row.retained_fraction, row.nll, row.perplexity,
             results.baseline_perplexity, row.perplexity_increase_pct, row.top1_agreement,
             row.mean_attention_error, row.compress_seconds,
             (long long)results.scored_positions});
  }
  results.rows = std::move(rows);
  return results;
}

}  // namespace xkv::eval
