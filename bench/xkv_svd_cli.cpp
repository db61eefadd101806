// xkv_svd_cli: factor one bf16 group read from a raw file with the GPU compressor, time it with
// CUDA events, and write A and B for an external error check (bench/svd_side_by_side.py).
//   xkv_svd_cli --in X.bin --n N --layers G --heads H --head-dim d --rank r [--method subspace|randomized|exact]
//               [--iters K] [--oversampling p] [--power-iterations q] [--ritz syevd|syevd32|syevj|syevj32]
//               [--filter chebyshev|power] [--chebyshev-rounds c] [--plain-last-round 0|1]
//               [--gram-precision fp16|fp16split|tf32] [--staging fraction]
//               [--out-a A.bin --out-b B.bin]
// X.bin is row-major [n x G*H*d] bf16; layer l is columns [l*H*d, (l+1)*H*d). Prints one line:
//   method=... median_ms=... min_ms=... workspace_bytes=...
//   xkv_svd_cli --micro D --k k [--rows c]   times the building blocks (cuSOLVER / cuBLAS) alone.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <cublas_v2.h>
#include <cusolverDn.h>

#include "cholesky.hpp"     // private to cuda/svd: timed on their own in --micro
#include "cholesky_qr.hpp"
#include "xkv/cuda/compressor.hpp"
#include "xkv/cuda/device.hpp"

namespace {

using bf16 = __nv_bfloat16;

std::map<std::string, std::string> parse(int argc, char** argv) {
  std::map<std::string, std::string> args;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    XKV_REQUIRE(key.rfind("--", 0) == 0, "expected --option value pairs, got '" << key << "'");
    args[key.substr(2)] = argv[i + 1];
  }
  return args;
}

long long number(const std::map<std::string, std::string>& args, const std::string& key, long long fallback = -1) {
  const auto it = args.find(key);
  if (it == args.end()) {
    XKV_REQUIRE(fallback >= 0, "missing --" << key);
    return fallback;
  }
  return std::stoll(it->second);
}

void write_file(const std::string& path, const void* data, std::size_t bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), std::streamsize(bytes));
  XKV_CHECK(bool(out), Io, "cannot write " << bytes << " bytes to " << path);
}

/// Median milliseconds of `fn` on `stream` (CUDA events, after one warm-up).
template <class F>
float time_ms(cudaStream_t stream, F&& fn, int reps = 10) {
  xkv::cuda::EventTimer timer;
  fn();
  XKV_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    timer.start(stream);
    fn();
    ms.push_back(timer.stop(stream));
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

void micro(std::int64_t d, int k, std::int64_t rows) {
  xkv::cuda::Stream stream;
  cublasHandle_t blas;
  cusolverDnHandle_t solver;
  cusolverDnParams_t params;
  syevjInfo_t syevj;
  XKV_CUDA_CHECK(cublasCreate(&blas));
  XKV_CUDA_CHECK(cusolverDnCreate(&solver));
  XKV_CUDA_CHECK(cusolverDnSetDeterministicMode(solver, CUSOLVER_DETERMINISTIC_RESULTS));
  XKV_CUDA_CHECK(cusolverDnCreateParams(&params));
  XKV_CUDA_CHECK(cusolverDnCreateSyevjInfo(&syevj));
  XKV_CUDA_CHECK(cublasSetStream(blas, stream.get()));
  XKV_CUDA_CHECK(cusolverDnSetStream(solver, stream.get()));
  xkv::cuda::DeviceBuffer<double> x(std::size_t(d) * k), g(std::size_t(k) * k), g0(std::size_t(k) * k), w(k);
  xkv::cuda::DeviceBuffer<float> g32(std::size_t(k) * k), w32(k);
  xkv::cuda::DeviceBuffer<int> info(1);
  xkv::cuda::DeviceBuffer<bf16> xb(std::size_t(rows) * d), vb(std::size_t(d) * k), yb(std::size_t(rows) * k);
  xkv::cuda::DeviceBuffer<float> z(std::size_t(d) * k);
  {  // well-conditioned SPD test data: x random-ish, g0 = x^T x + d I
    std::vector<double> h(x.size());
    std::uint64_t s = 12345;
    for (auto& v : h) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      v = double(s >> 11) / double(1ull << 53) - 0.5;
    }
    XKV_CUDA_CHECK(cudaMemcpy(x.get(), h.data(), x.bytes(), cudaMemcpyHostToDevice));
    std::vector<bf16> hb(xb.size());
    for (std::size_t i = 0; i < hb.size(); ++i) hb[i] = __float2bfloat16(float(h[i % h.size()]));
    XKV_CUDA_CHECK(cudaMemcpy(xb.get(), hb.data(), xb.bytes(), cudaMemcpyHostToDevice));
    XKV_CUDA_CHECK(cudaMemcpy(vb.get(), hb.data(), vb.bytes(), cudaMemcpyHostToDevice));
    XKV_CUDA_CHECK(cudaMemcpy(yb.get(), hb.data(), yb.bytes(), cudaMemcpyHostToDevice));
  }
  const double one = 1.0, zero = 0.0;
  XKV_CUDA_CHECK(cublasDsyrk(blas, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_T, k, int(d), &one, x.get(), int(d), &zero, g0.get(), k));
  std::size_t dev = 0, host = 0, dev2 = 0, host2 = 0, dev3 = 0, host3 = 0;
  XKV_CUDA_CHECK(cusolverDnXpotrf_bufferSize(solver, params, CUBLAS_FILL_MODE_UPPER, k, CUDA_R_64F, g.get(), k, CUDA_R_64F, &dev, &host));
  XKV_CUDA_CHECK(cusolverDnXsyevd_bufferSize(solver, params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, k, CUDA_R_64F, g.get(), k, CUDA_R_64F, w.get(), CUDA_R_64F, &dev2, &host2));
  XKV_CUDA_CHECK(cusolverDnXsyevd_bufferSize(solver, params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, k, CUDA_R_32F, g32.get(), k, CUDA_R_32F, w32.get(), CUDA_R_32F, &dev3, &host3));
  int lj = 0, lj32 = 0;
  XKV_CUDA_CHECK(cusolverDnDsyevj_bufferSize(solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, k, g.get(), k, w.get(), &lj, syevj));
  XKV_CUDA_CHECK(cusolverDnSsyevj_bufferSize(solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, k, g32.get(), k, w32.get(), &lj32, syevj));
  const std::size_t dev_bytes = std::max({dev, dev2, dev3, std::size_t(lj) * 8, std::size_t(lj32) * 4});
  xkv::cuda::DeviceBuffer<char> ws(dev_bytes);
  std::vector<char> hws(std::max({host, host2, host3, std::size_t(1)}));
  auto reset = [&] { XKV_CUDA_CHECK(cudaMemcpyAsync(g.get(), g0.get(), g.bytes(), cudaMemcpyDeviceToDevice, stream.get())); };
  auto reset32 = [&] {
    XKV_CUDA_CHECK(cublasDsyrk(blas, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_T, k, int(d), &one, x.get(), int(d), &zero, g.get(), k));
  };
  (void)reset32;
  const float f1 = 1.0f, f0 = 0.0f;
  const float copy_ms = time_ms(stream.get(), reset);
  std::printf("micro D=%lld k=%d rows=%lld (times include a %.3f ms k x k copy where marked +copy)\n", (long long)d, k, (long long)rows, copy_ms);
  std::printf("  Dsyrk k x k from D x k      %8.3f ms\n", time_ms(stream.get(), [&] {
    XKV_CUDA_CHECK(cublasDsyrk(blas, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_T, k, int(d), &one, x.get(), int(d), &zero, g.get(), k)); }));
  std::printf("  Dgemm k x k x D             %8.3f ms\n", time_ms(stream.get(), [&] {
    XKV_CUDA_CHECK(cublasDgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, k, k, int(d), &one, x.get(), int(d), x.get(), int(d), &zero, g.get(), k)); }));
  std::printf("  Xpotrf fp64 k (+copy)       %8.3f ms\n", time_ms(stream.get(), [&] { reset();
    XKV_CUDA_CHECK(cusolverDnXpotrf(solver, params, CUBLAS_FILL_MODE_UPPER, k, CUDA_R_64F, g.get(), k, CUDA_R_64F, ws.get(), dev_bytes, hws.data(), hws.size(), info.get())); }));
  std::printf("  Dtrsm right D x k           %8.3f ms\n", time_ms(stream.get(), [&] {
    XKV_CUDA_CHECK(cublasDtrsm(blas, CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT, int(d), k, &one, g0.get(), k, x.get(), int(d))); }));
  std::printf("  Xsyevd fp64 k (+copy)       %8.3f ms\n", time_ms(stream.get(), [&] { reset();
    XKV_CUDA_CHECK(cusolverDnXsyevd(solver, params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, k, CUDA_R_64F, g.get(), k, CUDA_R_64F, w.get(), CUDA_R_64F, ws.get(), dev_bytes, hws.data(), hws.size(), info.get())); }, 5));
  std::printf("  Xsyevd fp32 k (+copy)       %8.3f ms\n", time_ms(stream.get(), [&] { reset();
    XKV_CUDA_CHECK(cusolverDnXsyevd(solver, params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, k, CUDA_R_32F, g32.get(), k, CUDA_R_32F, w32.get(), CUDA_R_32F, ws.get(), dev_bytes, hws.data(), hws.size(), info.get())); }, 5));
  XKV_CUDA_CHECK(cusolverDnXsyevjSetTolerance(syevj, 1e-10));
  XKV_CUDA_CHECK(cusolverDnXsyevjSetMaxSweeps(syevj, 30));
  std::printf("  Dsyevj k (+copy)            %8.3f ms\n", time_ms(stream.get(), [&] { reset();
    XKV_CUDA_CHECK(cusolverDnDsyevj(solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, k, g.get(), k, w.get(), reinterpret_cast<double*>(ws.get()), lj, info.get(), syevj)); }, 3));
  std::printf("  bf16 GEMM k x rows x D      %8.3f ms\n", time_ms(stream.get(), [&] {
    XKV_CUDA_CHECK(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, k, int(rows), int(d), &f1, vb.get(), CUDA_R_16BF, int(d), xb.get(), CUDA_R_16BF, int(d), &f0, yb.get(), CUDA_R_16BF, k, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)); }));
  std::printf("  bf16 GEMM D x k x rows      %8.3f ms\n", time_ms(stream.get(), [&] {
    XKV_CUDA_CHECK(cublasGemmEx(blas, CUBLAS_OP_N, CUBLAS_OP_T, int(d), k, int(rows), &f1, xb.get(), CUDA_R_16BF, int(d), yb.get(), CUDA_R_16BF, k, &f1, z.get(), CUDA_R_32F, int(d), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)); }));
  {  // the one-launch Cholesky + inverse and the GEMM that replaces the triangular solve
    xkv::cuda::DeviceBuffer<double> chol(xkv::cuda::detail::CholeskyWorkspace::doubles(k));
    const auto cws = xkv::cuda::detail::CholeskyWorkspace::carve(chol.get(), k);
    xkv::cuda::DeviceBuffer<double> out(std::size_t(d) * k);
    std::printf("  xkv cholesky+inverse k      %8.3f ms\n", time_ms(stream.get(), [&] {
      xkv::cuda::detail::cholesky_inverse(g0.get(), k, cws, info.get(), stream.get()); }));
    {  // as a lockstep round of ConcurrentCompressor factors them: 8 matrices, 16 CTAs each
      constexpr int kBatch = 8;
      std::vector<xkv::cuda::DeviceBuffer<double>> buffers;
      std::vector<xkv::cuda::detail::CholeskyTask> tasks;
      for (int i = 0; i < kBatch; ++i) {
        buffers.emplace_back(xkv::cuda::detail::CholeskyWorkspace::doubles(k));
        auto batch_ws = xkv::cuda::detail::CholeskyWorkspace::carve(buffers.back().get(), k);
        batch_ws.max_ctas = 16;
        tasks.push_back({g0.get(), batch_ws, info.get()});
      }
      std::printf("  xkv cholesky+inverse 8 x k, 16 CTAs each %8.3f ms\n", time_ms(stream.get(), [&] {
        xkv::cuda::detail::cholesky_inverse_batched(tasks, k, stream.get()); }));
    }
    std::printf("  Dgemm D x k x k (apply)     %8.3f ms\n", time_ms(stream.get(), [&] {
      XKV_CUDA_CHECK(cublasDgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, int(d), k, k, &one, x.get(), int(d), cws.w, cws.padded, &zero, out.get(), int(d))); }));
    {  // the same two products of a CholeskyQR step from the fp32 basis (no fp64 copy of it)
      std::vector<double> hx(x.size());
      XKV_CUDA_CHECK(cudaMemcpy(hx.data(), x.get(), x.bytes(), cudaMemcpyDeviceToHost));
      const std::vector<float> hz(hx.begin(), hx.end());
      XKV_CUDA_CHECK(cudaMemcpy(z.get(), hz.data(), z.bytes(), cudaMemcpyHostToDevice));
      xkv::cuda::DeviceBuffer<double> scratch(xkv::cuda::detail::CholeskyWorkspace::doubles(k));
      const auto sws = xkv::cuda::detail::CholeskyWorkspace::carve(scratch.get(), k);
      xkv::cuda::DeviceBuffer<float> v32(std::size_t(d) * k);
      std::printf("  xkv basis_gram fp32 D x k   %8.3f ms\n", time_ms(stream.get(), [&] {
        xkv::cuda::detail::basis_gram(z.get(), d, k, g.get(), xkv::cuda::detail::GramScratch(sws, g.get()), stream.get()); }));
      std::printf("  xkv apply_inverse D x k     %8.3f ms\n", time_ms(stream.get(), [&] {
        xkv::cuda::detail::apply_inverse(z.get(), d, k, cws, v32.get(), stream.get()); }));
      {  // as a lockstep round runs them: 8 jobs' products at once, each on its own stream and basis
        constexpr int kJobs = 8;
        std::vector<xkv::cuda::Stream> lanes(kJobs);
        std::vector<xkv::cuda::DeviceBuffer<float>> zs, vs;
        std::vector<xkv::cuda::DeviceBuffer<double>> gs, scratches;
        for (int j = 0; j < kJobs; ++j) {
          zs.emplace_back(z.size());
          XKV_CUDA_CHECK(cudaMemcpy(zs.back().get(), z.get(), z.bytes(), cudaMemcpyDeviceToDevice));
          vs.emplace_back(std::size_t(d) * k);
          gs.emplace_back(std::size_t(k) * k);
          scratches.emplace_back(xkv::cuda::detail::CholeskyWorkspace::doubles(k));
        }
        cudaEvent_t fork = nullptr;
        std::vector<cudaEvent_t> joins(kJobs, nullptr);
        XKV_CUDA_CHECK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
        for (auto& e : joins) XKV_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
        const auto side_by_side = [&](auto&& product) {
          XKV_CUDA_CHECK(cudaEventRecord(fork, stream.get()));
          for (int j = 0; j < kJobs; ++j) {
            XKV_CUDA_CHECK(cudaStreamWaitEvent(lanes[j].get(), fork));
            product(j, lanes[j].get());
            XKV_CUDA_CHECK(cudaEventRecord(joins[j], lanes[j].get()));
            XKV_CUDA_CHECK(cudaStreamWaitEvent(stream.get(), joins[j]));
          }
        };
        std::printf("  xkv basis_gram, 8 at once   %8.3f ms\n", time_ms(stream.get(), [&] {
          side_by_side([&](int j, cudaStream_t s) {
            const auto scratch_ws = xkv::cuda::detail::CholeskyWorkspace::carve(scratches[j].get(), k);
            xkv::cuda::detail::basis_gram(zs[j].get(), d, k, gs[j].get(), xkv::cuda::detail::GramScratch(scratch_ws, gs[j].get()), s);
          }); }));
        std::printf("  xkv apply_inverse, 8 at once %7.3f ms\n", time_ms(stream.get(), [&] {
          side_by_side([&](int j, cudaStream_t s) { xkv::cuda::detail::apply_inverse(zs[j].get(), d, k, cws, vs[j].get(), s); }); }));
        (void)cudaEventDestroy(fork);
        for (auto& e : joins) (void)cudaEventDestroy(e);
      }
    }
    std::printf("  Dpotrf fp64 k, non-deterministic mode (+copy) %8.3f ms\n", [&] {
      XKV_CUDA_CHECK(cusolverDnSetDeterministicMode(solver, CUSOLVER_ALLOW_NON_DETERMINISTIC_RESULTS));
      const float t = time_ms(stream.get(), [&] { reset();
        XKV_CUDA_CHECK(cusolverDnXpotrf(solver, params, CUBLAS_FILL_MODE_UPPER, k, CUDA_R_64F, g.get(), k, CUDA_R_64F, ws.get(), dev_bytes, hws.data(), hws.size(), info.get())); });
      XKV_CUDA_CHECK(cusolverDnSetDeterministicMode(solver, CUSOLVER_DETERMINISTIC_RESULTS));
      return t; }());
  }
  (void)cusolverDnDestroySyevjInfo(syevj);
  (void)cusolverDnDestroyParams(params);
  (void)cusolverDnDestroy(solver);
  (void)cublasDestroy(blas);
}

}  // namespace

int main(int argc, char** argv) try {
  const auto args = parse(argc, argv);
  if (args.count("micro")) {
    micro(number(args, "micro"), int(number(args, "k")), number(args, "rows", 4096));
    return 0;
  }
  const std::int64_t n = number(args, "n");
  const int layers = int(number(args, "layers")), heads = int(number(args, "heads")), head_dim = int(number(args, "head-dim"));
  const int rank = int(number(args, "rank"));
  const int iters = int(number(args, "iters", 10));
  const int width = heads * head_dim;
  const std::int64_t d = std::int64_t(layers) * width;
  XKV_REQUIRE(n > 0 && layers > 0 && width > 0 && iters > 0, "bad shape or iteration count");

  std::vector<bf16> host(std::size_t(n * d));
  {
    const std::string path = args.count("in") ? args.at("in") : "";
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    XKV_CHECK(bool(in), Io, "cannot open --in '" << path << "'");
    const auto size = std::int64_t(in.tellg());
    XKV_CHECK(size == n * d * std::int64_t(sizeof(bf16)), Format,
              path << " holds " << size << " bytes, expected n*D*2 = " << n * d * 2);
    in.seekg(0);
    in.read(reinterpret_cast<char*>(host.data()), size);
    XKV_CHECK(bool(in), Io, "cannot read " << path);
  }
  xkv::cuda::DeviceBuffer<bf16> x(host.size()), a(std::size_t(n) * rank), b(std::size_t(d) * rank);
  XKV_CUDA_CHECK(cudaMemcpy(x.get(), host.data(), host.size() * sizeof(bf16), cudaMemcpyHostToDevice));
  std::vector<xkv::KVView<bf16>> views;
  for (int l = 0; l < layers; ++l) views.push_back({x.get() + std::int64_t(l) * width, n, heads, head_dim, d, head_dim});

  xkv::cuda::GpuCompressorOptions opt;
  const std::string method = args.count("method") ? args.at("method") : "subspace";
  if (method != "exact" && method != "subspace" && method != "randomized") {
    std::fprintf(stderr, "--method must be subspace, randomized or exact, got %s\n", method.c_str());
    return 2;
  }
  opt.method = method == "exact"        ? xkv::cuda::GpuSvdMethod::Exact
               : method == "randomized" ? xkv::cuda::GpuSvdMethod::Randomized
                                        : xkv::cuda::GpuSvdMethod::Subspace;
  opt.oversampling = int(number(args, "oversampling", opt.oversampling));
  opt.power_iterations = int(number(args, "power-iterations", opt.power_iterations));
  opt.chebyshev_rounds = int(number(args, "chebyshev-rounds", opt.chebyshev_rounds));
  opt.plain_last_round = number(args, "plain-last-round", opt.plain_last_round ? 1 : 0) != 0;
  const std::string filter =
      args.count("filter") ? args.at("filter") : (opt.gram_filter == xkv::cuda::GramFilter::Power ? "power" : "chebyshev");
  if (filter != "chebyshev" && filter != "power") {
    std::fprintf(stderr, "--filter must be chebyshev or power, got %s\n", filter.c_str());
    return 2;
  }
  opt.gram_filter = filter == "power" ? xkv::cuda::GramFilter::Power : xkv::cuda::GramFilter::Chebyshev;
  const std::string precision = args.count("gram-precision") ? args.at("gram-precision") : "fp16";
  if (precision != "fp16" && precision != "tf32" && precision != "fp16split") {
    std::fprintf(stderr, "--gram-precision must be fp16, fp16split or tf32, got %s\n", precision.c_str());
    return 2;
  }
  opt.gram_precision = precision == "tf32"        ? xkv::cuda::GramPrecision::Tf32
                       : precision == "fp16split" ? xkv::cuda::GramPrecision::Fp16Split
                                                  : xkv::cuda::GramPrecision::Fp16;
  if (args.count("staging")) opt.staging_fraction = std::stod(args.at("staging"));
  const std::string ritz = args.count("ritz") ? args.at("ritz") : "syevd";
  if (ritz == "syevj") opt.ritz_solver = xkv::cuda::RitzSolver::Syevj;
  if (ritz == "syevj32") opt.ritz_solver = xkv::cuda::RitzSolver::SyevjFloat;
  if (ritz == "syevd32") opt.ritz_solver = xkv::cuda::RitzSolver::SyevdFloat;
  xkv::cuda::Compressor<bf16> svd(opt);
  xkv::cuda::SvdArguments<bf16> sargs;
  sargs.layers = views;
  sargs.rank = rank;
  sargs.a = a.get();
  sargs.b = b.get();
  xkv::cuda::DeviceBuffer<char> ws(svd.workspace_bytes(sargs));
  xkv::cuda::Stream stream;
  xkv::cuda::EventTimer timer;
  (void)svd.run(sargs, ws.get(), ws.bytes(), stream.get());
  svd.check(stream.get());
  std::vector<float> ms;
  for (int i = 0; i < iters; ++i) {
    timer.start(stream.get());
    (void)svd.run(sargs, ws.get(), ws.bytes(), stream.get());
    ms.push_back(timer.stop(stream.get()));
  }
  svd.check(stream.get());
  std::sort(ms.begin(), ms.end());
  std::printf("method=%s median_ms=%.4f min_ms=%.4f workspace_bytes=%zu\n", method.c_str(), ms[ms.size() / 2], ms[0],
              ws.bytes());
  if (args.count("out-a")) {
    std::vector<bf16> h(a.size());
    XKV_CUDA_CHECK(cudaMemcpy(h.data(), a.get(), a.bytes(), cudaMemcpyDeviceToHost));
    write_file(args.at("out-a"), h.data(), a.bytes());
  }
  if (args.count("out-b")) {
    std::vector<bf16> h(b.size());
    XKV_CUDA_CHECK(cudaMemcpy(h.data(), b.get(), b.bytes(), cudaMemcpyDeviceToHost));
    write_file(args.at("out-b"), h.data(), b.bytes());
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "xkv_svd_cli: %s\n", e.what());
  return 1;
}
