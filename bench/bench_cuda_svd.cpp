// GPU truncated SVD of one layer group (bf16), timed with CUDA events (median of repetitions).
// Shapes: n in {4096, 32768, 131072} tokens, D in {1152, 4096, 8192} columns, rank 512.
//   D = 1152: G = 2 layers of one 576-wide MLA-style latent; D = 4096 / 8192: G = 4 layers of
//   8 / 16 heads x 128. The layers are strided token-major views into one row-major [n x D]
//   buffer (token stride D), so the compressor reads X in place; the *_separate_layers runs copy
//   each layer into its own buffer first (a per-layer KV cache), so X is staged chunk by chunk.
// The exact method (cuSOLVER Gram + Xsyevd) runs in the same process as the baseline, and its
// spectrum gives the Eckart-Young optimum for the err/opt counter.
#include <benchmark/benchmark.h>

#include <cmath>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "svd_bench_data.hpp"
#include "xkv/cuda/compressor.hpp"
#include "xkv/cuda/device.hpp"

namespace {

using xkv::cuda::GpuSvdMethod;
using bf16 = __nv_bfloat16;

constexpr int kRank = 512;

struct Group {
  xkv::cuda::DeviceBuffer<bf16> x;  ///< row-major [n x D]; layer l is columns [l*W, (l+1)*W)
  std::vector<xkv::KVView<bf16>> layers;
  std::vector<xkv::cuda::DeviceBuffer<bf16>> separate;  ///< the layers copied to their own buffers
  std::vector<xkv::KVView<bf16>> separate_layers;
  double optimum_squared = -1;  ///< sum_{i >= r} s_i^2 from the exact method
};

struct Shape {
  int layers, heads, head_dim;
};
Shape shape_for(int d) {
  if (d == 1152) return {2, 1, 576};
  return {4, d / 512, 128};
}

Group& group(std::int64_t n, int d) {
  static std::map<std::pair<std::int64_t, int>, std::unique_ptr<Group>> cache;
  auto& slot = cache[{n, d}];
  if (!slot) {
    slot = std::make_unique<Group>();
    slot->x = xkv::cuda::DeviceBuffer<bf16>(std::size_t(n) * d);
    xkv::bench::fill_test_matrix(slot->x.get(), n, d, 0.6, 0x5EED + n + d);
    const Shape s = shape_for(d);
    const int width = s.heads * s.head_dim;
    for (int l = 0; l < s.layers; ++l)
      slot->layers.push_back({slot->x.get() + l * width, n, s.heads, s.head_dim, d, s.head_dim});
  }
  return *slot;
}

/// The group's layers in separate token-major buffers, made on first use.
const std::vector<xkv::KVView<bf16>>& separate_layers(Group& g, std::int64_t n, int d) {
  if (g.separate_layers.empty()) {
    const Shape s = shape_for(d);
    const int width = s.heads * s.head_dim;
    for (int l = 0; l < s.layers; ++l) {
      g.separate.emplace_back(std::size_t(n) * width);
      XKV_CUDA_CHECK(cudaMemcpy2D(g.separate.back().get(), width * sizeof(bf16), g.x.get() + l * width,
                                  d * sizeof(bf16), width * sizeof(bf16), n, cudaMemcpyDeviceToDevice));
      g.separate_layers.push_back(xkv::KVView<bf16>::token_major(g.separate.back().get(), n, s.heads, s.head_dim));
    }
    XKV_CUDA_CHECK(cudaDeviceSynchronize());
  }
  return g.separate_layers;
}

struct Outputs {
  xkv::cuda::DeviceBuffer<bf16> a, b;
  xkv::cuda::DeviceBuffer<double> energies{2};
  Outputs(std::int64_t n, int d) : a(std::size_t(n) * kRank), b(std::size_t(d) * kRank) {}
};

xkv::cuda::SvdArguments<bf16> arguments(Group& g, Outputs& out) {
  xkv::cuda::SvdArguments<bf16> args;
  args.layers = g.layers;
  args.rank = kRank;
  args.a = out.a.get();
  args.b = out.b.get();
  args.energies = out.energies.get();
  return args;
}

double optimum_squared(Group& g, std::int64_t n, int d) {
  if (g.optimum_squared < 0) {
    Outputs out(n, d);
    xkv::cuda::GpuCompressorOptions opt;
    opt.method = GpuSvdMethod::Exact;
    xkv::cuda::Compressor<bf16> exact(opt);
    xkv::cuda::Stream stream;
    (void)exact.compress_stream(arguments(g, out), stream.get());
    double e[2];
    XKV_CUDA_CHECK(cudaMemcpy(e, out.energies.get(), sizeof(e), cudaMemcpyDeviceToHost));
    g.optimum_squared = e[0] - e[1];
  }
  return g.optimum_squared;
}

void bm_svd(benchmark::State& state, std::int64_t n, int d, GpuSvdMethod method, int power_iterations,
            bool separate) {
  if (!xkv::cuda::device_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  Group& g = group(n, d);
  const double opt2 = optimum_squared(g, n, d);
  Outputs out(n, d);
  xkv::cuda::GpuCompressorOptions opt;
  opt.method = method;
  if (power_iterations >= 0) opt.power_iterations = power_iterations;
  xkv::cuda::Compressor<bf16> svd(opt);
  auto args = arguments(g, out);
  if (separate) args.layers = separate_layers(g, n, d);
  xkv::cuda::DeviceBuffer<char> ws(svd.workspace_bytes(args));
  xkv::cuda::Stream stream;
  xkv::cuda::EventTimer timer;
  (void)svd.run(args, ws.get(), ws.bytes(), stream.get());  // warm-up
  svd.check(stream.get());
  for (auto _ : state) {
    timer.start(stream.get());
    (void)svd.run(args, ws.get(), ws.bytes(), stream.get());
    state.SetIterationTime(timer.stop(stream.get()) / 1e3);
  }
  svd.check(stream.get());
  const double err2 = xkv::bench::squared_error(g.x.get(), out.a.get(), out.b.get(), n, d,
                                                shape_for(d).heads * shape_for(d).head_dim, kRank);
  state.counters["err_over_opt"] = std::sqrt(err2 / opt2);
  state.counters["workspace_MiB"] = double(ws.bytes()) / (1 << 20);
  state.counters["workspace_over_input"] = double(ws.bytes()) / (double(n) * d * sizeof(bf16));
}

}  // namespace

int main(int argc, char** argv) {
  for (const std::int64_t n : {4096, 32768, 131072}) {
    for (const int d : {1152, 4096, 8192}) {
      const std::string shape = "n=" + std::to_string(n) + "/D=" + std::to_string(d) + "/r=" + std::to_string(kRank);
      benchmark::RegisterBenchmark(("gpu_svd_randomized_p64_q2/" + shape).c_str(), bm_svd, n, d, GpuSvdMethod::Randomized, 2, false)
          ->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(5)->Repetitions(5)->ReportAggregatesOnly(true);
      // Subspace iteration needs one more power iteration for the same err/opt (no oversampling).
      benchmark::RegisterBenchmark(("gpu_svd_subspace_q3/" + shape).c_str(), bm_svd, n, d, GpuSvdMethod::Subspace, 3, false)
          ->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(5)->Repetitions(5)->ReportAggregatesOnly(true);
      if (n >= 32768 && d == 4096)
        benchmark::RegisterBenchmark(("gpu_svd_subspace_q3_separate_layers/" + shape).c_str(), bm_svd, n, d,
                                     GpuSvdMethod::Subspace, 3, true)
            ->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(5)->Repetitions(5)->ReportAggregatesOnly(true);
      if (n <= 32768 && d <= 4096)
        benchmark::RegisterBenchmark(("gpu_svd_exact_gram_syevd/" + shape).c_str(), bm_svd, n, d, GpuSvdMethod::Exact, -1, false)
            ->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(2)->Repetitions(3)->ReportAggregatesOnly(true);
    }
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
