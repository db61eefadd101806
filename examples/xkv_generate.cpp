// xkv-generate: prefill a prompt, compress the KV cache with xkv, and decode greedily from both
// the plain and the compressed cache; prints the two continuations, KV bytes and speeds.
//
//   xkv-generate [--model M] --prompt P [--chat] [--xkv G:rk:rv | --xkv-ratio R [--group G]]
//                [--max-tokens N]
#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "xkv/model/model.hpp"

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
// Process CPU time (all threads): on a shared machine it shows the work done, independent of
// how long the process waited for a core.
double cpu_seconds() { return static_cast<double>(std::clock()) / CLOCKS_PER_SEC; }

struct Args {
  std::string model, prompt;
  bool chat = false;
  int group = 4;
  int key_rank = 0, value_rank = 0;  // fixed ranks when > 0
  double ratio = 4.0;
  int max_tokens = 32;
  std::int64_t max_prompt_tokens = 0;  // 0: no limit
};

int usage(const char* error = nullptr) {
  if (error) std::cerr << "xkv-generate: " << error << "\n";
  std::cerr << "usage: xkv-generate [--model M.gguf] --prompt TEXT [--chat] [--xkv G:rk:rv | --xkv-ratio R [--group G]]\n"
               "                    [--max-tokens N] [--prompt-file PATH] [--max-prompt-tokens N]\n"
               "  --model       GGUF model (default: $XKV_MODEL_PATH, else the one scripts/fetch-model placed)\n"
               "  --chat        wrap the prompt as a user turn of the model's ChatML template\n"
               "  --xkv G:rk:rv groups of G layers with fixed key/value ranks\n"
               "  --xkv-ratio R groups of --group layers (default 4) at compression ratio R (default 4)\n"
               "  --max-tokens  tokens to generate (default 32)\n"
               "  --prompt-file read the prompt from a file; --max-prompt-tokens keeps its first N tokens\n";
  return 2;
}

bool parse(int argc, char** argv, Args& a, std::string& error) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
      return argv[++i];
    };
    try {
      if (arg == "--model") a.model = value();
      else if (arg == "--prompt") a.prompt = value();
      else if (arg == "--prompt-file") {
        const std::string path = value();
        std::ifstream in(path, std::ios::binary);
        if (!in) throw std::invalid_argument("cannot read --prompt-file '" + path + "'");
        std::stringstream ss;
        ss << in.rdbuf();
        a.prompt = ss.str();
      } else if (arg == "--max-prompt-tokens") a.max_prompt_tokens = std::stoll(value());
      else if (arg == "--chat") a.chat = true;
      else if (arg == "--max-tokens") a.max_tokens = std::stoi(value());
      else if (arg == "--group") a.group = std::stoi(value());
      else if (arg == "--xkv-ratio") a.ratio = std::stod(value());
      else if (arg == "--xkv") {
        const std::string spec = value();
        char c1 = 0, c2 = 0;
        std::istringstream is(spec);
        if (!(is >> a.group >> c1 >> a.key_rank >> c2 >> a.value_rank) || c1 != ':' || c2 != ':' || !is.eof())
          throw std::invalid_argument("--xkv expects G:rk:rv, got '" + spec + "'");
      } else {
        throw std::invalid_argument("unknown argument '" + arg + "'");
      }
    } catch (const std::exception& e) {
      error = e.what();
      return false;
    }
  }
  if (a.prompt.empty()) error = "--prompt (or --prompt-file) is required";
  else if (a.max_prompt_tokens < 0) error = "--max-prompt-tokens must be >= 0";
  else if (a.max_tokens < 1) error = "--max-tokens must be >= 1";
  else if (a.group < 1) error = "the group size must be >= 1";
  else if (a.key_rank < 0 || a.value_rank < 0) error = "ranks must be positive";
  else if (!(a.ratio > 1.0)) error = "--xkv-ratio must be > 1";
  return error.empty();
}

std::string printable(const std::string& s) {
  std::string out;
  for (char c : s) out += (c == '\n') ? std::string("\\n") : std::string(1, c);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  std::string error;
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "-h" || std::string(argv[i]) == "--help") return usage();
  if (!parse(argc, argv, args, error)) return usage(error.c_str());

  try {
    using namespace xkv::model;
    if (args.model.empty()) {
      const auto found = default_model_path();
      if (!found) return usage("no --model given and no model found (run scripts/fetch-model)");
      args.model = *found;
    }
    auto t0 = Clock::now();
    const GgufFile file = GgufFile::open(args.model);
    const Tokenizer tokenizer = Tokenizer::from_gguf(file);
    const LlamaModel model = LlamaModel::from_gguf(file);
    const LlamaConfig& cfg = model.config();
    std::printf("model: %s (%d layers, %d kv heads x %d), loaded in %.2f s, %.0f MiB fp32 weights\n",
                args.model.c_str(), cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, seconds_since(t0),
                model.weight_bytes() / 1048576.0);

    std::string text = args.prompt;
    if (args.chat) {
      const ChatMessage user{"user", args.prompt};
      text = tokenizer.apply_chat_template(std::span<const ChatMessage>(&user, 1));
    }
    std::vector<std::int32_t> prompt = tokenizer.encode(text);
    if (args.max_prompt_tokens > 0 && std::int64_t(prompt.size()) > args.max_prompt_tokens) {
      prompt.resize(static_cast<std::size_t>(args.max_prompt_tokens));
      text = tokenizer.decode(prompt);
    }
    XKV_REQUIRE(!prompt.empty(), "the prompt encodes to no tokens");

    PlainKvCache plain = model.make_plain_cache();
    t0 = Clock::now();
    const double cpu0 = cpu_seconds();
    const RowMatrix logits = model.forward(prompt, plain, Logits::Last);
    const double prefill_s = seconds_since(t0), prefill_cpu = cpu_seconds() - cpu0;
    std::printf("prefill: %zu tokens in %.3f s (%.1f tokens/s), %.3f s CPU\n", prompt.size(), prefill_s,
                prompt.size() / prefill_s, prefill_cpu);

    xkv::CacheOptions options;
    options.grouping = xkv::LayerGrouping::consecutive(cfg.num_layers, std::min(args.group, cfg.num_layers));
    const std::int64_t n = plain.tokens(0);
    if (args.key_rank > 0) {
      const int limit = static_cast<int>(std::min<std::int64_t>(n, std::int64_t(args.group) * cfg.kv_width()));
      const int rk = std::min(args.key_rank, limit), rv = std::min(args.value_rank, limit);
      if (rk != args.key_rank || rv != args.value_rank)
        std::printf("note: ranks clamped to %d:%d (at most min(tokens, G*width) = %d)\n", rk, rv, limit);
      options.policy = xkv::RankPolicy::fixed(rk, rv);
    } else {
      options.policy = xkv::RankPolicy::ratio(args.ratio);
    }
    t0 = Clock::now();
    CompressedKvCache compressed(plain, options);
    const double compress_s = seconds_since(t0);

    GreedyOptions greedy;
    greedy.max_new_tokens = args.max_tokens;
    greedy.stop_tokens = tokenizer.stop_tokens();
    const std::span<const float> last(logits.data(), static_cast<std::size_t>(logits.cols()));
    const std::size_t plain_bytes = plain.bytes(), compressed_bytes = compressed.bytes();

    t0 = Clock::now();
    const double cpu1 = cpu_seconds();
    const auto plain_out = greedy_decode(model, plain, last, greedy);
    const double plain_s = seconds_since(t0), plain_cpu = cpu_seconds() - cpu1;
    t0 = Clock::now();
    const auto xkv_out = greedy_decode(model, compressed, last, greedy);
    const double xkv_s = seconds_since(t0);

    std::size_t same = 0;
    while (same < plain_out.size() && same < xkv_out.size() && plain_out[same] == xkv_out[same]) ++same;
    const auto& groups = compressed.compressed().groups();
    std::printf("xkv: %zu groups, ranks (K:V) of group 0 = %d:%d, compressed in %.3f s\n", groups.size(),
                groups.empty() ? 0 : groups[0].keys.rank, groups.empty() ? 0 : groups[0].values.rank, compress_s);
    std::printf("KV cache after prefill: %.1f KiB plain -> %.1f KiB compressed (%.2fx)\n", plain_bytes / 1024.0,
                compressed_bytes / 1024.0, double(plain_bytes) / double(compressed_bytes));
    // Decode timings count the tokens that went through a forward pass (the first comes from prefill).
    std::printf("decode: plain %.1f tokens/s (%.3f s CPU per token), compressed %.1f tokens/s\n",
                plain_out.size() > 1 ? (plain_out.size() - 1) / plain_s : 0.0,
                plain_out.size() > 1 ? plain_cpu / double(plain_out.size() - 1) : 0.0,
                xkv_out.size() > 1 ? (xkv_out.size() - 1) / xkv_s : 0.0);
    std::printf("identical tokens: %zu of %zu\n\n", same, std::max(plain_out.size(), xkv_out.size()));
    const std::string shown = text.size() > 400 ? "..." + text.substr(text.size() - 400) : text;
    std::printf("prompt      | %s\n", printable(shown).c_str());
    std::printf("plain cache | %s\n", printable(tokenizer.decode(plain_out, true)).c_str());
    std::printf("xkv cache   | %s\n", printable(tokenizer.decode(xkv_out, true)).c_str());
  } catch (const std::exception& e) {
    std::cerr << "xkv-generate: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
