// xkv-long-context-demo: a ~2k-token document with one fact hidden in it, a question about the
// fact, and greedy answers decoded from the plain KV cache and from the xKV-4-compressed cache.
//
//   xkv-long-context-demo [--model M.gguf] [--tokens N] [--depth F] [--group G] [--ratio R]
//                         [--max-tokens N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "xkv/model/model.hpp"

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Filler: varied, plausible sentences (a town chronicle), cycled in a fixed scrambled order so
// that the document is not trivially repetitive.
const char* const kFiller[] = {
    "The harbour of Eastwick was rebuilt after the storm of the previous winter.",
    "Fishermen left before dawn and returned with their nets heavy with herring.",
    "The market square filled every Saturday with farmers selling apples, cheese and bread.",
    "A new schoolhouse opened near the river, and forty children enrolled in its first year.",
    "The town council debated for weeks about the cost of repairing the old stone bridge.",
    "In the spring the orchards on the hill bloomed white and pink for almost a month.",
    "The library received a donation of three hundred books from a retired sea captain.",
    "Travellers often stopped at the inn by the crossroads to rest their horses.",
    "The blacksmith's forge rang from morning to evening as carts came in for new wheels.",
    "During the summer festival the streets were lit with lanterns and music played until midnight.",
    "The baker was known for a honey cake that people came from neighbouring villages to buy.",
    "Heavy rain in autumn flooded the lower fields, and the harvest was gathered late.",
    "The lighthouse keeper wrote a daily log of passing ships, weather and tides.",
    "A travelling theatre company performed an old comedy in the town hall.",
    "The mill by the waterfall ground grain for every farm within a day's walk.",
    "Children skated on the frozen pond when the winter was cold enough.",
    "The doctor rode out to the farms twice a week to visit the sick and the elderly.",
    "Merchants from the south brought spices, cloth and news of distant cities.",
    "The church bell was recast after a crack appeared in it during a cold January.",
    "Every evening the shepherds brought their flocks down from the high pastures.",
};

struct Args {
  std::string model;
  int target_tokens = 2000;
  double depth = 0.4;
  int group = 4;
  double ratio = 4.0;
  int max_tokens = 12;
};

int usage(const char* error = nullptr) {
  if (error) std::cerr << "xkv-long-context-demo: " << error << "\n";
  std::cerr << "usage: xkv-long-context-demo [--model M.gguf] [--tokens N] [--depth F] [--group G] [--ratio R]\n"
               "                             [--max-tokens N]\n"
               "  --tokens  approximate document length in tokens (default 2000)\n"
               "  --depth   where the fact sits, as a fraction of the document (default 0.4)\n"
               "  --group   layers per xKV group (default 4: xKV-4)\n"
               "  --ratio   target compression ratio of the compressed layers' K+V (default 4)\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      const auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
        return argv[++i];
      };
      if (arg == "--model") args.model = value();
      else if (arg == "--tokens") args.target_tokens = std::stoi(value());
      else if (arg == "--depth") args.depth = std::stod(value());
      else if (arg == "--group") args.group = std::stoi(value());
      else if (arg == "--ratio") args.ratio = std::stod(value());
      else if (arg == "--max-tokens") args.max_tokens = std::stoi(value());
      else if (arg == "-h" || arg == "--help") return usage();
      else throw std::invalid_argument("unknown argument '" + arg + "'");
    }
    if (args.target_tokens < 64) throw std::invalid_argument("--tokens must be >= 64");
    if (!(args.depth >= 0 && args.depth <= 1)) throw std::invalid_argument("--depth must be in [0, 1]");
    if (args.group < 1 || args.max_tokens < 1 || !(args.ratio > 1)) throw std::invalid_argument("bad --group/--ratio/--max-tokens");
  } catch (const std::exception& e) {
    return usage(e.what());
  }

  try {
    using namespace xkv::model;
    if (args.model.empty()) {
      const auto found = default_model_path();
      if (!found) return usage("no --model given and no model found (run scripts/fetch-model)");
      args.model = *found;
    }
    const GgufFile file = GgufFile::open(args.model);
    const Tokenizer tokenizer = Tokenizer::from_gguf(file);
    const LlamaModel model = LlamaModel::from_gguf(file);
    const LlamaConfig& cfg = model.config();

    const std::string fact = "The secret code of the lighthouse is 4721.";
    const std::string answer = "4721";
    const std::string intro =
        "Below is a chronicle of a small town. One sentence in it states a secret code. Read carefully.\n\n";
    const std::string question = "\n\nQuestion: What is the secret code of the lighthouse?\nAnswer: The secret code of the lighthouse is";

    // Grow the filler until the whole prompt reaches the target length, then insert the fact.
    const std::size_t fixed_tokens =
        tokenizer.encode(intro).size() + tokenizer.encode(question).size() + tokenizer.encode(" " + fact).size();
    std::vector<std::string> sentences;
    std::size_t filler_tokens = 0;
    for (std::size_t k = 0; fixed_tokens + filler_tokens < std::size_t(args.target_tokens); ++k) {
      const std::string s = std::string(k == 0 ? "" : " ") + kFiller[(k * 7 + k / 20) % std::size(kFiller)];
      filler_tokens += tokenizer.encode(s).size();
      sentences.push_back(s);
    }
    const std::size_t at = std::min(sentences.size(), std::size_t(args.depth * double(sentences.size()) + 0.5));
    std::string document;
    for (std::size_t k = 0; k < sentences.size(); ++k) {
      if (k == at) document += " " + fact;
      document += sentences[k];
    }
    if (at == sentences.size()) document += " " + fact;
    const std::string prompt = intro + document + question;
    const std::vector<std::int32_t> ids = tokenizer.encode(prompt);
    XKV_REQUIRE(std::int64_t(ids.size()) < cfg.context_length,
                "the document (" << ids.size() << " tokens) does not fit the model's context of " << cfg.context_length);

    std::printf("model:    %s\n", args.model.c_str());
    std::printf("document: %zu tokens, fact at sentence %zu of %zu: \"%s\"\n", ids.size(), at, sentences.size(),
                fact.c_str());
    std::printf("question: %s\n\n", question.substr(2).c_str());

    PlainKvCache plain = model.make_plain_cache();
    auto t0 = Clock::now();
    const RowMatrix logits = model.forward(ids, plain, Logits::Last);
    const double prefill_s = seconds_since(t0);
    std::printf("prefill:  %.1f s (%.0f tokens/s)\n", prefill_s, double(ids.size()) / prefill_s);

    xkv::CacheOptions options;
    options.grouping = xkv::LayerGrouping::consecutive(cfg.num_layers, std::min(args.group, cfg.num_layers));
    options.policy = xkv::RankPolicy::ratio(args.ratio);
    t0 = Clock::now();
    CompressedKvCache compressed(plain, options);
    const double compress_s = seconds_since(t0);
    const std::size_t plain_bytes = plain.bytes(), compressed_bytes = compressed.bytes();

    GreedyOptions greedy;
    greedy.max_new_tokens = args.max_tokens;
    greedy.stop_tokens = tokenizer.stop_tokens();
    const std::span<const float> last(logits.data(), std::size_t(logits.cols()));
    const auto plain_out = greedy_decode(model, plain, last, greedy);
    t0 = Clock::now();
    const auto xkv_out = greedy_decode(model, compressed, last, greedy);
    const double xkv_decode_s = seconds_since(t0);

    const auto& g0 = compressed.compressed().groups().front();
    const auto first_line = [](std::string s) { return s.substr(0, s.find('\n')); };
    const std::string plain_text = first_line(tokenizer.decode(plain_out, true));
    const std::string xkv_text = first_line(tokenizer.decode(xkv_out, true));
    const auto verdict = [&](const std::string& s) { return s.find(answer) != std::string::npos ? "correct" : "wrong"; };
    std::printf("xKV-%d:    %zu groups, ranks K:V %d:%d (group 0), compressed in %.2f s\n", args.group,
                compressed.compressed().groups().size(), g0.keys.rank, g0.values.rank, compress_s);
    std::printf("\nanswer, plain cache:      \"%s\"  [%s]\n", plain_text.c_str(), verdict(plain_text));
    std::printf("answer, xKV-compressed:   \"%s\"  [%s]\n", xkv_text.c_str(), verdict(xkv_text));
    std::printf("\nKV cache: %.2f MiB plain -> %.2f MiB compressed: %.2f MiB saved (%.1f%%, %.2fx)\n",
                plain_bytes / 1048576.0, compressed_bytes / 1048576.0, (plain_bytes - compressed_bytes) / 1048576.0,
                100.0 * double(plain_bytes - compressed_bytes) / double(plain_bytes),
                double(plain_bytes) / double(compressed_bytes));
    std::printf("decode from the compressed cache: %.1f tokens/s\n",
                xkv_out.size() > 1 ? double(xkv_out.size() - 1) / xkv_decode_s : 0.0);
  } catch (const std::exception& e) {
    std::cerr << "xkv-long-context-demo: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
