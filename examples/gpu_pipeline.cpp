// gpu_pipeline: the whole xKV path on one GPU, as an inference engine would run it after prefill.
//   1. a group of G layers' pre-RoPE keys and values sits in device memory (here: synthetic,
//      Llama-3.1-8B shaped, one buffer per layer);
//   2. ConcurrentCompressor factors keys and values of the group side by side on the GPU
//      (A shared by the group, B_l per layer, and B_l transposed for the wgmma kernels);
//   3. layer l's keys come back with RoPE applied, for every token and for a gathered selection
//      (sparse decode), and its values without RoPE, straight from the factors on the device.
// Prints times (CUDA events), the memory saved and the error against the exact rotated keys.
//
//   gpu_pipeline [--tokens N] [--layers G] [--key-rank r] [--value-rank r] [--gather K] [--seed S]
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "xkv/cuda/compressor.hpp"
#include "xkv/cuda/concurrent_compressor.hpp"
#include "xkv/cuda/device.hpp"
#include "xkv/cuda/reconstruct.hpp"
#include "xkv/rope.hpp"

namespace {

using bf16 = __nv_bfloat16;

struct Options {
  std::int64_t tokens = 8192;
  int layers = 4;
  int heads = 8;
  int head_dim = 128;
  int key_rank = 512;
  int value_rank = 768;
  std::int64_t gather = 2048;
  std::uint64_t seed = 11;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    const long long v = std::atoll(argv[i + 1]);
    if (key == "--tokens") o.tokens = v;
    else if (key == "--layers") o.layers = int(v);
    else if (key == "--key-rank") o.key_rank = int(v);
    else if (key == "--value-rank") o.value_rank = int(v);
    else if (key == "--gather") o.gather = v;
    else if (key == "--seed") o.seed = std::uint64_t(v);
    else throw xkv::Error(xkv::ErrorKind::InvalidArgument, "unknown option " + key);
  }
  XKV_REQUIRE(o.tokens >= 1 && o.layers >= 1 && o.gather >= 1, "--tokens, --layers and --gather must be >= 1");
  return o;
}

// Per-layer [tokens x H*d] matrices that share a power-law token latent through slowly drifting
// mixing matrices (adjacent layers share dominant directions), plus noise: the structure xKV uses.
std::vector<std::vector<float>> synthetic_layers(const Options& o, int latent, float decay, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  const int width = o.heads * o.head_dim;
  std::vector<float> tokens(std::size_t(o.tokens) * latent);
  for (std::int64_t t = 0; t < o.tokens; ++t)
    for (int j = 0; j < latent; ++j) tokens[std::size_t(t * latent + j)] = std::pow(float(j + 1), -decay) * normal(rng);
  std::vector<float> mixing(std::size_t(latent) * width);
  for (float& m : mixing) m = normal(rng);
  std::vector<std::vector<float>> layers;
  for (int l = 0; l < o.layers; ++l) {
    for (float& m : mixing) m = 0.9f * m + 0.436f * normal(rng);  // drift from layer to layer
    std::vector<float> x(std::size_t(o.tokens) * width);
    for (std::int64_t t = 0; t < o.tokens; ++t) {
      float* row = x.data() + t * width;
      for (int j = 0; j < latent; ++j) {
        const float a = tokens[std::size_t(t * latent + j)];
        const float* m = mixing.data() + std::size_t(j) * width;
        for (int c = 0; c < width; ++c) row[c] += a * m[c];
      }
      for (int c = 0; c < width; ++c) row[c] += 0.02f * normal(rng);
    }
    layers.push_back(std::move(x));
  }
  return layers;
}

std::vector<bf16> to_bf16(const std::vector<float>& x) {
  std::vector<bf16> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = __float2bfloat16(x[i]);
  return out;
}

std::vector<float> download(const xkv::cuda::DeviceBuffer<bf16>& buf, std::size_t count) {
  std::vector<bf16> host(count);
  XKV_CUDA_CHECK(cudaMemcpy(host.data(), buf.get(), count * sizeof(bf16), cudaMemcpyDeviceToHost));
  std::vector<float> out(count);
  for (std::size_t i = 0; i < count; ++i) out[i] = __bfloat162float(host[i]);
  return out;
}

// Milliseconds of `work` on `stream`, by CUDA events.
template <class Work>
float timed_ms(cudaStream_t stream, Work&& work) {
  xkv::cuda::EventTimer timer;
  timer.start(stream);
  work();
  return timer.stop(stream);
}

int run(const Options& o) {
  const int width = o.heads * o.head_dim;
  const std::int64_t d = std::int64_t(o.layers) * width;
  std::printf("group of %d layers, %lld tokens, %d KV heads x %d, bf16; ranks K %d, V %d\n", o.layers,
              static_cast<long long>(o.tokens), o.heads, o.head_dim, o.key_rank, o.value_rank);
  const auto keys = synthetic_layers(o, 192, 0.9f, o.seed);
  const auto values = synthetic_layers(o, 256, 0.6f, o.seed + 1);

  // 1. The prefill's K/V in device memory, one buffer per layer (token-major [n, H, d]).
  std::vector<xkv::cuda::DeviceBuffer<bf16>> key_buffers, value_buffers;
  std::vector<xkv::KVView<bf16>> key_views, value_views;
  for (int l = 0; l < o.layers; ++l) {
    for (auto* side : {&keys, &values}) {
      const auto host = to_bf16((*side)[std::size_t(l)]);
      auto& buffers = side == &keys ? key_buffers : value_buffers;
      buffers.emplace_back(host.size());
      XKV_CUDA_CHECK(cudaMemcpy(buffers.back().get(), host.data(), host.size() * sizeof(bf16), cudaMemcpyHostToDevice));
      (side == &keys ? key_views : value_views)
          .push_back(xkv::KVView<bf16>::token_major(buffers.back().get(), o.tokens, o.heads, o.head_dim));
    }
  }

  // 2. Factor keys and values of the group side by side. B_l^T is written too: the fast
  //    reconstruct kernels read it.
  struct Factors {
    xkv::cuda::DeviceBuffer<bf16> a, b, bt;
    int rank;
  };
  Factors kf{xkv::cuda::DeviceBuffer<bf16>(std::size_t(o.tokens) * o.key_rank),
             xkv::cuda::DeviceBuffer<bf16>(std::size_t(d) * o.key_rank),
             xkv::cuda::DeviceBuffer<bf16>(std::size_t(d) * o.key_rank), o.key_rank};
  Factors vf{xkv::cuda::DeviceBuffer<bf16>(std::size_t(o.tokens) * o.value_rank),
             xkv::cuda::DeviceBuffer<bf16>(std::size_t(d) * o.value_rank),
             xkv::cuda::DeviceBuffer<bf16>(std::size_t(d) * o.value_rank), o.value_rank};
  std::vector<xkv::cuda::SvdArguments<bf16>> jobs(2);
  for (int s = 0; s < 2; ++s) {
    Factors& f = s == 0 ? kf : vf;
    jobs[std::size_t(s)].layers = s == 0 ? std::span<const xkv::KVView<bf16>>(key_views)
                                         : std::span<const xkv::KVView<bf16>>(value_views);
    jobs[std::size_t(s)].rank = f.rank;
    jobs[std::size_t(s)].a = f.a.get();
    jobs[std::size_t(s)].b = f.b.get();
    jobs[std::size_t(s)].bt = f.bt.get();
  }
  xkv::cuda::ConcurrentCompressor<bf16> compressor;
  xkv::cuda::Stream stream;
  (void)compressor.run(jobs, stream.get());  // warm-up: handles, workspaces, kernel loading
  compressor.check(stream.get());
  const float compress_ms = timed_ms(stream.get(), [&] { (void)compressor.run(jobs, stream.get()); });
  compressor.check(stream.get());
  const double original = 2.0 * double(o.tokens) * double(d) * sizeof(bf16);
  const double compressed =
      double(o.tokens) * (o.key_rank + o.value_rank) * sizeof(bf16) + double(d) * (o.key_rank + o.value_rank) * sizeof(bf16);
  std::printf("compress (keys and values, on the GPU): %.2f ms; %.1f MiB -> %.1f MiB (%.2fx smaller)\n", compress_ms,
              original / 1048576.0, compressed / 1048576.0, original / compressed);

  // 3. Layer `layer`'s keys with RoPE (positions 0..n-1) and values, from the factors.
  const int layer = std::min(2, o.layers - 1);
  auto params = [&](const Factors& f, bool rope, void* out, std::int64_t rows) {
    xkv::cuda::ReconstructParams p;
    p.dtype = xkv::cuda::ScalarType::BFloat16;
    p.a = f.a.get();
    p.a_rows = o.tokens;
    p.lda = f.rank;
    p.rank = f.rank;
    p.b = f.b.get() + std::size_t(layer) * f.rank * width;
    p.ldb = width;
    p.bt = f.bt.get() + std::size_t(layer) * width * f.rank;
    p.ldbt = f.rank;
    p.heads = o.heads;
    p.head_dim = o.head_dim;
    p.tokens = o.tokens;
    p.rope = rope ? xkv::RopeConfig{} : xkv::RopeConfig::disabled();
    p.out = xkv::cuda::OutputSpec::token_major(out, rows, o.heads, o.head_dim);
    return p;
  };
  xkv::cuda::DeviceBuffer<bf16> keys_out(std::size_t(o.tokens) * width), values_out(std::size_t(o.tokens) * width);
  const xkv::cuda::Reconstruct rebuild_keys(params(kf, true, keys_out.get(), o.tokens));
  const xkv::cuda::Reconstruct rebuild_values(params(vf, false, values_out.get(), o.tokens));
  rebuild_keys.run(stream.get());  // warm-up (the first launch of a kernel loads it)
  rebuild_values.run(stream.get());
  const float keys_us = 1000.f * timed_ms(stream.get(), [&] { rebuild_keys.run(stream.get()); });
  const float values_us = 1000.f * timed_ms(stream.get(), [&] { rebuild_values.run(stream.get()); });

  // A gathered selection (sparse decode): random tokens, written to rows 0..K-1.
  const std::int64_t k = std::min(o.gather, o.tokens);
  std::vector<std::int64_t> picked(static_cast<std::size_t>(k));
  std::mt19937_64 rng(o.seed + 2);
  for (auto& t : picked) t = std::int64_t(rng() % std::uint64_t(o.tokens));
  xkv::cuda::DeviceBuffer<std::int64_t> indices(picked.size());
  XKV_CUDA_CHECK(cudaMemcpy(indices.get(), picked.data(), picked.size() * sizeof(std::int64_t), cudaMemcpyHostToDevice));
  xkv::cuda::DeviceBuffer<bf16> gathered_out(std::size_t(k) * width);
  auto gp = params(kf, true, gathered_out.get(), k);
  gp.tokens = k;
  gp.token_indices = indices.get();
  const xkv::cuda::Reconstruct rebuild_gathered(gp);
  rebuild_gathered.run(stream.get());  // warm-up
  const float gathered_us = 1000.f * timed_ms(stream.get(), [&] { rebuild_gathered.run(stream.get()); });
  stream.synchronize();
  const char* kernel = rebuild_keys.selected_kernel() == xkv::cuda::KernelPath::Wgmma ? "wgmma" : "mma.sync";
  std::printf("layer %d keys + RoPE, all %lld tokens: %.1f us (%s); values: %.1f us; %lld gathered tokens: %.1f us\n",
              layer, static_cast<long long>(o.tokens), keys_us, kernel, values_us, static_cast<long long>(k), gathered_us);

  // Errors against the exact tensors: rotated keys (fp64 RoPE on the original keys) and values.
  const auto inv_freq = xkv::RopeConfig{}.inverse_frequencies(o.head_dim);
  const auto got_keys = download(keys_out, std::size_t(o.tokens) * width);
  const auto got_values = download(values_out, std::size_t(o.tokens) * width);
  const auto got_gathered = download(gathered_out, std::size_t(k) * width);
  double key_err = 0, key_norm = 0, value_err = 0, value_norm = 0, gather_diff = 0;
  std::vector<double> head(std::size_t(o.head_dim));
  for (std::int64_t t = 0; t < o.tokens; ++t)
    for (int h = 0; h < o.heads; ++h) {
      const std::size_t at = std::size_t(t * width + h * o.head_dim);
      for (int i = 0; i < o.head_dim; ++i) head[std::size_t(i)] = keys[std::size_t(layer)][at + std::size_t(i)];
      xkv::apply_rope_head(head.data(), o.head_dim, t, xkv::RopeStyle::HalfSplit, inv_freq);
      for (int i = 0; i < o.head_dim; ++i) {
        const double e = got_keys[at + std::size_t(i)] - head[std::size_t(i)];
        key_err += e * e;
        key_norm += head[std::size_t(i)] * head[std::size_t(i)];
        const double v = values[std::size_t(layer)][at + std::size_t(i)];
        const double f = got_values[at + std::size_t(i)] - v;
        value_err += f * f;
        value_norm += v * v;
      }
    }
  for (std::int64_t j = 0; j < k; ++j)  // the gathered rows are the dense rows of the same tokens
    for (int c = 0; c < width; ++c)
      gather_diff = std::max(gather_diff, std::abs(double(got_gathered[std::size_t(j * width + c)]) -
                                                   double(got_keys[std::size_t(picked[std::size_t(j)] * width + c)])));
  std::printf("relative error: rotated keys %.4f, values %.4f; gathered vs dense rows: max |diff| %.3g\n",
              std::sqrt(key_err / key_norm), std::sqrt(value_err / value_norm), gather_diff);
  return 0;
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  if (!xkv::cuda::device_available()) {
    std::printf("gpu_pipeline: no CUDA device; nothing to run\n");
    return 0;
  }
  return run(o);
} catch (const std::exception& e) {
  std::fprintf(stderr, "gpu_pipeline: %s\n", e.what());
  return 1;
}
