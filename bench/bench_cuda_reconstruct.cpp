// Google Benchmark of the fused reconstruct+RoPE kernel against cuBLAS A*B alone on the same
// shapes, in one process. Each iteration: evict L2 (memset of 4x its size), then one launch timed
// with CUDA events (manual time); 3 repetitions, aggregates reported (take the median).
#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "xkv/cuda/check.hpp"
#include "xkv/cuda/device.hpp"
#include "xkv/cuda/reconstruct.hpp"
#include "xkv/rope.hpp"

namespace {

using xkv::cuda::DeviceBuffer;

struct Shape {
  std::int64_t n;       ///< tokens held by A
  std::int64_t gather;  ///< 0: dense, else tokens gathered by an index list
  int r, heads, d;
  bool bf16, rope;
  xkv::cuda::KernelPath kernel = xkv::cuda::KernelPath::Auto;
  bool table = false;  ///< RoPE cos/sin read from a caller's table of n positions instead of computed
};

/// Device inputs of one shape, filled with random (non-zero) values; cached across benchmarks.
struct Inputs {
  DeviceBuffer<std::uint16_t> a, b, bt, out;
  DeviceBuffer<std::int64_t> idx;
  DeviceBuffer<unsigned char> flush;
  DeviceBuffer<float> cos_table, sin_table;  ///< n positions x d / 2 pairs, filled on first use
  std::int64_t lda = 0, rows = 0;
};

/// The caller's cos/sin table (xkv::RopeTable) for every position of A, built once.
void ensure_table(Inputs& in, const Shape& s) {
  if (in.cos_table.size() == std::size_t(s.n) * std::size_t(s.d / 2)) return;
  const auto table = xkv::RopeTable::build(xkv::RopeConfig{}, s.d, s.n);
  in.cos_table = DeviceBuffer<float>(table.cos.size());
  in.sin_table = DeviceBuffer<float>(table.sin.size());
  XKV_CUDA_CHECK(cudaMemcpy(in.cos_table.get(), table.cos.data(), table.cos.size() * 4, cudaMemcpyHostToDevice));
  XKV_CUDA_CHECK(cudaMemcpy(in.sin_table.get(), table.sin.data(), table.sin.size() * 4, cudaMemcpyHostToDevice));
}

void fill_random(DeviceBuffer<std::uint16_t>& buf, float scale, std::uint64_t seed) {
  std::vector<std::uint16_t> host(buf.size());
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-scale, scale);
  for (auto& v : host) {
    const float f = u(rng);
    std::uint32_t bits = 0;
    std::memcpy(&bits, &f, 4);
    v = static_cast<std::uint16_t>(bits >> 16);  // bf16 bits; as fp16 a finite value of similar size class
    v &= 0xbfff;                                  // keep the exponent small enough for fp16 (no inf/NaN)
  }
  XKV_CUDA_CHECK(cudaMemcpy(buf.get(), host.data(), buf.bytes(), cudaMemcpyHostToDevice));
}

Inputs& inputs(const Shape& s) {
  static std::unique_ptr<Inputs> cached;
  static Shape cached_shape{};
  const bool same = cached && cached_shape.n == s.n && cached_shape.gather == s.gather && cached_shape.r == s.r &&
                    cached_shape.heads == s.heads && cached_shape.d == s.d;
  if (same) return *cached;
  cached.reset();  // free the old buffers first
  auto in = std::make_unique<Inputs>();
  const std::int64_t width = std::int64_t(s.heads) * s.d;
  in->lda = (s.r + 7) / 8 * 8;
  in->rows = s.gather > 0 ? s.gather : s.n;
  in->a = DeviceBuffer<std::uint16_t>(std::size_t(s.n * in->lda));
  in->b = DeviceBuffer<std::uint16_t>(std::size_t(s.r * width));
  in->bt = DeviceBuffer<std::uint16_t>(std::size_t(width * in->lda));
  in->out = DeviceBuffer<std::uint16_t>(std::size_t(in->rows * width));
  fill_random(in->a, 1.0f, 1);
  fill_random(in->b, 0.05f, 2);
  fill_random(in->bt, 0.05f, 4);  // timing only: same distribution as B
  std::vector<std::int64_t> idx(std::size_t(std::max<std::int64_t>(s.gather, 1)));
  std::mt19937_64 rng(3);
  for (auto& i : idx) i = std::int64_t(rng() % std::uint64_t(s.n));
  in->idx = DeviceBuffer<std::int64_t>(idx.size());
  XKV_CUDA_CHECK(cudaMemcpy(in->idx.get(), idx.data(), idx.size() * 8, cudaMemcpyHostToDevice));
  int device = 0;
  cudaDeviceProp prop{};
  XKV_CUDA_CHECK(cudaGetDevice(&device));
  XKV_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  in->flush = DeviceBuffer<unsigned char>(std::size_t(prop.l2CacheSize) * 4);
  cached = std::move(in);
  cached_shape = s;
  return *cached;
}

template <class Launch>
void timed_loop(benchmark::State& state, Inputs& in, const Shape& s, Launch&& launch) {
  xkv::cuda::EventTimer timer;
  launch();  // warm-up (module load, attribute setup)
  XKV_CUDA_CHECK(cudaDeviceSynchronize());
  for (auto _ : state) {
    XKV_CUDA_CHECK(cudaMemsetAsync(in.flush.get(), 0, in.flush.bytes(), nullptr));
    timer.start(nullptr);
    launch();
    state.SetIterationTime(timer.stop(nullptr) / 1000.0);
  }
  const double flops = 2.0 * double(in.rows) * s.r * double(s.heads) * s.d;
  state.counters["TFLOPs"] = benchmark::Counter(flops * 1e-12, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak%"] =
      benchmark::Counter(flops * 1e-12 / 785.0 * 100.0, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Reconstruct(benchmark::State& state, Shape s) {
  if (!xkv::cuda::device_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  Inputs& in = inputs(s);
  xkv::cuda::ReconstructParams p;
  p.dtype = s.bf16 ? xkv::cuda::ScalarType::BFloat16 : xkv::cuda::ScalarType::Float16;
  p.a = in.a.get();
  p.a_rows = s.n;
  p.lda = in.lda;
  p.rank = s.r;
  p.b = in.b.get();
  p.ldb = std::int64_t(s.heads) * s.d;
  p.bt = in.bt.get();
  p.ldbt = in.lda;
  p.kernel = s.kernel;
  p.heads = s.heads;
  p.head_dim = s.d;
  p.tokens = in.rows;
  p.token_indices = s.gather > 0 ? in.idx.get() : nullptr;
  if (s.rope) p.rope = xkv::RopeConfig{};
  if (s.table) {
    ensure_table(in, s);
    p.cos_table = in.cos_table.get();
    p.sin_table = in.sin_table.get();
    p.table_positions = s.n;
  }
  p.out = xkv::cuda::OutputSpec::token_major(in.out.get(), in.rows, s.heads, s.d);
  const xkv::cuda::Reconstruct op(p);
  state.SetLabel(op.selected_kernel() == xkv::cuda::KernelPath::Wgmma ? "wgmma" : "mma.sync");
  timed_loop(state, in, s, [&] { op.run(nullptr); });
}

void BM_CublasGemm(benchmark::State& state, Shape s) {
  if (!xkv::cuda::device_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  Inputs& in = inputs(s);
  cublasHandle_t handle = nullptr;
  XKV_CUDA_CHECK(cublasCreate(&handle));
  const float alpha = 1.f, beta = 0.f;
  const cudaDataType_t type = s.bf16 ? CUDA_R_16BF : CUDA_R_16F;
  const int width = s.heads * s.d;
  // Gathered shapes: the same product over a contiguous slice of as many rows (no gather, no
  // RoPE), the dense lower bound of what the gathered kernel does.
  const int rows = int(in.rows);
  timed_loop(state, in, s, [&] {
    XKV_CUDA_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, width, rows, s.r, &alpha, in.b.get(), type,
                                width, in.a.get(), type, int(in.lda), &beta, in.out.get(), type, width,
                                CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  });
  XKV_CUDA_CHECK(cublasDestroy(handle));
}

// A decode step's gathered reconstructs for a whole model: 32 layers in 8 groups of 4 (one A of
// n x r per group, one B and B^T per layer), the same 2048 tokens selected in each, every layer
// written to its own output, launched back to back between two events after one L2 flush.
// Manual time = the sequence over 32, the time per layer when launches follow each other. With
// inputs_ready each layer reads its factors and the index list while the previous one finishes.
void BM_GatheredDecodeSequence(benchmark::State& state, bool inputs_ready) {
  if (!xkv::cuda::device_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  constexpr int kLayers = 32, kGroupSize = 4;
  const Shape s{131072, 2048, 512, 8, 128, true, true};
  Inputs& in = inputs(s);  // one group's A, B, B^T and the index list, reused as fill data
  const std::int64_t width = std::int64_t(s.heads) * s.d;
  std::vector<DeviceBuffer<std::uint16_t>> a, b, bt, out;
  for (int g = 0; g < kLayers / kGroupSize; ++g) {
    a.emplace_back(in.a.size());
    XKV_CUDA_CHECK(cudaMemcpy(a.back().get(), in.a.get(), in.a.bytes(), cudaMemcpyDeviceToDevice));
  }
  std::vector<xkv::cuda::Reconstruct> ops;
  for (int l = 0; l < kLayers; ++l) {
    b.emplace_back(in.b.size());
    bt.emplace_back(in.bt.size());
    out.emplace_back(std::size_t(s.gather * width));
    XKV_CUDA_CHECK(cudaMemcpy(b.back().get(), in.b.get(), in.b.bytes(), cudaMemcpyDeviceToDevice));
    XKV_CUDA_CHECK(cudaMemcpy(bt.back().get(), in.bt.get(), in.bt.bytes(), cudaMemcpyDeviceToDevice));
    xkv::cuda::ReconstructParams p;
    p.dtype = xkv::cuda::ScalarType::BFloat16;
    p.a = a[std::size_t(l / kGroupSize)].get();
    p.a_rows = s.n;
    p.lda = in.lda;
    p.rank = s.r;
    p.b = b.back().get();
    p.ldb = width;
    p.bt = bt.back().get();
    p.ldbt = in.lda;
    p.heads = s.heads;
    p.head_dim = s.d;
    p.tokens = s.gather;
    p.token_indices = in.idx.get();
    p.rope = xkv::RopeConfig{};
    p.out = xkv::cuda::OutputSpec::token_major(out.back().get(), s.gather, s.heads, s.d);
    p.inputs_ready = inputs_ready;  // the factors and the index list exist before the step
    ops.emplace_back(p);
  }
  xkv::cuda::EventTimer timer;
  for (const auto& op : ops) op.run(nullptr);  // warm-up
  XKV_CUDA_CHECK(cudaDeviceSynchronize());
  for (auto _ : state) {
    XKV_CUDA_CHECK(cudaMemsetAsync(in.flush.get(), 0, in.flush.bytes(), nullptr));
    timer.start(nullptr);
    for (const auto& op : ops) op.run(nullptr);
    state.SetIterationTime(timer.stop(nullptr) / 1000.0 / kLayers);
  }
}

// The timing floor of the harness: one 16-byte cudaMemsetAsync (a kernel launch) between the
// same events, after the same L2 flush.
void BM_LaunchFloor(benchmark::State& state) {
  if (!xkv::cuda::device_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const Shape s{131072, 2048, 512, 8, 128, true, true};
  Inputs& in = inputs(s);
  timed_loop(state, in, s, [&] { XKV_CUDA_CHECK(cudaMemsetAsync(in.out.get(), 0, 16, nullptr)); });
}

void register_all() {
  const std::vector<Shape> dense = {
      {131072, 0, 512, 8, 128, true, true},  {131072, 0, 512, 8, 128, true, false},
      {8192, 0, 512, 8, 128, true, true},    {32768, 0, 512, 8, 128, true, true},
      {131072, 0, 128, 8, 128, true, true},  {131072, 0, 256, 8, 128, true, true},
      {131072, 0, 768, 8, 128, true, true},  {131072, 0, 512, 16, 64, true, true},
      {131072, 0, 512, 3, 64, true, true},   {131072, 0, 512, 4, 256, true, true},
      {131072, 0, 512, 8, 128, false, true},
      {131072, 0, 512, 8, 128, true, true, xkv::cuda::KernelPath::MmaSync},
  };
  auto name = [](const char* what, const Shape& s) {
    return std::string(what) + "/n:" + std::to_string(s.n) + (s.gather ? "/gather:" + std::to_string(s.gather) : "") +
           "/r:" + std::to_string(s.r) + "/H:" + std::to_string(s.heads) + "/d:" + std::to_string(s.d) +
           (s.bf16 ? "/bf16" : "/fp16") + (s.rope ? "/rope" : "/norope") +
           (s.kernel == xkv::cuda::KernelPath::MmaSync ? "/mma.sync" : "") + (s.table ? "/table" : "");
  };
  for (const Shape& s : dense) {
    benchmark::RegisterBenchmark(name("xkv", s).c_str(), BM_Reconstruct, s)
        ->UseManualTime()->Unit(benchmark::kMicrosecond)->Iterations(20)->Repetitions(3)->ReportAggregatesOnly(true);
    if (s.rope && s.kernel == xkv::cuda::KernelPath::Auto)
      benchmark::RegisterBenchmark(name("cublas", s).c_str(), BM_CublasGemm, s)
          ->UseManualTime()->Unit(benchmark::kMicrosecond)->Iterations(20)->Repetitions(3)->ReportAggregatesOnly(true);
  }
  for (std::int64_t g : {256, 2048, 8192})
    for (auto kernel : {xkv::cuda::KernelPath::Auto, xkv::cuda::KernelPath::MmaSync}) {
      const Shape s{131072, g, 512, 8, 128, true, true, kernel};
      benchmark::RegisterBenchmark(name("xkv", s).c_str(), BM_Reconstruct, s)
          ->UseManualTime()->Unit(benchmark::kMicrosecond)->Iterations(30)->Repetitions(3)->ReportAggregatesOnly(true);
      if (kernel == xkv::cuda::KernelPath::Auto)
        benchmark::RegisterBenchmark(name("cublas_contiguous_slice", s).c_str(), BM_CublasGemm, s)
            ->UseManualTime()->Unit(benchmark::kMicrosecond)->Iterations(30)->Repetitions(3)->ReportAggregatesOnly(true);
    }
  for (std::int64_t g : {256, 2048}) {  // RoPE from a caller's table (an engine's cos/sin cache)
    Shape s{131072, g, 512, 8, 128, true, true};
    s.table = true;
    benchmark::RegisterBenchmark(name("xkv", s).c_str(), BM_Reconstruct, s)
        ->UseManualTime()->Unit(benchmark::kMicrosecond)->Iterations(30)->Repetitions(3)->ReportAggregatesOnly(true);
  }
  for (const bool ready : {false, true})
    benchmark::RegisterBenchmark(("xkv/n:131072/gather:2048/r:512/H:8/d:128/bf16/rope/per_layer_of_32_back_to_back" +
                                  std::string(ready ? "/inputs_ready" : "")).c_str(),
                                 BM_GatheredDecodeSequence, ready)
        ->UseManualTime()->Unit(benchmark::kMicrosecond)->Iterations(20)->Repetitions(3)->ReportAggregatesOnly(true);
  benchmark::RegisterBenchmark("launch_floor/memset16", BM_LaunchFloor)
      ->UseManualTime()->Unit(benchmark::kMicrosecond)->Iterations(30)->Repetitions(3)->ReportAggregatesOnly(true);
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
