// What a whole model's compression adds to the wall time of the prefill that produces its input,
// when each layer group is compressed as soon as its four layers' keys and values exist, on
// low-priority streams beside the rest of the prefill (as an engine would schedule it).
//
// The prefill of a 32k-token Llama-3.1-8B (32 layers, hidden 4096, 8 KV heads of 128, MLP 14336)
// stands in as its GEMMs, cuBLAS bf16 with fp32 accumulation: per layer the q / k / v / output
// projections, the MLP's gate / up / down products and causal attention's FLOPs as dense products
// (23 TFLOP per layer, 0.74 PFLOP in all); no softmax, norms or activations, so it runs at the
// tensor cores' rate and is shorter than a real prefill (~1.4 s): the overhead measured against it
// is an upper bound. Keys and values are the k / v projections, written
// straight into their group's [n x 4096] buffers (layer l of a group at columns 1024 l), so each
// group's X is read in place. Group g's keys (r = 512) and values (r = 768) are enqueued on two of
// `streams` low-priority streams after layer 4 g + 3's projections; GpuCompressorOptions::cholesky_ctas
// caps the cooperative Cholesky per job (a cooperative launch waits until all its CTAs fit beside
// the prefill's, and its CTAs hold their SMs while they wait at its grid barriers).
//
// One benchmark run measures, alternately and `kPasses` times each: the prefill alone, the prefill
// with the overlapped compression, and the 16 compressions alone on the same streams; the counters
// are the medians and the overhead = (with - alone) / alone.
#include <benchmark/benchmark.h>
#include <cublas_v2.h>

#include <algorithm>
#include <array>
#include <memory>
#include <vector>

#include "svd_bench_data.hpp"
#include "xkv/cuda/check.hpp"
#include "xkv/cuda/compressor.hpp"
#include "xkv/cuda/device.hpp"

namespace {

using bf16 = __nv_bfloat16;

constexpr std::int64_t kTokens = 32768;
constexpr int kHidden = 4096, kKvWidth = 1024, kMlp = 14336, kLayers = 32, kGroupLayers = 4;
constexpr int kKvHeads = 8, kHeadDim = 128;
constexpr int kAttentionProducts = 8;
constexpr int kGroups = kLayers / kGroupLayers;
constexpr int kPasses = 5;

/// Row-major Y [rows x out] (leading dimension ldy) = X [rows x in] W [in x out], as the
/// column-major Y^T = W^T X^T.
void linear(cublasHandle_t h, const bf16* x, std::int64_t rows, int in, const bf16* w, int out, bf16* y,
            std::int64_t ldy) {
  const float one = 1.0f, zero = 0.0f;
  XKV_CUDA_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, out, int(rows), in, &one, w, CUDA_R_16BF, out, x,
                              CUDA_R_16BF, in, &zero, y, CUDA_R_16BF, int(ldy), CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
}

struct Model {
  xkv::cuda::DeviceBuffer<bf16> hidden, q, attention, gate, up, down;
  xkv::cuda::DeviceBuffer<bf16> wq, wk, wv, wo, wg, wu, wd;
  std::vector<xkv::cuda::DeviceBuffer<bf16>> keys, values;  ///< per group, row-major [n x 4096]

  Model() {
    const auto n = std::size_t(kTokens);
    hidden = xkv::cuda::DeviceBuffer<bf16>(n * kHidden);
    q = xkv::cuda::DeviceBuffer<bf16>(n * kHidden);
    attention = xkv::cuda::DeviceBuffer<bf16>(n * kHidden);
    gate = xkv::cuda::DeviceBuffer<bf16>(n * kMlp);
    up = xkv::cuda::DeviceBuffer<bf16>(n * kMlp);
    down = xkv::cuda::DeviceBuffer<bf16>(n * kHidden);
    wq = xkv::cuda::DeviceBuffer<bf16>(std::size_t(kHidden) * kHidden);
    wk = xkv::cuda::DeviceBuffer<bf16>(std::size_t(kHidden) * kKvWidth);
    wv = xkv::cuda::DeviceBuffer<bf16>(std::size_t(kHidden) * kKvWidth);
    wo = xkv::cuda::DeviceBuffer<bf16>(std::size_t(kHidden) * kHidden);
    wg = xkv::cuda::DeviceBuffer<bf16>(std::size_t(kHidden) * kMlp);
    wu = xkv::cuda::DeviceBuffer<bf16>(std::size_t(kHidden) * kMlp);
    wd = xkv::cuda::DeviceBuffer<bf16>(std::size_t(kMlp) * kHidden);
    // Keys and values inherit the test matrices' decaying spectrum; the other weights only need
    // finite values (0x3C3C = 0.0115 in bf16).
    xkv::bench::fill_test_matrix(hidden.get(), kTokens, kHidden, 0.6, 0x9E1);
    xkv::bench::fill_test_matrix(wk.get(), kHidden, kKvWidth, 0.5, 0x9E2);
    xkv::bench::fill_test_matrix(wv.get(), kHidden, kKvWidth, 0.3, 0x9E3);
    for (auto* w : {&wq, &wo, &wg, &wu, &wd}) XKV_CUDA_CHECK(cudaMemset(w->get(), 0x3C, w->bytes()));
    for (int g = 0; g < kGroups; ++g) {
      keys.emplace_back(n * kGroupLayers * kKvWidth);
      values.emplace_back(n * kGroupLayers * kKvWidth);
    }
  }

  /// Causal attention's FLOPs for one layer (2 n^2 x 4096 = 8.8 TFLOP) as 8 dense [n x 4096] x
  /// [4096 x 4096] products: a compute-bound stand-in for a fused attention kernel, which neither
  /// materialises the scores nor leaves the tensor cores idle.
  void attend(cublasHandle_t h) {
    for (int i = 0; i < kAttentionProducts; ++i)
      linear(h, q.get(), kTokens, kHidden, wo.get(), kHidden, attention.get(), kHidden);
  }
};

struct Job {
  std::vector<xkv::KVView<bf16>> layers;
  xkv::cuda::DeviceBuffer<bf16> a, b;
  std::unique_ptr<xkv::cuda::Compressor<bf16>> svd;
  xkv::cuda::SvdArguments<bf16> args;
  xkv::cuda::DeviceBuffer<char> workspace;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void bm_prefill_overlap(benchmark::State& state) {
  if (!xkv::cuda::device_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int cholesky_ctas = static_cast<int>(state.range(0));
  const int stream_count = static_cast<int>(state.range(1));
  Model model;
  int least = 0, greatest = 0;
  XKV_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  xkv::cuda::Stream prefill(greatest);
  std::vector<std::unique_ptr<xkv::cuda::Stream>> lanes;
  for (int i = 0; i < stream_count; ++i) lanes.push_back(std::make_unique<xkv::cuda::Stream>(least));
  cublasHandle_t blas = nullptr;
  XKV_CUDA_CHECK(cublasCreate(&blas));
  XKV_CUDA_CHECK(cublasSetStream(blas, prefill.get()));

  std::vector<Job> jobs(2 * kGroups);
  for (int f = 0; f < 2 * kGroups; ++f) {
    Job& job = jobs[std::size_t(f)];
    const int g = f / 2, rank = f % 2 == 0 ? 512 : 768;
    const bf16* x = f % 2 == 0 ? model.keys[std::size_t(g)].get() : model.values[std::size_t(g)].get();
    for (int l = 0; l < kGroupLayers; ++l)
      job.layers.push_back({x + l * kKvWidth, kTokens, kKvHeads, kHeadDim, kGroupLayers * kKvWidth, kHeadDim});
    job.a = xkv::cuda::DeviceBuffer<bf16>(std::size_t(kTokens) * rank);
    job.b = xkv::cuda::DeviceBuffer<bf16>(std::size_t(kGroupLayers) * kKvWidth * rank);
    xkv::cuda::GpuCompressorOptions opt;
    opt.cholesky_ctas = cholesky_ctas;
    job.svd = std::make_unique<xkv::cuda::Compressor<bf16>>(opt);
    job.args.layers = job.layers;
    job.args.rank = rank;
    job.args.a = job.a.get();
    job.args.b = job.b.get();
    job.workspace = xkv::cuda::DeviceBuffer<char>(job.svd->workspace_bytes(job.args));
  }
  std::array<cudaEvent_t, kGroups> group_ready{};
  std::vector<cudaEvent_t> lane_done(std::size_t(stream_count), nullptr);
  cudaEvent_t start_event = nullptr;
  for (auto& e : group_ready) XKV_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  for (auto& e : lane_done) XKV_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  XKV_CUDA_CHECK(cudaEventCreateWithFlags(&start_event, cudaEventDisableTiming));

  auto compress_group = [&](int g) {  // after group_ready[g]
    for (int f = 2 * g; f < 2 * g + 2; ++f) {
      const cudaStream_t lane = lanes[std::size_t(f % stream_count)]->get();
      XKV_CUDA_CHECK(cudaStreamWaitEvent(lane, group_ready[std::size_t(g)]));
      Job& job = jobs[std::size_t(f)];
      (void)job.svd->run(job.args, job.workspace.get(), job.workspace.bytes(), lane);
    }
  };
  auto join_lanes = [&] {
    for (int i = 0; i < stream_count; ++i) {
      XKV_CUDA_CHECK(cudaEventRecord(lane_done[std::size_t(i)], lanes[std::size_t(i)]->get()));
      XKV_CUDA_CHECK(cudaStreamWaitEvent(prefill.get(), lane_done[std::size_t(i)]));
    }
  };
  // mode 0: prefill alone; 1: prefill and compression; 2: compression alone.
  auto run = [&](int mode) {
    const cudaStream_t p = prefill.get();
    XKV_CUDA_CHECK(cudaEventRecord(start_event, p));
    for (auto& lane : lanes) XKV_CUDA_CHECK(cudaStreamWaitEvent(lane->get(), start_event));
    for (int l = 0; l < kLayers; ++l) {
      const int g = l / kGroupLayers, in_group = l % kGroupLayers;
      bf16* k = model.keys[std::size_t(g)].get() + in_group * kKvWidth;
      bf16* v = model.values[std::size_t(g)].get() + in_group * kKvWidth;
      constexpr std::int64_t ld_kv = kGroupLayers * kKvWidth;
      if (mode != 2) {
        linear(blas, model.hidden.get(), kTokens, kHidden, model.wq.get(), kHidden, model.q.get(), kHidden);
        linear(blas, model.hidden.get(), kTokens, kHidden, model.wk.get(), kKvWidth, k, ld_kv);
        linear(blas, model.hidden.get(), kTokens, kHidden, model.wv.get(), kKvWidth, v, ld_kv);
      }
      if (mode != 0 && in_group == kGroupLayers - 1) {
        XKV_CUDA_CHECK(cudaEventRecord(group_ready[std::size_t(g)], p));
        compress_group(g);
      }
      if (mode != 2) {
        model.attend(blas);
        linear(blas, model.attention.get(), kTokens, kHidden, model.wo.get(), kHidden, model.down.get(), kHidden);
        linear(blas, model.down.get(), kTokens, kHidden, model.wg.get(), kMlp, model.gate.get(), kMlp);
        linear(blas, model.down.get(), kTokens, kHidden, model.wu.get(), kMlp, model.up.get(), kMlp);
        linear(blas, model.gate.get(), kTokens, kMlp, model.wd.get(), kHidden, model.down.get(), kHidden);
      }
    }
    join_lanes();
  };

  for (int mode = 0; mode < 3; ++mode) run(mode);  // warm-up (and the keys and values the compressions read)
  XKV_CUDA_CHECK(cudaStreamSynchronize(prefill.get()));
  for (int f = 0; f < 2 * kGroups; ++f) jobs[std::size_t(f)].svd->check(prefill.get());
  std::array<std::vector<double>, 3> times;
  xkv::cuda::EventTimer timer;
  for (auto _ : state) {
    for (int pass = 0; pass < kPasses; ++pass)
      for (int mode = 0; mode < 3; ++mode) {
        timer.start(prefill.get());
        run(mode);
        times[std::size_t(mode)].push_back(timer.stop(prefill.get()));
      }
    state.SetIterationTime(median(times[1]) / 1e3);
  }
  for (int f = 0; f < 2 * kGroups; ++f) jobs[std::size_t(f)].svd->check(prefill.get());
  for (auto& e : group_ready) (void)cudaEventDestroy(e);
  for (auto& e : lane_done) (void)cudaEventDestroy(e);
  (void)cudaEventDestroy(start_event);
  (void)cublasDestroy(blas);
  const double alone = median(times[0]), with = median(times[1]), compression = median(times[2]);
  state.counters["prefill_ms"] = alone;
  state.counters["with_compression_ms"] = with;
  state.counters["compression_alone_ms"] = compression;
  state.counters["overhead_pct"] = 100.0 * (with - alone) / alone;
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::RegisterBenchmark("prefill_32k_llama8b_overlapped_compression", bm_prefill_overlap)
      ->ArgNames({"cholesky_ctas", "streams"})
      ->Args({16, 4})  // the configuration documented first
      ->Args({4, 4})
      ->Args({8, 4})
      ->Args({32, 4})
      ->Args({8, 2})
      ->Args({8, 8})
      ->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(1)->Repetitions(1);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
