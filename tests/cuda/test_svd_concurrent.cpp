// ConcurrentCompressor: several factorisations on lanes of streams give the bytes that running
// each job alone gives; bad jobs are reported by index before anything runs. Skips without a GPU.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "test_svd_util.hpp"
#include "xkv/cuda/concurrent_compressor.hpp"

namespace xkv::test {
namespace {

using cuda::GpuCompressorOptions;
using cuda::GpuSvdMethod;

struct Job {
  DeviceGroup<__nv_bfloat16> group;
  int rank;
};

std::vector<Job> make_jobs() {
  std::vector<Job> jobs;
  const auto seed = test_seed();
  // Different shapes, layouts and ranks; the first two large enough for the Gram product.
  jobs.push_back({upload<__nv_bfloat16>(spectrum_matrix(3000, 256, 0.7, seed + 31), 4, 2, 32, Layout::Interleaved), 24});
  jobs.push_back({upload<__nv_bfloat16>(spectrum_matrix(3000, 256, 0.6, seed + 32), 4, 2, 32, Layout::HeadMajor), 40});
  jobs.push_back({upload<__nv_bfloat16>(spectrum_matrix(500, 384, 0.8, seed + 33), 3, 2, 64, Layout::TokenMajorPadded), 33});
  jobs.push_back({upload<__nv_bfloat16>(spectrum_matrix(77, 18, 0.5, seed + 34), 3, 1, 6, Layout::HeadMajor), 5});
  jobs.push_back({upload<__nv_bfloat16>(spectrum_matrix(1200, 192, 0.7, seed + 35), 2, 3, 32, Layout::Interleaved), 17});
  // The Gram product at job 0's rank: in lockstep, jobs 0 and 5 share a batch.
  jobs.push_back({upload<__nv_bfloat16>(spectrum_matrix(2600, 256, 0.8, seed + 36), 2, 4, 32, Layout::TokenMajorPadded), 24});
  return jobs;
}

/// Poisoned device outputs for every job and the arguments that point at them.
struct JobOutputs {
  std::vector<std::unique_ptr<DeviceFactors<__nv_bfloat16>>> factors;
  std::vector<cuda::SvdArguments<__nv_bfloat16>> args;

  explicit JobOutputs(const std::vector<Job>& jobs) : args(jobs.size()) {
    for (std::size_t j = 0; j < jobs.size(); ++j) {
      factors.push_back(std::make_unique<DeviceFactors<__nv_bfloat16>>(jobs[j].group.n, jobs[j].group.d(), jobs[j].rank));
      args[j].layers = jobs[j].group.views;
      args[j].rank = jobs[j].rank;
      args[j].a = factors[j]->a.get();
      args[j].b = factors[j]->b.get();
    }
  }
  [[nodiscard]] HostFactors fetch_job(const std::vector<Job>& jobs, std::size_t j) const {
    return fetch(*factors[j], jobs[j].group.n, jobs[j].group.layers, jobs[j].group.width(), jobs[j].rank);
  }
};

TEST(GpuSvdConcurrent, LanesGiveTheBytesOfSeparateRuns) {
  XKV_SKIP_WITHOUT_GPU();
  const auto jobs = make_jobs();
  // Auto: sketches for the small jobs; Gram for all, so that lockstep batches every job by rank
  // (jobs 0 and 5 share one).
  for (const auto product : {cuda::SubspaceProduct::Auto, cuda::SubspaceProduct::Gram}) {
  SCOPED_TRACE(product == cuda::SubspaceProduct::Gram ? "Gram product for every job" : "automatic product");
  GpuCompressorOptions opt;
  opt.seed = test_seed();
  opt.subspace_product = product;
  // Alone, one after another, with the default (uncapped) Cholesky grid.
  std::vector<HostFactors> alone;
  for (const Job& job : jobs) {
    cuda::Compressor<__nv_bfloat16> svd(opt);
    DeviceFactors<__nv_bfloat16> f(job.group.n, job.group.d(), job.rank);
    cuda::SvdArguments<__nv_bfloat16> args;
    args.layers = job.group.views;
    args.rank = job.rank;
    args.a = f.a.get();
    args.b = f.b.get();
    cuda::Stream stream;
    (void)svd.compress_stream(args, stream.get());
    alone.push_back(fetch(f, job.group.n, job.group.layers, job.group.width(), job.rank));
  }
  for (const bool lockstep : {false, true})
  for (const int lanes : {1, 2, 3}) {
    SCOPED_TRACE(::testing::Message() << "lanes " << lanes << (lockstep ? ", lockstep" : ""));
    cuda::ConcurrentCompressor<__nv_bfloat16> all(opt, lanes, lockstep);
    EXPECT_EQ(all.options().cholesky_ctas, cuda::ConcurrentCompressor<__nv_bfloat16>::kDefaultCholeskyCtas);
    JobOutputs out(jobs);
    const auto& outputs = out.factors;
    const auto& args = out.args;
    cuda::Stream stream;
    const std::size_t planned = all.workspace_bytes(args);
    EXPECT_EQ(all.workspace_bytes(), 0u) << "the query allocates nothing";
    for (int repeat = 0; repeat < 2; ++repeat) {  // the second run reuses lanes, workspaces, compressors
      for (const auto& out : outputs) {  // poisoned again: the second run must write every byte too
        XKV_CUDA_CHECK(cudaMemset(out->a.get(), 0xFF, out->a.bytes()));
        XKV_CUDA_CHECK(cudaMemset(out->b.get(), 0xFF, out->b.bytes()));
      }
      XKV_CUDA_CHECK(cudaDeviceSynchronize());
      const auto runs = all.run(args, stream.get());
      all.check(stream.get());
      ASSERT_EQ(runs.size(), jobs.size());
      if (product == cuda::SubspaceProduct::Gram) {
        for (const auto& run : runs) EXPECT_TRUE(run.gram_product);
      }
      for (std::size_t j = 0; j < jobs.size(); ++j) {
        EXPECT_EQ(runs[j].rank, jobs[j].rank);
        EXPECT_EQ(out.fetch_job(jobs, j).raw, alone[j].raw) << "job " << j << " repeat " << repeat;
      }
    }
    EXPECT_GT(all.workspace_bytes(), 0u);
    EXPECT_EQ(all.workspace_bytes(), planned) << "run allocates what the query said";
  }
  }
}

// After a first run has sized the workspaces, run() enqueues stream work only: it can be captured
// into a CUDA graph, and each replay writes the bytes of a direct run.
TEST(GpuSvdConcurrent, RunCapturesIntoACudaGraph) {
  XKV_SKIP_WITHOUT_GPU();
  const auto jobs = make_jobs();
  GpuCompressorOptions opt;
  opt.seed = test_seed();
  opt.subspace_product = cuda::SubspaceProduct::Gram;
  for (const bool lockstep : {false, true}) {
    SCOPED_TRACE(lockstep ? "lockstep" : "lanes");
    cuda::ConcurrentCompressor<__nv_bfloat16> all(opt, 2, lockstep);
    JobOutputs out(jobs);
    const auto& outputs = out.factors;
    const auto& args = out.args;
    cuda::Stream stream;
    (void)all.run(args, stream.get());
    all.check(stream.get());
    std::vector<HostFactors> direct;
    for (std::size_t j = 0; j < jobs.size(); ++j) direct.push_back(out.fetch_job(jobs, j));

    cudaGraph_t graph = nullptr;
    XKV_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeThreadLocal));
    try {
      (void)all.run(args, stream.get());
    } catch (const Error& e) {
      (void)cudaStreamEndCapture(stream.get(), &graph);
      if (graph) (void)cudaGraphDestroy(graph);
      FAIL() << "run() under stream capture: " << e.what();
    }
    XKV_CUDA_CHECK(cudaStreamEndCapture(stream.get(), &graph));
    cudaGraphExec_t exec = nullptr;
    XKV_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    XKV_CUDA_CHECK(cudaGraphDestroy(graph));
    for (int replay = 0; replay < 2; ++replay) {
      for (const auto& out : outputs) {  // poisoned: each replay must write every byte
        XKV_CUDA_CHECK(cudaMemsetAsync(out->a.get(), 0xFF, out->a.bytes(), stream.get()));
        XKV_CUDA_CHECK(cudaMemsetAsync(out->b.get(), 0xFF, out->b.bytes(), stream.get()));
      }
      XKV_CUDA_CHECK(cudaGraphLaunch(exec, stream.get()));
      all.check(stream.get());
      for (std::size_t j = 0; j < jobs.size(); ++j)
        EXPECT_EQ(out.fetch_job(jobs, j).raw, direct[j].raw) << "job " << j << " replay " << replay;
    }
    XKV_CUDA_CHECK(cudaGraphExecDestroy(exec));
  }
}

TEST(GpuSvdConcurrent, BadJobsAreNamedBeforeAnythingRuns) {
  XKV_SKIP_WITHOUT_GPU();
  const auto jobs = make_jobs();
  cuda::ConcurrentCompressor<__nv_bfloat16> all({}, 2);
  DeviceFactors<__nv_bfloat16> f(jobs[0].group.n, jobs[0].group.d(), 8);
  std::vector<cuda::SvdArguments<__nv_bfloat16>> args(2);
  for (auto& a : args) {
    a.layers = jobs[0].group.views;
    a.rank = 8;
    a.a = f.a.get();
    a.b = f.b.get();
  }
  args[1].b = nullptr;
  cuda::Stream stream;
  try {
    (void)all.run(args, stream.get());
    ADD_FAILURE() << "no error for a null output";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("job 1"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("SvdArguments.b"), std::string::npos) << e.what();
  }
  EXPECT_EQ(all.workspace_bytes(), 0u) << "nothing is allocated or enqueued for a bad set";
  try {
    (void)all.workspace_bytes(args);
    ADD_FAILURE() << "no error from the workspace query for a null output";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("job 1"), std::string::npos) << e.what();
  }
  args[1].b = f.b.get();
  args[1].rank = 0;
  args[1].energy_fraction = 0.9;
  args[1].rank_capacity = 8;
  EXPECT_THROW((void)all.run(args, stream.get()), Error);
  EXPECT_THROW((cuda::ConcurrentCompressor<__nv_bfloat16>({}, 0)), Error);
}

}  // namespace
}  // namespace xkv::test
