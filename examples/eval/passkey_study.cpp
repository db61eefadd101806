// Passkey retrieval over lengths, trials and methods (see studies.hpp).
#include <algorithm>
#include <sstream>

#include "csv.hpp"
#include "passkey.hpp"
#include "studies.hpp"
#include "xkv/error.hpp"

namespace xkv::eval {
namespace {

/// A plain cache holding the first `tokens` tokens of `source`.
model::PlainKvCache prefix_copy(const model::PlainKvCache& source, std::int64_t tokens) {
  model::PlainKvCache out(source.shape(), source.rope());
  for (int l = 0; l < source.shape().num_layers; ++l)
    out.append(l, source.pre_rope_keys(l).data, source.values(l).data, tokens);
  return out;
}

/// Greedy answer tokens after `first_logits` (the logits that follow the last prompt token).
std::string greedy_answer(const model::LlamaModel& model, const model::Tokenizer& tokenizer, model::KvCache& cache,
                          const model::RowMatrix& first_logits, int max_new_tokens) {
  model::GreedyOptions greedy;
  greedy.max_new_tokens = max_new_tokens;
  greedy.stop_tokens = tokenizer.stop_tokens();
  const std::vector<std::int32_t> answer = model::greedy_decode(
      model, cache,
      std::span<const float>(first_logits.data(), static_cast<std::size_t>(first_logits.cols())), greedy);
  return tokenizer.decode(answer, true);
}

/// The question is read from `cache` (compressed or not), then the answer decoded from it.
std::string decode_answer(const model::LlamaModel& model, const model::Tokenizer& tokenizer, model::KvCache& cache,
                          const std::vector<std::int32_t>& question, int max_new_tokens) {
  const model::RowMatrix logits = model.forward(question, cache, model::Logits::Last);
  return greedy_answer(model, tokenizer, cache, logits, max_new_tokens);
}

}  // namespace

std::vector<PasskeySummaryRow> run_passkey_study(const model::LlamaModel& model, const model::Tokenizer& tokenizer,
                                                 const PasskeyOptions& options, const std::vector<Method>& methods,
                                                 const std::string& out_dir, const Progress& progress) {
  XKV_REQUIRE(options.trials >= 1 && !options.lengths.empty(),
              "passkey study: " << options.trials << " trials over " << options.lengths.size() << " lengths");
  const PasskeyPieces pieces = PasskeyPieces::make(tokenizer);
  const std::size_t lengths = options.lengths.size();
  std::vector<std::vector<PasskeyTrial>> trials(lengths);
  int longest_shared_units = 0;
  for (std::size_t li = 0; li < lengths; ++li) {
    XKV_REQUIRE(options.lengths[li] + options.max_new_tokens <= model.config().context_length,
                "passkey length " << options.lengths[li] << " exceeds the model's context length "
                                  << model.config().context_length);
    for (int t = 0; t < options.trials; ++t) {
      trials[li].push_back(make_passkey_trial(tokenizer, pieces, options.lengths[li], options.seed, t));
      longest_shared_units = std::max(longest_shared_units, trials[li].back().insert_after_units);
    }
  }
  // Every trial's context starts with intro + k filler units: computed once, for the largest k.
  const std::vector<std::int32_t> shared = passkey_filler_context(pieces, longest_shared_units);
  model::PlainKvCache shared_cache = model.make_plain_cache();
  model.forward(shared, shared_cache, model::Logits::None);
  {
    std::ostringstream os;
    os << "passkey: shared filler prefix of " << shared.size() << " tokens prefilled; " << options.trials
       << " trials x " << lengths << " lengths x " << methods.size() + 1 << " caches";
    progress.line(os.str());
  }

  CsvWriter csv(out_dir + "/passkey_trials.csv", {"length", "trial", "prompt_tokens", "depth", "key", "method",
                                                  "achieved_ratio", "correct", "output"});
  // counts[length][method + 1], index 0 the baseline.
  std::vector<std::vector<int>> correct(lengths, std::vector<int>(methods.size() + 1, 0));
  std::vector<std::vector<double>> ratio_sum(lengths, std::vector<double>(methods.size() + 1, 0));
  std::vector<int> done(lengths, 0);
  const double start = progress.elapsed();
  for (int t = 0; t < options.trials; ++t) {
    for (std::size_t li = 0; li < lengths; ++li) {
      const PasskeyTrial& trial = trials[li][t];
      model::PlainKvCache context = prefix_copy(shared_cache, trial.shared_prefix_tokens);
      const std::vector<std::int32_t> rest(trial.context.begin() + trial.shared_prefix_tokens, trial.context.end());
      model.forward(rest, context, model::Logits::None);
      const double depth = double(trial.insert_after_units) / double(std::max(1, trial.filler_units));
      const auto record = [&](std::size_t index, const std::string& label, double ratio, const std::string& output) {
        const bool ok = passkey_answer_correct(output, trial.key);
        correct[li][index] += ok;
        ratio_sum[li][index] += ratio;
        csv.row({(long long)options.lengths[li], (long long)t, (long long)trial.total_tokens(), depth, trial.key,
                 label, ratio, (long long)ok, output});
        return ok;
      };
      // Prefill flow (the engine's): the whole prompt is prefilled with exact attention, its cache
      // is compressed, and only the answer tokens after the first read the compressed cache.
      // Follow-up flow: the context's cache is compressed and the question is read through it.
      model::PlainKvCache prompt = context;
      model::RowMatrix first_logits;
      if (options.question_in_prefill) first_logits = model.forward(trial.question, prompt, model::Logits::Last);
      const auto answer = [&](model::KvCache& cache) {
        return options.question_in_prefill
                   ? greedy_answer(model, tokenizer, cache, first_logits, options.max_new_tokens)
                   : decode_answer(model, tokenizer, cache, trial.question, options.max_new_tokens);
      };
      std::ostringstream line;
      {  // baseline first: the plain cache itself
        model::PlainKvCache plain = prompt;
        line << "uncompressed " << (record(0, "uncompressed", 1.0, answer(plain)) ? "ok" : "MISS");
      }
      for (std::size_t i = 0; i < methods.size(); ++i) {
        PreparedCache prep = prepare_cache(methods[i], prompt);
        const bool ok = record(i + 1, methods[i].label(), prep.prefix_ratio, answer(*prep.cache));
        line << ", " << methods[i].label() << " " << (ok ? "ok" : "MISS");
      }
      ++done[li];
      const double elapsed = progress.elapsed() - start;
      const double rounds_done = t + double(li + 1) / lengths;
      std::ostringstream os;
      os << "passkey " << options.lengths[li] << " trial " << t + 1 << "/" << options.trials << " (depth "
         << static_cast<int>(100 * depth) << "%): " << line.str() << "; baseline " << correct[li][0] << "/" << done[li]
         << "; eta " << static_cast<int>(elapsed / rounds_done * (options.trials - rounds_done)) << "s";
      progress.line(os.str());
    }
  }

  CsvWriter summary_csv(out_dir + "/passkey_summary.csv", {"length", "method", "achieved_ratio", "trials", "correct",
                                                           "accuracy", "relative_to_baseline"});
  std::vector<PasskeySummaryRow> summary;
  for (std::size_t li = 0; li < lengths; ++li) {
    for (std::size_t i = 0; i <= methods.size(); ++i) {
      PasskeySummaryRow row;
      row.length = options.lengths[li];
      row.method = i == 0 ? "uncompressed" : methods[i - 1].label();
      row.trials = done[li];
      row.correct = correct[li][i];
      row.mean_ratio = ratio_sum[li][i] / std::max(1, done[li]);
      const double accuracy = double(row.correct) / std::max(1, row.trials);
      const double base = double(correct[li][0]) / std::max(1, row.trials);
      summary_csv.row({(long long)row.length, row.method, row.mean_ratio, (long long)row.trials, (long long)row.correct,
                       accuracy, base > 0 ? accuracy / base : std::nan("")});
      summary.push_back(row);
    }
  }
  return summary;
}

}  // namespace xkv::eval
