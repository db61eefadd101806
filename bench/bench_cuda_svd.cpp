// GPU truncated SVD of one layer group (bf16), timed with CUDA events (median of repetitions).
// Shapes: n in {4096, 32768, 131072} tokens, D in {1152, 4096, 8192} columns, rank 512.
//   D = 1152: G = 2 layers of one 576-wide MLA-style latent; D = 4096 / 8192: G = 4 layers of
//   8 / 16 heads x 128. The layers are strided token-major views into one row-major [n x D]
//   buffer (token stride D), so the compressor reads X in place; the *_separate_layers runs copy
//   each layer into its own buffer first (a per-layer KV cache), so X is staged chunk by chunk.
// gpu_svd_whole_model_32k: all 16 factorisations of a Llama-3.1-8B 32k prefill, on 1, 4 or 8 streams.
// The exact method (cuSOLVER Gram + Xsyevd) runs in the same process as the baseline, and its
// spectrum gives the Eckart-Young optimum for the err/opt counter.
#include <benchmark/benchmark.h>

#include <cmath>
#include <map>
#include <exception>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "svd_bench_data.hpp"
#include "xkv/cuda/compressor.hpp"
#include "xkv/cuda/concurrent_compressor.hpp"
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

/// How the Gram product's rounds run (GpuCompressorOptions::gram_filter, chebyshev_rounds,
/// gram_precision, plain_last_round).
struct GramRounds {
  xkv::cuda::GramFilter filter;
  int chebyshev_rounds;
  xkv::cuda::GramPrecision precision;
  bool plain_last_round = false;

  void apply(xkv::cuda::GpuCompressorOptions& opt) const {
    opt.gram_filter = filter;
    opt.chebyshev_rounds = chebyshev_rounds;
    opt.gram_precision = precision;
    opt.plain_last_round = plain_last_round;
  }
};
constexpr GramRounds kDefaultRounds{xkv::cuda::GramFilter::Chebyshev, 2, xkv::cuda::GramPrecision::Fp16};
constexpr GramRounds kPlainLastRounds{xkv::cuda::GramFilter::Chebyshev, 2, xkv::cuda::GramPrecision::Fp16, true};
constexpr GramRounds kOneChebyshevRound{xkv::cuda::GramFilter::Chebyshev, 1, xkv::cuda::GramPrecision::Fp16};
constexpr GramRounds kPlainRounds{xkv::cuda::GramFilter::Power, 0, xkv::cuda::GramPrecision::Fp16};
constexpr GramRounds kTf32Rounds{xkv::cuda::GramFilter::Chebyshev, 2, xkv::cuda::GramPrecision::Tf32};
constexpr GramRounds kSplitRounds{xkv::cuda::GramFilter::Chebyshev, 2, xkv::cuda::GramPrecision::Fp16Split};

void bm_svd(benchmark::State& state, std::int64_t n, int d, GpuSvdMethod method, int power_iterations,
            bool separate, xkv::cuda::SubspaceProduct product, GramRounds rounds) {
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
  opt.subspace_product = product;
  rounds.apply(opt);
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
  state.counters["gram"] = svd.gram_product_for(args) ? 1 : 0;
  state.counters["workspace_MiB"] = double(ws.bytes()) / (1 << 20);
  state.counters["workspace_over_input"] = double(ws.bytes()) / (double(n) * d * sizeof(bf16));
}

constexpr std::int64_t kModelTokens = 32768;
constexpr int kModelWidth = 4096, kModelFactorisations = 16;

/// The 16 distinct [32768 x 4096] bf16 matrices of the whole-model benchmarks, made once.
const std::vector<xkv::cuda::DeviceBuffer<bf16>>& whole_model_inputs() {
  static std::vector<xkv::cuda::DeviceBuffer<bf16>> inputs;
  if (inputs.empty())
    for (int f = 0; f < kModelFactorisations; ++f) {
      inputs.emplace_back(std::size_t(kModelTokens) * kModelWidth);
      xkv::bench::fill_test_matrix(inputs.back().get(), kModelTokens, kModelWidth, 0.6, 0xA11 + f);
    }
  return inputs;
}

/// A whole model's compression after a 32k-token prefill of Llama-3.1-8B (32 layers in groups of
/// G = 4, 8 KV heads x 128, so D = 4096): 8 key groups at r = 512 and 8 value groups at r = 768
/// (the paper's 6.4x, K:V rank 1:1.5), 16 distinct matrices read in place, default options.
/// Factorisation f runs on stream f % streams with its own Compressor and workspace; one
/// iteration is the wall time from the first launch until every stream is done. cholesky_ctas
/// caps the CTAs of the Cholesky kernel (GpuCompressorOptions::cholesky_ctas; 0: no cap).
void bm_whole_model(benchmark::State& state, int streams, int cholesky_ctas) {
  if (!xkv::cuda::device_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  constexpr std::int64_t n = kModelTokens;
  constexpr int d = kModelWidth, factorisations = kModelFactorisations;
  const auto& inputs = whole_model_inputs();
  struct Job {
    std::vector<xkv::KVView<bf16>> layers;
    xkv::cuda::DeviceBuffer<bf16> a, b;
    std::unique_ptr<xkv::cuda::Compressor<bf16>> svd;
    xkv::cuda::SvdArguments<bf16> args;
    xkv::cuda::DeviceBuffer<char> workspace;
  };
  std::vector<Job> jobs(factorisations);
  std::vector<std::unique_ptr<xkv::cuda::Stream>> lanes;
  for (int i = 0; i < streams; ++i) lanes.push_back(std::make_unique<xkv::cuda::Stream>());
  double workspace_bytes = 0;
  bool all_gram = true;
  for (int f = 0; f < factorisations; ++f) {
    Job& job = jobs[f];
    const int rank = f % 2 == 0 ? 512 : 768;  // keys and values of group f / 2, interleaved
    for (int l = 0; l < 4; ++l) job.layers.push_back({inputs[f].get() + l * 1024, n, 8, 128, d, 128});
    job.a = xkv::cuda::DeviceBuffer<bf16>(std::size_t(n) * rank);
    job.b = xkv::cuda::DeviceBuffer<bf16>(std::size_t(d) * rank);
    xkv::cuda::GpuCompressorOptions opt;
    opt.cholesky_ctas = cholesky_ctas;
    job.svd = std::make_unique<xkv::cuda::Compressor<bf16>>(opt);
    job.args.layers = job.layers;
    job.args.rank = rank;
    job.args.a = job.a.get();
    job.args.b = job.b.get();
    job.workspace = xkv::cuda::DeviceBuffer<char>(job.svd->workspace_bytes(job.args));
    workspace_bytes += double(job.workspace.bytes());
    all_gram = all_gram && job.svd->gram_product_for(job.args);
  }
  cudaEvent_t fork = nullptr;
  std::vector<cudaEvent_t> joins(std::size_t(streams), nullptr);
  XKV_CUDA_CHECK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  for (auto& e : joins) XKV_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  const cudaStream_t main_lane = lanes[0]->get();
  auto compress_all = [&] {
    XKV_CUDA_CHECK(cudaEventRecord(fork, main_lane));
    for (int i = 1; i < streams; ++i) XKV_CUDA_CHECK(cudaStreamWaitEvent(lanes[i]->get(), fork));
    for (int f = 0; f < factorisations; ++f) {
      Job& job = jobs[f];
      (void)job.svd->run(job.args, job.workspace.get(), job.workspace.bytes(), lanes[f % streams]->get());
    }
    for (int i = 1; i < streams; ++i) {
      XKV_CUDA_CHECK(cudaEventRecord(joins[i], lanes[i]->get()));
      XKV_CUDA_CHECK(cudaStreamWaitEvent(main_lane, joins[i]));
    }
  };
  compress_all();  // warm-up
  for (int f = 0; f < factorisations; ++f) jobs[f].svd->check(lanes[f % streams]->get());
  xkv::cuda::EventTimer timer;
  for (auto _ : state) {
    timer.start(main_lane);
    compress_all();
    state.SetIterationTime(timer.stop(main_lane) / 1e3);
  }
  for (int f = 0; f < factorisations; ++f) jobs[f].svd->check(lanes[f % streams]->get());
  (void)cudaEventDestroy(fork);
  for (auto& e : joins) (void)cudaEventDestroy(e);
  state.counters["gram"] = all_gram ? 1 : 0;
  state.counters["workspace_GiB"] = workspace_bytes / double(1 << 30);
}

/// The same 16 factorisations through xkv::cuda::ConcurrentCompressor, with and without lockstep
/// batches, on 8 or 16 lanes, the Cholesky capped at `cholesky_ctas` CTAs (0: the class's 16).
/// With `graph`, one run is captured into a CUDA graph after the warm-up and each iteration
/// launches the graph: the device time without the host's enqueueing of ~1000 launches.
void bm_whole_model_concurrent(benchmark::State& state, int lanes, bool lockstep, int cholesky_ctas,
                               bool graph, GramRounds rounds) {
  if (!xkv::cuda::device_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const auto& inputs = whole_model_inputs();
  std::vector<std::vector<xkv::KVView<bf16>>> layers(kModelFactorisations);
  std::vector<xkv::cuda::DeviceBuffer<bf16>> outputs;
  std::vector<xkv::cuda::SvdArguments<bf16>> jobs(kModelFactorisations);
  for (int f = 0; f < kModelFactorisations; ++f) {
    const int rank = f % 2 == 0 ? 512 : 768;
    for (int l = 0; l < 4; ++l)
      layers[f].push_back({inputs[f].get() + l * 1024, kModelTokens, 8, 128, kModelWidth, 128});
    outputs.emplace_back(std::size_t(kModelTokens) * rank);
    jobs[f].a = outputs.back().get();
    outputs.emplace_back(std::size_t(kModelWidth) * rank);
    jobs[f].b = outputs.back().get();
    jobs[f].layers = layers[f];
    jobs[f].rank = rank;
  }
  xkv::cuda::GpuCompressorOptions options;
  options.cholesky_ctas = cholesky_ctas;  // 0: the class's default cap
  rounds.apply(options);
  xkv::cuda::ConcurrentCompressor<bf16> all(options, lanes, lockstep);
  xkv::cuda::Stream stream;
  (void)all.run(jobs, stream.get());  // warm-up, and the workspaces
  all.check(stream.get());
  cudaGraphExec_t exec = nullptr;
  if (graph) {
    cudaGraph_t captured = nullptr;
    XKV_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeRelaxed));
    try {
      (void)all.run(jobs, stream.get());
    } catch (const std::exception& e) {
      (void)cudaStreamEndCapture(stream.get(), &captured);
      (void)cudaGetLastError();
      state.SkipWithError((std::string("capture failed: ") + e.what()).c_str());
      return;
    }
    XKV_CUDA_CHECK(cudaStreamEndCapture(stream.get(), &captured));
    XKV_CUDA_CHECK(cudaGraphInstantiate(&exec, captured, 0));
    XKV_CUDA_CHECK(cudaGraphDestroy(captured));
    XKV_CUDA_CHECK(cudaGraphLaunch(exec, stream.get()));  // warm-up of the graph
    all.check(stream.get());
  }
  xkv::cuda::EventTimer timer;
  for (auto _ : state) {
    timer.start(stream.get());
    if (graph) XKV_CUDA_CHECK(cudaGraphLaunch(exec, stream.get()));
    else (void)all.run(jobs, stream.get());
    state.SetIterationTime(timer.stop(stream.get()) / 1e3);
  }
  all.check(stream.get());
  if (exec) XKV_CUDA_CHECK(cudaGraphExecDestroy(exec));
  state.counters["workspace_GiB"] = double(all.workspace_bytes()) / double(1 << 30);
}

}  // namespace

int main(int argc, char** argv) {
  constexpr auto Auto = xkv::cuda::SubspaceProduct::Auto;
  for (const std::int64_t n : {4096, 32768, 131072}) {
    for (const int d : {1152, 4096, 8192}) {
      const std::string shape = "n=" + std::to_string(n) + "/D=" + std::to_string(d) + "/r=" + std::to_string(kRank);
      benchmark::RegisterBenchmark(("gpu_svd_randomized_p64_q2/" + shape).c_str(), bm_svd, n, d, GpuSvdMethod::Randomized, 2, false, Auto, kDefaultRounds)
          ->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(5)->Repetitions(5)->ReportAggregatesOnly(true);
      // The defaults: q = 4 over the sketches, two Chebyshev rounds from the Gram matrix.
      benchmark::RegisterBenchmark(("gpu_svd_subspace/" + shape).c_str(), bm_svd, n, d, GpuSvdMethod::Subspace, -1, false, Auto, kDefaultRounds)
          ->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(5)->Repetitions(5)->ReportAggregatesOnly(true);
      if (n >= 32768 && d == 4096) {  // the other rounds from the Gram matrix, for the ratios
        for (const auto& [rounds, name] : {std::pair{kPlainLastRounds, "plainlast"},
                                           std::pair{kOneChebyshevRound, "chebyshev1"}, std::pair{kPlainRounds, "power"},
                                           std::pair{kTf32Rounds, "tf32"}, std::pair{kSplitRounds, "split"}})
          benchmark::RegisterBenchmark(("gpu_svd_subspace_" + std::string(name) + "/" + shape).c_str(), bm_svd, n, d,
                                       GpuSvdMethod::Subspace, -1, false, Auto, rounds)
              ->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(5)->Repetitions(5)->ReportAggregatesOnly(true);
      }
      // Separate layer buffers (staged token chunks): at n = 4096 the chunk fits beside the sketch
      // within half of the input.
      if ((n >= 32768 && d == 4096) || n == 4096)
        benchmark::RegisterBenchmark(("gpu_svd_subspace_separate_layers/" + shape).c_str(), bm_svd, n, d,
                                     GpuSvdMethod::Subspace, -1, true, Auto, kDefaultRounds)
            ->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(5)->Repetitions(5)->ReportAggregatesOnly(true);
      if (n >= 32768 && d == 4096) {
        // The sketch product on the same matrix, for the ratio (Auto picks the Gram product here).
        benchmark::RegisterBenchmark(("gpu_svd_subspace_sketch/" + shape).c_str(), bm_svd, n, d,
                                     GpuSvdMethod::Subspace, -1, false, xkv::cuda::SubspaceProduct::Sketch, kDefaultRounds)
            ->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(5)->Repetitions(5)->ReportAggregatesOnly(true);
      }
      if (n <= 32768 && d <= 4096)
        benchmark::RegisterBenchmark(("gpu_svd_exact_gram_syevd/" + shape).c_str(), bm_svd, n, d, GpuSvdMethod::Exact, -1, false, Auto, kDefaultRounds)
            ->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(2)->Repetitions(3)->ReportAggregatesOnly(true);
    }
  }
  for (const int streams : {1, 4, 8, 16})
    for (const int ctas : {0, 1, 4, 8, 16, 32}) {
      benchmark::RegisterBenchmark(("gpu_svd_whole_model_32k/streams=" + std::to_string(streams) +
                                    "/cholesky_ctas=" + std::to_string(ctas)).c_str(),
                                   bm_whole_model, streams, ctas)
          ->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(3)->Repetitions(3)->ReportAggregatesOnly(true);
    }
  for (const int lanes : {8, 16})
    for (const bool lockstep : {false, true})
      for (const int ctas : {0, 8, 32}) {
        if (ctas != 0 && !lockstep) continue;  // the lanes without lockstep: see whole_model_32k above
        benchmark::RegisterBenchmark(("gpu_svd_whole_model_32k_concurrent_compressor/lanes=" + std::to_string(lanes) +
                                      (lockstep ? "/lockstep" : "") + (ctas ? "/cholesky_ctas=" + std::to_string(ctas) : "")).c_str(),
                                     bm_whole_model_concurrent, lanes, lockstep, ctas, false, kDefaultRounds)
            ->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(3)->Repetitions(3)->ReportAggregatesOnly(true);
      }
  for (const int lanes : {8, 16})
    for (const bool lockstep : {false, true})
      for (const auto& [rounds, variant] : {std::pair{kDefaultRounds, ""}, std::pair{kPlainLastRounds, "/plainlast"},
                                            std::pair{kOneChebyshevRound, "/chebyshev1"},
                                            std::pair{kPlainRounds, "/power"}, std::pair{kTf32Rounds, "/tf32"},
                                            std::pair{kSplitRounds, "/split"}})
        benchmark::RegisterBenchmark(("gpu_svd_whole_model_32k_concurrent_compressor/lanes=" + std::to_string(lanes) +
                                      (lockstep ? "/lockstep" : "") + variant + "/graph").c_str(),
                                     bm_whole_model_concurrent, lanes, lockstep, 0, true, rounds)
            ->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(3)->Repetitions(3)->ReportAggregatesOnly(true);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
