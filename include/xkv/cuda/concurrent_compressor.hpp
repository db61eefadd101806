// Many factorisations at once on one device: a whole model's layer groups after prefill.
//
//   xkv::cuda::ConcurrentCompressor<__nv_bfloat16> all;   // 8 lanes, Cholesky capped at 16 CTAs
//   std::vector<xkv::cuda::SvdArguments<__nv_bfloat16>> jobs = ...;  // keys and values of every group
//   all.run(jobs, stream);   // asynchronous: `stream` waits for every job
//   all.check(stream);       // waits, throws xkv::Error if a factorisation failed
//
// Job j runs on lane j % lanes, a stream forked from the caller's, with a Compressor of its own
// and the lane's workspace (the jobs of one lane run in order, so they share it). One job's
// small-side steps (CholeskyQR: latency-bound) then overlap the other jobs' GEMMs: on an H200 the
// 16 factorisations of a 32k-token Llama-3.1-8B prefill took 44 ms on 8 lanes against 64.7 ms one
// after another, 41-42 ms in lockstep (below), when these figures were taken; the current ones are
// in docs/PERFORMANCE.md (27.3-28.4 ms on 8 lanes in lockstep from a graph, 2026-11-30 15:00 UTC;
// 21-23 ms added to a prefill when each group is compressed beside it). The outputs are bit-identical to
// running each job alone with the same options. workspace_bytes(jobs) says up front what a run
// allocates. Once a run has sized the workspaces, run() with the same (or smaller) jobs enqueues
// stream work only, so it can be captured into a CUDA graph (thread-local or relaxed capture
// mode) and replayed; each replay writes the bytes of a direct run (`GpuSvdConcurrent.
// RunCapturesIntoACudaGraph`). On the H200 the replay saves the host's ~1000 launches: 38.7-38.8 ms
// against 39.0-39.9 ms in lockstep on 16 lanes.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <vector>

#include "xkv/cuda/compressor.hpp"

namespace xkv::cuda {

template <class T>
class ConcurrentCompressor {
 public:
  static constexpr int kDefaultLanes = 8;
  /// Cholesky CTAs per job when options.cholesky_ctas is 0: small enough that the kernels of
  /// several jobs leave most SMs to the others' GEMMs (the best of 1-32 measured on an H200).
  static constexpr int kDefaultCholeskyCtas = 16;

  /// lockstep: jobs that take the Gram product with the same rank run as batches of up to 16:
  /// every job's GEMMs on its own lane (round-robin), and each round's factorisations as ONE
  /// batched Cholesky launch for the batch (one chain of grid barriers per round instead of one
  /// per job), joined to and forked from the jobs' lanes by events. Such jobs get a workspace each
  /// (they run at the same time, so a lane cannot share one): on an H200 the 16 factorisations
  /// above took 40.3 ms with 1.59 GiB against 41.8 ms with 0.80 GiB without lockstep (8 lanes, with
  /// the options of 2026-11-29; docs/PERFORMANCE.md has the current figures). Results are
  /// the bytes of separate runs either way.
  explicit ConcurrentCompressor(GpuCompressorOptions options = {}, int lanes = kDefaultLanes, bool lockstep = false);
  ~ConcurrentCompressor();
  ConcurrentCompressor(ConcurrentCompressor&&) noexcept;
  ConcurrentCompressor& operator=(ConcurrentCompressor&&) noexcept;
  ConcurrentCompressor(const ConcurrentCompressor&) = delete;
  ConcurrentCompressor& operator=(const ConcurrentCompressor&) = delete;

  /// Checks every job first (xkv::Error naming the job and the field; nothing is enqueued then),
  /// grows the lanes' workspaces where needed (waiting for those lanes first), then enqueues every
  /// job: the lanes wait for the work already on `stream`, and `stream` waits for every lane.
  /// Fixed ranks only: an energy rank (rank == 0) reads the spectrum back and would serialise.
  std::vector<SvdRun> run(std::span<const SvdArguments<T>> jobs, cudaStream_t stream);
  /// Waits for `stream` and throws xkv::Error if a factorisation of the last run failed.
  void check(cudaStream_t stream) const;

  [[nodiscard]] int lanes() const;
  /// Device workspace run(jobs) allocates on a fresh instance, known before anything is allocated
  /// (the jobs are checked as run checks them): the largest job of each lane, summed over the
  /// lanes, plus a buffer per lockstep job.
  [[nodiscard]] std::size_t workspace_bytes(std::span<const SvdArguments<T>> jobs) const;
  /// Device workspace held now (buffers only grow across runs).
  [[nodiscard]] std::size_t workspace_bytes() const;
  [[nodiscard]] const GpuCompressorOptions& options() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

extern template class ConcurrentCompressor<__nv_bfloat16>;
extern template class ConcurrentCompressor<__half>;
extern template class ConcurrentCompressor<float>;

}  // namespace xkv::cuda
