// xkv::cuda::ConcurrentCompressor: lanes of streams, one Compressor per job, fork/join by events.
#include "xkv/cuda/concurrent_compressor.hpp"

#include <algorithm>
#include <string>

#include "svd_plan.hpp"
#include "xkv/cuda/device.hpp"

namespace xkv::cuda {

template <class T>
struct ConcurrentCompressor<T>::State {
  GpuCompressorOptions options;
  std::vector<std::unique_ptr<Stream>> lanes;
  std::vector<DeviceBuffer<char>> workspaces;  ///< one per lane
  std::vector<DeviceBuffer<char>> job_workspaces;  ///< lockstep jobs: one per job slot
  bool lockstep = false;
  std::vector<std::size_t> lane_of;  ///< the last run's lane of each job
  std::vector<std::unique_ptr<Compressor<T>>> compressors;  ///< one per job slot, kept across runs
  /// Checks and sizes the jobs of every run and query. Made once: a Compressor's handles and
  /// pinned status words cost host time to create, and freeing pinned memory synchronises the
  /// device (which would also end a stream capture of run()).
  std::unique_ptr<Compressor<T>> planner;
  cudaEvent_t fork = nullptr;
  std::vector<cudaEvent_t> joins;  ///< one per lane
  std::size_t last_jobs = 0;

  ~State() {
    if (fork) (void)cudaEventDestroy(fork);
    for (cudaEvent_t e : joins)
      if (e) (void)cudaEventDestroy(e);
  }
};

template <class T>
ConcurrentCompressor<T>::ConcurrentCompressor(GpuCompressorOptions options, int lanes, bool lockstep)
    : state_(std::make_unique<State>()) {
  options.validate();
  XKV_REQUIRE(lanes >= 1 && lanes <= 64, "ConcurrentCompressor: lanes must be in [1, 64], got " << lanes);
  if (options.cholesky_ctas == 0) options.cholesky_ctas = kDefaultCholeskyCtas;
  State& s = *state_;
  s.options = options;
  s.lockstep = lockstep;
  s.planner = std::make_unique<Compressor<T>>(options);
  XKV_CUDA_CHECK(cudaEventCreateWithFlags(&s.fork, cudaEventDisableTiming));
  for (int i = 0; i < lanes; ++i) {
    s.lanes.push_back(std::make_unique<Stream>());
    s.workspaces.emplace_back();
    s.joins.push_back(nullptr);
    XKV_CUDA_CHECK(cudaEventCreateWithFlags(&s.joins.back(), cudaEventDisableTiming));
  }
}

template <class T>
ConcurrentCompressor<T>::~ConcurrentCompressor() = default;
template <class T>
ConcurrentCompressor<T>::ConcurrentCompressor(ConcurrentCompressor&&) noexcept = default;
template <class T>
ConcurrentCompressor<T>& ConcurrentCompressor<T>::operator=(ConcurrentCompressor&&) noexcept = default;

namespace {

/// Which jobs run where, and the workspace each needs: lockstep batches (same rank, Gram product,
/// at most kMaxCholeskyBatch) with a buffer per job, every job's lane round-robin (the batches'
/// jobs first), and per lane the largest of its other jobs. Checks every job (xkv::Error naming it).
struct Schedule {
  std::vector<std::vector<std::size_t>> batches;
  std::vector<std::size_t> singles, job_bytes, lane_of, lane_bytes;

  [[nodiscard]] std::size_t total_bytes() const {
    std::size_t total = 0;
    for (std::size_t b : lane_bytes) total += b;
    for (const auto& batch : batches)
      for (std::size_t j : batch) total += job_bytes[j];
    return total;
  }
};

template <class T>
Schedule schedule_jobs(std::span<const SvdArguments<T>> jobs, std::size_t lanes, bool lockstep,
                       const Compressor<T>& planner) {
  Schedule plan;
  plan.job_bytes.assign(jobs.size(), 0);
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    try {
      XKV_REQUIRE(jobs[j].rank > 0, "rank must be fixed (> 0) here, got " << jobs[j].rank
                                                                         << ": an energy rank synchronises");
      plan.job_bytes[j] = planner.workspace_bytes(jobs[j]);
      const bool gram =
          lockstep && planner.method_for(jobs[j]) == GpuSvdMethod::Subspace && planner.gram_product_for(jobs[j]);
      if (!gram) {
        plan.singles.push_back(j);
        continue;
      }
      auto open = std::find_if(plan.batches.begin(), plan.batches.end(), [&](const std::vector<std::size_t>& b) {
        return jobs[b.front()].rank == jobs[j].rank && b.size() < std::size_t(detail::kMaxCholeskyBatch);
      });
      if (open == plan.batches.end()) plan.batches.emplace_back(1, j);
      else open->push_back(j);
    } catch (const Error& e) {  // name the job, keep the kind
      throw Error(e.kind(), "ConcurrentCompressor: job " + std::to_string(j) + ": " + e.what());
    }
  }
  // Lanes round-robin over the batches' jobs (each job's GEMMs on its own lane; a batch's
  // factorisations on its first job's lane), then over the other jobs.
  plan.lane_of.assign(jobs.size(), 0);
  plan.lane_bytes.assign(lanes, 0);
  std::size_t next_lane = 0;
  for (const auto& b : plan.batches)
    for (std::size_t j : b) plan.lane_of[j] = next_lane++ % lanes;
  for (std::size_t j : plan.singles) {
    const std::size_t lane = next_lane++ % lanes;
    plan.lane_of[j] = lane;
    plan.lane_bytes[lane] = std::max(plan.lane_bytes[lane], plan.job_bytes[j]);
  }
  return plan;
}

}  // namespace

template <class T>
std::size_t ConcurrentCompressor<T>::workspace_bytes(std::span<const SvdArguments<T>> jobs) const {
  const State& s = *state_;
  return schedule_jobs<T>(jobs, s.lanes.size(), s.lockstep, *s.planner).total_bytes();
}

template <class T>
std::vector<SvdRun> ConcurrentCompressor<T>::run(std::span<const SvdArguments<T>> jobs, cudaStream_t stream) {
  State& s = *state_;
  const std::size_t lanes = s.lanes.size();
  // Every check, and the schedule, before anything is enqueued.
  Schedule plan = schedule_jobs<T>(jobs, lanes, s.lockstep, *s.planner);
  while (s.compressors.size() < jobs.size()) s.compressors.push_back(std::make_unique<Compressor<T>>(s.options));
  while (s.job_workspaces.size() < jobs.size()) s.job_workspaces.emplace_back();
  const auto& batches = plan.batches;
  const auto& singles = plan.singles;
  const auto& bytes = plan.job_bytes;
  const auto& needed = plan.lane_bytes;
  s.lane_of = plan.lane_of;
  bool grow_jobs = false;
  for (const auto& b : batches)
    for (std::size_t j : b) grow_jobs |= s.job_workspaces[j].bytes() < bytes[j];
  if (grow_jobs)
    for (auto& lane : s.lanes) lane->synchronize();  // earlier runs may still use the old buffers
  for (const auto& b : batches)
    for (std::size_t j : b)
      if (s.job_workspaces[j].bytes() < bytes[j]) {
        s.job_workspaces[j] = DeviceBuffer<char>();
        s.job_workspaces[j] = DeviceBuffer<char>(bytes[j]);
      }
  for (std::size_t lane = 0; lane < lanes; ++lane) {
    if (s.workspaces[lane].bytes() >= needed[lane]) continue;
    s.lanes[lane]->synchronize();  // the previous run's jobs on this lane may still use the old buffer
    s.workspaces[lane] = DeviceBuffer<char>();
    s.workspaces[lane] = DeviceBuffer<char>(needed[lane]);
  }
  XKV_CUDA_CHECK(cudaEventRecord(s.fork, stream));
  for (auto& lane : s.lanes) XKV_CUDA_CHECK(cudaStreamWaitEvent(lane->get(), s.fork));
  std::vector<SvdRun> runs(jobs.size());
  for (const auto& batch : batches) {
    auto lane_stream = [&](std::size_t j) { return s.lanes[s.lane_of[j]]->get(); };
    std::vector<detail::Plan> plans;
    plans.reserve(batch.size());
    for (std::size_t j : batch)
      plans.push_back(s.compressors[j]->begin_run(jobs[j], s.job_workspaces[j].get(), s.job_workspaces[j].bytes(),
                                                  lane_stream(j)));
    std::vector<detail::GramJob<T>> gram_jobs;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const std::size_t j = batch[i];
      gram_jobs.push_back({s.compressors[j]->state_.get(), &plans[i], &jobs[j],
                           detail::Workspace{s.job_workspaces[j].get()}, lane_stream(j)});
    }
    detail::run_gram_subspace_lockstep<T>(gram_jobs, lane_stream(batch.front()));
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const std::size_t j = batch[i];
      s.compressors[j]->end_run(jobs[j], plans[i], jobs[j].rank, s.job_workspaces[j].get(), lane_stream(j));
      runs[j] = SvdRun{jobs[j].rank, GpuSvdMethod::Subspace, true};
    }
  }
  for (std::size_t j : singles) {
    const std::size_t lane = s.lane_of[j];
    runs[j] = s.compressors[j]->run(jobs[j], s.workspaces[lane].get(), s.workspaces[lane].bytes(), s.lanes[lane]->get());
  }
  for (std::size_t lane = 0; lane < lanes; ++lane) {
    XKV_CUDA_CHECK(cudaEventRecord(s.joins[lane], s.lanes[lane]->get()));
    XKV_CUDA_CHECK(cudaStreamWaitEvent(stream, s.joins[lane]));
  }
  s.last_jobs = jobs.size();
  return runs;
}

template <class T>
void ConcurrentCompressor<T>::check(cudaStream_t stream) const {
  const State& s = *state_;
  XKV_CUDA_CHECK(cudaStreamSynchronize(stream));
  for (std::size_t j = 0; j < s.last_jobs; ++j) {
    try {
      s.compressors[j]->check(s.lanes[s.lane_of[j]]->get());
    } catch (const Error& e) {
      throw Error(e.kind(), "ConcurrentCompressor: job " + std::to_string(j) + ": " + e.what());
    }
  }
}

template <class T>
int ConcurrentCompressor<T>::lanes() const {
  return int(state_->lanes.size());
}

template <class T>
std::size_t ConcurrentCompressor<T>::workspace_bytes() const {
  std::size_t total = 0;
  for (const auto& w : state_->workspaces) total += w.bytes();
  for (const auto& w : state_->job_workspaces) total += w.bytes();
  return total;
}

template <class T>
const GpuCompressorOptions& ConcurrentCompressor<T>::options() const {
  return state_->options;
}

template class ConcurrentCompressor<__nv_bfloat16>;
template class ConcurrentCompressor<__half>;
template class ConcurrentCompressor<float>;

}  // namespace xkv::cuda
