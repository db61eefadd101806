// Llama forward: a tiny seeded model against an fp64 reference written here, cache paths
// (incremental decode, xkv-compressed cache at full rank), model-level validation; on the real
// model greedy " Paris", perplexity on a license text, run-to-run stability and compressed decode.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "gguf_builder.hpp"
#include "model_fixture.hpp"
#include "xkv/model/model.hpp"

namespace xkv::model {
namespace {

// ---------------------------------------------------------------- fp64 reference
using Vec = std::vector<double>;

struct RefWeights {
  const GgufFile* file;
  Vec get(const std::string& name) const {
    const auto f = file->dequantize(*file->find_tensor(name));
    return Vec(f.begin(), f.end());
  }
};

Vec matvec(const Vec& w, const Vec& x, std::size_t out) {  // w is [out x in] row-major
  const std::size_t in = x.size();
  Vec y(out, 0.0);
  for (std::size_t o = 0; o < out; ++o)
    for (std::size_t i = 0; i < in; ++i) y[o] += w[o * in + i] * x[i];
  return y;
}

Vec rms_norm(const Vec& x, const Vec& w, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double scale = 1.0 / std::sqrt(ss / double(x.size()) + eps);
  Vec y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = x[i] * scale * w[i];
  return y;
}

/// Logits [tokens x vocab] of a full causal pass, every operation in fp64.
std::vector<Vec> reference_forward(const GgufFile& file, const LlamaConfig& c, const std::vector<std::int32_t>& tokens) {
  const RefWeights w{&file};
  const std::size_t n = tokens.size(), hd = std::size_t(c.head_dim), H = std::size_t(c.hidden);
  const auto emb = w.get("token_embd.weight");
  std::vector<Vec> x(n);
  for (std::size_t p = 0; p < n; ++p) x[p] = Vec(emb.begin() + tokens[p] * H, emb.begin() + (tokens[p] + 1) * H);
  const auto inv_freq = c.rope.inverse_frequencies(c.head_dim);
  for (int l = 0; l < c.num_layers; ++l) {
    const auto nm = [&](const char* s) { return layer_tensor_name(l, s); };
    const Vec wq = w.get(nm("attn_q")), wk = w.get(nm("attn_k")), wv = w.get(nm("attn_v")), wo = w.get(nm("attn_output"));
    const Vec wg = w.get(nm("ffn_gate")), wu = w.get(nm("ffn_up")), wd = w.get(nm("ffn_down"));
    const Vec an = w.get(nm("attn_norm")), fn = w.get(nm("ffn_norm"));
    std::vector<Vec> q(n), k(n), v(n);
    for (std::size_t p = 0; p < n; ++p) {
      const Vec h = rms_norm(x[p], an, c.rms_eps);
      q[p] = matvec(wq, h, std::size_t(c.q_width()));
      k[p] = matvec(wk, h, std::size_t(c.kv_width()));
      v[p] = matvec(wv, h, std::size_t(c.kv_width()));
      for (int hh = 0; hh < c.num_heads; ++hh)
        apply_rope_head(q[p].data() + hh * hd, c.head_dim, std::int64_t(p), RopeStyle::Interleaved, inv_freq);
      for (int hh = 0; hh < c.num_kv_heads; ++hh)
        apply_rope_head(k[p].data() + hh * hd, c.head_dim, std::int64_t(p), RopeStyle::Interleaved, inv_freq);
    }
    for (std::size_t p = 0; p < n; ++p) {
      Vec attn(std::size_t(c.q_width()), 0.0);
      for (int hh = 0; hh < c.num_heads; ++hh) {
        const std::size_t kvh = std::size_t(hh / (c.num_heads / c.num_kv_heads));
        Vec s(p + 1);
        double peak = -1e300;
        for (std::size_t j = 0; j <= p; ++j) {
          double dot = 0;
          for (std::size_t i = 0; i < hd; ++i) dot += q[p][hh * hd + i] * k[j][kvh * hd + i];
          s[j] = dot / std::sqrt(double(hd));
          peak = std::max(peak, s[j]);
        }
        double total = 0;
        for (auto& e : s) total += (e = std::exp(e - peak));
        for (std::size_t j = 0; j <= p; ++j)
          for (std::size_t i = 0; i < hd; ++i) attn[hh * hd + i] += s[j] / total * v[j][kvh * hd + i];
      }
      const Vec o = matvec(wo, attn, H);
      for (std::size_t i = 0; i < H; ++i) x[p][i] += o[i];
      const Vec h = rms_norm(x[p], fn, c.rms_eps);
      const Vec g = matvec(wg, h, std::size_t(c.ffn_hidden)), u = matvec(wu, h, std::size_t(c.ffn_hidden));
      Vec a(g.size());
      for (std::size_t i = 0; i < g.size(); ++i) a[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
      const Vec d = matvec(wd, a, H);
      for (std::size_t i = 0; i < H; ++i) x[p][i] += d[i];
    }
  }
  const Vec out_norm = w.get("output_norm.weight");
  std::vector<Vec> logits(n);
  for (std::size_t p = 0; p < n; ++p) logits[p] = matvec(emb, rms_norm(x[p], out_norm, c.rms_eps), std::size_t(c.vocab_size));
  return logits;
}

struct Tiny {
  GgufFile file;
  LlamaModel model;
};
Tiny tiny_model(const testing::TinyLlamaSpec& spec = {}) {
  GgufFile f = GgufFile::parse(testing::tiny_llama(spec).build(), "tiny.gguf");
  LlamaModel m = LlamaModel::from_gguf(f);
  return {std::move(f), std::move(m)};
}

std::vector<std::int32_t> some_tokens(int n, int vocab, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> id(0, vocab - 1);
  std::vector<std::int32_t> t(static_cast<std::size_t>(n));
  for (auto& x : t) x = id(rng);
  return t;
}

double max_abs(const RowMatrix& m) { return m.cwiseAbs().maxCoeff(); }

TEST(TinyLlama, ConfigComesFromMetadata) {
  testing::TinyLlamaSpec spec;
  spec.layers = 3;
  spec.heads = 8;
  spec.kv_heads = 2;
  spec.rope_theta = 5000.0f;
  const auto t = tiny_model(spec);
  const LlamaConfig& c = t.model.config();
  EXPECT_EQ(c.num_layers, 3);
  EXPECT_EQ(c.hidden, 64);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.ffn_hidden, 96);
  EXPECT_EQ(c.vocab_size, 300);
  EXPECT_EQ(c.context_length, 256);
  EXPECT_DOUBLE_EQ(c.rope.theta, 5000.0);
  EXPECT_EQ(c.rope.style, RopeStyle::Interleaved);
  EXPECT_TRUE(c.tied_embeddings);
}

TEST(TinyLlama, ForwardMatchesFp64Reference) {
  for (const bool tied : {true, false}) {
    testing::TinyLlamaSpec spec;
    spec.tied = tied;
    const auto t = tiny_model(spec);
    const auto tokens = some_tokens(9, 300, 11);
    PlainKvCache cache = t.model.make_plain_cache();
    const RowMatrix logits = t.model.forward(tokens, cache, Logits::All);
    ASSERT_EQ(logits.rows(), 9);
    ASSERT_EQ(logits.cols(), 300);
    if (tied) {
      const auto ref = reference_forward(t.file, t.model.config(), tokens);
      double worst = 0, scale = 0;
      for (std::size_t p = 0; p < ref.size(); ++p)
        for (std::size_t v = 0; v < ref[p].size(); ++v) {
          worst = std::max(worst, std::fabs(logits(Eigen::Index(p), Eigen::Index(v)) - ref[p][v]));
          scale = std::max(scale, std::fabs(ref[p][v]));
        }
      EXPECT_LT(worst, 1e-4 * scale) << "max |logit error| " << worst << " with max |logit| " << scale;
    }
    EXPECT_EQ(cache.tokens(0), 9);
    EXPECT_EQ(cache.bytes(), std::size_t(2) * 2 * 9 * t.model.config().kv_width() * sizeof(float));
  }
}

TEST(TinyLlama, IncrementalDecodeMatchesOnePass) {
  const auto t = tiny_model();
  const auto tokens = some_tokens(12, 300, 5);
  PlainKvCache whole = t.model.make_plain_cache();
  const RowMatrix all = t.model.forward(tokens, whole, Logits::All);
  PlainKvCache stepwise = t.model.make_plain_cache();
  (void)t.model.forward(std::span(tokens).first(5), stepwise, Logits::None);
  for (std::size_t i = 5; i < tokens.size(); ++i) {
    const RowMatrix one = t.model.forward(std::span(tokens).subspan(i, 1), stepwise, Logits::Last);
    EXPECT_LT((one.row(0) - all.row(Eigen::Index(i))).cwiseAbs().maxCoeff(), 1e-4 * max_abs(all)) << "token " << i;
  }
  PlainKvCache short_cache = t.model.make_plain_cache();
  const RowMatrix last = t.model.forward(std::span(tokens).first(3), short_cache, Logits::Last);
  EXPECT_LT((last.row(0) - all.row(2)).cwiseAbs().maxCoeff(), 1e-4 * max_abs(all));
}

TEST(TinyLlama, CompressedCacheAtFullRankDecodesLikePlain) {
  const auto t = tiny_model();
  const auto prompt = some_tokens(10, 300, 3);
  PlainKvCache plain = t.model.make_plain_cache();
  const RowMatrix logits = t.model.forward(prompt, plain, Logits::Last);
  CacheOptions options;
  options.grouping = LayerGrouping::consecutive(2, 2);
  options.policy = RankPolicy::fixed(10, 10);  // = min(tokens, G * width): exact
  CompressedKvCache compressed(plain, options);
  EXPECT_EQ(compressed.tokens(1), 10);
  // Same reads before any decode step.
  for (int l = 0; l < 2; ++l) {
    PlainKvCache copy = plain;
    const KvRead a = copy.read(l);
    const KvRead b = compressed.read(l);
    ASSERT_EQ(a.tokens, b.tokens);
    const std::size_t n = std::size_t(a.tokens) * t.model.config().kv_width();
    for (std::size_t i = 0; i < n; ++i) {
      ASSERT_NEAR(a.keys[i], b.keys[i], 1e-4) << "layer " << l << " key " << i;
      ASSERT_NEAR(a.values[i], b.values[i], 1e-4) << "layer " << l << " value " << i;
    }
  }
  GreedyOptions greedy;
  greedy.max_new_tokens = 12;
  const std::span<const float> last(logits.data(), std::size_t(logits.cols()));
  const auto plain_out = greedy_decode(t.model, plain, last, greedy);
  const auto xkv_out = greedy_decode(t.model, compressed, last, greedy);
  EXPECT_EQ(plain_out, xkv_out);
  EXPECT_EQ(plain_out.size(), 12u);
  EXPECT_EQ(compressed.tokens(0), 10 + 11);  // the tail holds every decoded token fed back

  // A lower rank stores less.
  options.policy = RankPolicy::fixed(2, 3);
  PlainKvCache fresh = t.model.make_plain_cache();
  (void)t.model.forward(prompt, fresh, Logits::None);
  const CompressedKvCache small(fresh, options);
  EXPECT_LT(small.bytes(), fresh.bytes());
}

TEST(TinyLlama, ForwardRejectsBadArguments) {
  const auto t = tiny_model();
  PlainKvCache cache = t.model.make_plain_cache();
  EXPECT_THROW((void)t.model.forward(std::vector<std::int32_t>{300}, cache), Error);
  EXPECT_THROW((void)t.model.forward(std::vector<std::int32_t>{-1}, cache), Error);
  EXPECT_THROW((void)t.model.forward(std::vector<std::int32_t>{}, cache), Error);
  PlainKvCache wrong(ModelShape{3, 2, 16, 0}, t.model.config().rope);
  EXPECT_THROW((void)t.model.forward(std::vector<std::int32_t>{1}, wrong), Error);
  const std::vector<std::int32_t> too_long(257, 5);  // context_length is 256
  EXPECT_THROW((void)t.model.forward(too_long, cache), Error);
}

// ---------------------------------------------------------------- model-level consistency
void expect_model_error(testing::GgufBuilder g, const std::string& needle) {
  try {
    (void)LlamaModel::from_gguf(GgufFile::parse(g.build(), "bad-model.gguf"));
    ADD_FAILURE() << "loaded an inconsistent model; expected '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Format) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(TinyLlama, InconsistentModelsAreRejected) {
  {
    testing::TinyLlamaSpec s;
    s.heads = 4;
    s.kv_heads = 3;
    expect_model_error(testing::tiny_llama(s), "not a multiple of head_count_kv");
  }
  {
    testing::TinyLlamaSpec s;
    s.hidden = 60;  // 60 / 8 heads
    s.heads = 8;
    s.kv_heads = 8;
    s.q8_embeddings = false;
    expect_model_error(testing::tiny_llama(s), "not a multiple of attention.head_count");
  }
  {
    auto g = testing::tiny_llama({});
    g.add_u32("llama.vocab_size", 301);
    expect_model_error(g, "vocab_size 301");
  }
  {
    auto g = testing::tiny_llama({});
    g.add_tensor(testing::f32_tensor("blk.0.attn_q.bias", {64}, std::vector<float>(64, 0.f)));
    expect_model_error(g, "bias");
  }
  {
    testing::TinyLlamaSpec s;
    s.layers = 2;
    auto g = testing::tiny_llama(s);
    g.add_u32("llama.block_count", 3);  // duplicate key: caught by the reader
    EXPECT_THROW((void)GgufFile::parse(g.build()), Error);
  }
  {
    // Declares more layers than the file has: tensor missing.
    testing::GgufBuilder g;
    testing::TinyLlamaSpec s;
    s.layers = 1;
    g = testing::tiny_llama(s);
    auto bytes = g.build();
    const std::string key = "llama.block_count";
    const auto at = std::search(bytes.begin(), bytes.end(), key.begin(), key.end()) - bytes.begin();
    bytes[std::size_t(at) + key.size() + 4] = 2;  // the uint32 after the type tag
    try {
      (void)LlamaModel::from_gguf(GgufFile::parse(bytes));
      ADD_FAILURE() << "loaded a model with a missing layer";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("blk.1.attn_norm.weight' is missing"), std::string::npos) << e.what();
    }
  }
  {
    // A weight of the wrong shape: swap attn_k's dims by writing a file whose attn_k is [kv, hidden].
    testing::GgufBuilder g;
    testing::TinyLlamaSpec s;
    s.layers = 1;
    g = testing::tiny_llama(s);
    testing::GgufBuilder::Layout layout;
    auto bytes = g.build(&layout);
    const GgufFile f = GgufFile::parse(bytes);
    std::size_t index = 0;
    for (; index < f.tensors().size(); ++index)
      if (f.tensors()[index].name == "blk.0.attn_k.weight") break;
    ASSERT_LT(index, f.tensors().size());
    testing::Bytes b{bytes};
    b.patch<std::uint64_t>(layout.tensor_dims[index], 32);
    b.patch<std::uint64_t>(layout.tensor_dims[index] + 8, 64);
    try {
      (void)LlamaModel::from_gguf(GgufFile::parse(b.data));
      ADD_FAILURE() << "loaded a model with a mis-shaped weight";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("has shape [32, 64], the hyperparameters require [64, 32]"), std::string::npos)
          << e.what();
    }
  }
  {
    // Non-finite weights (an fp16 infinity scale) are refused at load.
    testing::TinyLlamaSpec s;
    s.layers = 1;
    auto g = testing::tiny_llama(s);
    testing::GgufBuilder::Layout layout;
    auto bytes = g.build(&layout);
    const GgufFile f = GgufFile::parse(bytes);
    const TensorInfo* emb = f.find_tensor("token_embd.weight");
    bytes[emb->file_offset] = 0x00;
    bytes[emb->file_offset + 1] = 0x7C;  // first Q8_0 block's scale = +inf
    try {
      (void)LlamaModel::from_gguf(GgufFile::parse(bytes));
      ADD_FAILURE() << "loaded non-finite weights";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("non-finite"), std::string::npos) << e.what();
    }
  }
  {
    testing::GgufBuilder g;
    g.add_string("general.architecture", "gpt2");
    expect_model_error(g, "only 'llama'");
  }
}

// ---------------------------------------------------------------- the real model
// Forward passes of the 135M model under ASan+UBSan take minutes; the sanitizer build covers the
// same code on the tiny model above and skips these.
#ifdef XKV_SANITIZE
#define XKV_SKIP_HEAVY_UNDER_SANITIZER() GTEST_SKIP() << "real-model forward skipped in the sanitizer build (time)"
#else
#define XKV_SKIP_HEAVY_UNDER_SANITIZER() (void)0
#endif

TEST(RealModel, HyperparametersComeFromTheFile) {
  XKV_REQUIRE_REAL_MODEL(path);
  auto& real = testing::RealModel::get(path);
  const LlamaConfig c = LlamaConfig::from_gguf(real.file);
  EXPECT_EQ(c.num_layers, real.file.get_int("llama.block_count", 1, 4096));
  EXPECT_EQ(c.hidden, real.file.get_int("llama.embedding_length", 1, 1 << 20));
  EXPECT_EQ(c.num_heads, real.file.get_int("llama.attention.head_count", 1, 4096));
  EXPECT_EQ(c.num_kv_heads, real.file.get_int("llama.attention.head_count_kv", 1, 4096));
  EXPECT_EQ(c.head_dim * c.num_heads, c.hidden);
  EXPECT_DOUBLE_EQ(c.rope.theta, real.file.get_float("llama.rope.freq_base"));
  EXPECT_EQ(c.vocab_size, real.tokenizer.vocab_size());
}

TEST(RealModel, CapitalOfFranceIsParis) {
  XKV_REQUIRE_REAL_MODEL(path);
  XKV_SKIP_HEAVY_UNDER_SANITIZER();
  auto& real = testing::RealModel::get(path);
  const LlamaModel& model = real.llama();
  const auto prompt = real.tokenizer.encode("The capital of France is");
  PlainKvCache cache = model.make_plain_cache();
  const RowMatrix logits = model.forward(prompt, cache, Logits::Last);
  GreedyOptions greedy;
  greedy.max_new_tokens = 3;
  const auto out = greedy_decode(model, cache, std::span<const float>(logits.data(), std::size_t(logits.cols())), greedy);
  EXPECT_EQ(real.tokenizer.decode(std::span(out).first(1)), " Paris") << real.tokenizer.decode(out);
}

TEST(RealModel, LogitsAreStableAcrossRuns) {
  XKV_REQUIRE_REAL_MODEL(path);
  XKV_SKIP_HEAVY_UNDER_SANITIZER();
  auto& real = testing::RealModel::get(path);
  const LlamaModel& model = real.llama();
  const auto prompt = real.tokenizer.encode("Once upon a time, in a small village by the sea,");
  PlainKvCache a = model.make_plain_cache(), b = model.make_plain_cache();
  const RowMatrix first = model.forward(prompt, a, Logits::All);
  const RowMatrix second = model.forward(prompt, b, Logits::All);
  EXPECT_LE((first - second).cwiseAbs().maxCoeff(), 1e-5 * max_abs(first));
  // The first tokens' logits do not depend on how much follows them (causality) nor on batching.
  PlainKvCache c = model.make_plain_cache();
  const RowMatrix prefix = model.forward(std::span(prompt).first(4), c, Logits::All);
  EXPECT_LE((prefix - first.topRows(4)).cwiseAbs().maxCoeff(), 1e-4 * max_abs(first));
  EXPECT_TRUE(first.allFinite());
}

TEST(RealModel, PerplexityOnALicenseText) {
  XKV_REQUIRE_REAL_MODEL(path);
  XKV_SKIP_HEAVY_UNDER_SANITIZER();
  std::ifstream in("/usr/share/common-licenses/Apache-2.0");
  if (!in) GTEST_SKIP() << "/usr/share/common-licenses/Apache-2.0 is not installed";
  std::stringstream ss;
  ss << in.rdbuf();
  auto& real = testing::RealModel::get(path);
  auto tokens = real.tokenizer.encode(ss.str());
  ASSERT_GT(tokens.size(), 512u);
  tokens.resize(512);
  const double ppl = std::exp(mean_nll(real.llama(), tokens));
  std::printf("perplexity of SmolLM2-135M on the first 512 tokens of Apache-2.0: %.3f\n", ppl);
  // Established range: 15.95 measured here, and 15.9455 from an independent fp64 NumPy forward of
  // the same file (gguf-py's dequantisation, llama.cpp's interleaved RoPE) on the same 512 tokens.
  // fp32 rounding and thread-count-dependent summation order move it by far less than 1%. Bugs
  // move it far more: RoPE with half-split pairs gives 317; a uniform guess is 49152. The window
  // [12, 20] allows for numerics, not for a broken forward.
  EXPECT_GT(ppl, 12.0);
  EXPECT_LT(ppl, 20.0);
}

TEST(RealModel, CompressedCacheAtFullRankDecodesLikePlain) {
  XKV_REQUIRE_REAL_MODEL(path);
  XKV_SKIP_HEAVY_UNDER_SANITIZER();
  auto& real = testing::RealModel::get(path);
  const LlamaModel& model = real.llama();
  const auto prompt = real.tokenizer.encode("The three primary colours are red, yellow and blue. Mixing red and yellow gives");
  PlainKvCache plain = model.make_plain_cache();
  const RowMatrix logits = model.forward(prompt, plain, Logits::Last);
  const int n = static_cast<int>(prompt.size());
  CacheOptions options;
  options.grouping = LayerGrouping::consecutive(model.config().num_layers, 4);
  options.policy = RankPolicy::fixed(n, n);  // full rank: n < 4 * kv_width
  CompressedKvCache compressed(plain, options);
  GreedyOptions greedy;
  greedy.max_new_tokens = 16;
  const std::span<const float> last(logits.data(), std::size_t(logits.cols()));
  const auto plain_out = greedy_decode(model, plain, last, greedy);
  const auto xkv_out = greedy_decode(model, compressed, last, greedy);
  EXPECT_EQ(plain_out, xkv_out) << "plain: " << real.tokenizer.decode(plain_out)
                                << "\nxkv:   " << real.tokenizer.decode(xkv_out);
}

}  // namespace
}  // namespace xkv::model
