// xkv::cuda::ConcurrentCompressor: lanes of streams, one Compressor per job, fork/join by events.
#include "xkv/cuda/concurrent_compressor.hpp"

#include <algorithm>
#include <string>

#include "xkv/cuda/device.hpp"

namespace xkv::cuda {

template <class T>
struct ConcurrentCompressor<T>::State {
  GpuCompressorOptions options;
  std::vector<std::unique_ptr<Stream>> lanes;
  std::vector<DeviceBuffer<char>> workspaces;  ///< one per lane
  std::vector<std::unique_ptr<Compressor<T>>> compressors;  ///< one per job slot, kept across runs
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
ConcurrentCompressor<T>::ConcurrentCompressor(GpuCompressorOptions options, int lanes)
    : state_(std::make_unique<State>()) {
  options.validate();
  XKV_REQUIRE(lanes >= 1 && lanes <= 64, "ConcurrentCompressor: lanes must be in [1, 64], got " << lanes);
  if (options.cholesky_ctas == 0) options.cholesky_ctas = kDefaultCholeskyCtas;
  State& s = *state_;
  s.options = options;
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

template <class T>
std::vector<SvdRun> ConcurrentCompressor<T>::run(std::span<const SvdArguments<T>> jobs, cudaStream_t stream) {
  State& s = *state_;
  const std::size_t lanes = s.lanes.size();
  while (s.compressors.size() < jobs.size()) s.compressors.push_back(std::make_unique<Compressor<T>>(s.options));
  // Every check before anything is enqueued.
  std::vector<std::size_t> needed(lanes, 0);
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    try {
      XKV_REQUIRE(jobs[j].rank > 0, "rank must be fixed (> 0) here, got " << jobs[j].rank
                                                                         << ": an energy rank synchronises");
      needed[j % lanes] = std::max(needed[j % lanes], s.compressors[j]->workspace_bytes(jobs[j]));
    } catch (const Error& e) {  // name the job, keep the kind
      throw Error(e.kind(), "ConcurrentCompressor::run: job " + std::to_string(j) + ": " + e.what());
    }
  }
  for (std::size_t lane = 0; lane < lanes; ++lane) {
    if (s.workspaces[lane].bytes() >= needed[lane]) continue;
    s.lanes[lane]->synchronize();  // the previous run's jobs on this lane may still use the old buffer
    s.workspaces[lane] = DeviceBuffer<char>();
    s.workspaces[lane] = DeviceBuffer<char>(needed[lane]);
  }
  XKV_CUDA_CHECK(cudaEventRecord(s.fork, stream));
  for (auto& lane : s.lanes) XKV_CUDA_CHECK(cudaStreamWaitEvent(lane->get(), s.fork));
  std::vector<SvdRun> runs;
  runs.reserve(jobs.size());
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    const std::size_t lane = j % lanes;
    runs.push_back(s.compressors[j]->run(jobs[j], s.workspaces[lane].get(), s.workspaces[lane].bytes(),
                                         s.lanes[lane]->get()));
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
      s.compressors[j]->check(s.lanes[j % s.lanes.size()]->get());
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
