// Cross-layer truncated SVD of one layer group on the GPU (cuBLAS / cuSOLVER), in the
// validate -> workspace_bytes -> run(stream) shape:
//
//   xkv::cuda::Compressor<__nv_bfloat16> svd(options);
//   xkv::cuda::SvdArguments<__nv_bfloat16> args{layers, rank, ...device outputs...};
//   svd.validate(args);                                   // host-side checks, throws xkv::Error
//   xkv::cuda::DeviceBuffer<std::byte> ws(svd.workspace_bytes(args));
//   svd.run(args, ws.get(), ws.bytes(), stream);          // asynchronous on `stream`
//   svd.check(stream);                                    // waits, throws on a failed factorisation
//
// Inputs are the layers of a group as separate strided device views (token-major or head-major;
// no concatenated copy is made); X = [K_l1 | ... | K_lG] is n x D with D = G * H * d.
// Outputs are the CPU layout of xkv::CompressedFactor: A row-major [n x r], B = G blocks of
// row-major [r x H*d], with X ~= A * [B_1 | ... | B_G]. Eigen-free, so .cu files may include it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "xkv/kv_view.hpp"
#include "xkv/rank_policy.hpp"

namespace xkv::cuda {

/// How the GPU computes the truncated SVD. Both work on the Gram matrix of the smaller side
/// (S = X^T X when D <= n, else X X^T), built with tensor-core GEMMs in fp32 accumulation.
enum class GpuSvdMethod {
  Exact,       ///< cusolverDnXsyevd on S (deterministic mode): the accuracy reference
  Randomized,  ///< subspace iteration on S with CholeskyQR, then a (r+p)^2 Rayleigh-Ritz problem
  /// Subspace iteration at rank r itself (no oversampling, no Rayleigh-Ritz problem):
  /// X ~= (X V) V^T with V from q + 1 CholeskyQR steps over the sketches, or from the Gram
  /// matrix's rounds (GramFilter). Needs about one more power iteration than
  /// Randomized for the same error, but no eigensolver. It computes no singular values: a run
  /// that asks for them uses Randomized instead (see Compressor::method_for).
  Subspace,
};

/// How the Subspace method applies X^T X to its D x r basis V in each round.
enum class SubspaceProduct {
  /// Gram when it takes fewer FLOPs than the sketches and its workspace stays within half of the
  /// input's bytes (n >= ~8 D in bf16, e.g. n >= 32768 at D = 4096), else Sketch.
  Auto,
  Sketch,  ///< X^T (X V) over token chunks: 2 (q + 1) passes over X, workspace O(D r)
  /// G = X^T X once (fp32 accumulate, upper block-rows only: ~(b + 1) / 2b of a full GEMM for b
  /// column blocks), then each round is G V (fp16 or TF32, D^2 r FLOPs) and X is read twice in all.
  /// Workspace adds the D x D fp32 G. Forming G squares the spectrum's range, and the rounds'
  /// 11-bit products of G cannot resolve a discarded eigenvalue much below ~1e-5 of the largest:
  /// measured on an H200 (n = 32768, D = 4096, r = 512, s_i ~ i^-a), two Chebyshev rounds and a
  /// plain last one keep err/opt at 1.0033 / 1.0047 for a = 0.6 / 0.8 (s_1 / s_r ~ 40 / 150) but
  /// reach 1.27 at a = 1.0, where the sketches of GpuSvdMethod::Randomized stay at 1.007-1.009
  /// (docs/PERFORMANCE.md, "Precision floor of the Gram product").
  Gram,
};

/// How the Subspace rounds that run from the Gram matrix G = X^T X (SubspaceProduct::Gram) turn
/// one basis V into the next. Each round ends in one CholeskyQR step, which costs several times a
/// G V product (a latency-bound Cholesky chain and two fp64 D x r x r products).
enum class GramFilter {
  Power,  ///< q + 1 rounds V <- CholeskyQR(G V) (q = power_iterations), as the sketches
  /// The default: a first round V <- CholeskyQR(G V), then `chebyshev_rounds` rounds
  /// V <- CholeskyQR(p(G) V) with p the degree-2 Chebyshev polynomial
  /// that is small on [0, b] (p(G) = G^2 - b G + b^2/8, two G products): b is the mean
  /// eigenvalue of G outside span(V), (trace G - trace V^T G V) / (D - r), so the discarded
  /// spectrum is damped on both sides of b/2 instead of only relative to the kept eigenvalues.
  /// Two such rounds and a plain last one (4 CholeskyQR steps, 6 products) err less than Power
  /// with q = 4 (5 steps, 5 products) and take less time; one (3 steps, 4 products) is faster
  /// still and about as accurate as q = 4; two without the plain last round (the default, 3 steps,
  /// 5 products) sit between (see plain_last_round). On an H200 (n = 32768, D = 4096, s_i ~ i^-a; docs/PERFORMANCE.md), r = 512:
  /// c = 2 / c = 1 / q = 4 err/opt 1.0033 / 1.0076 / 1.0056 at a = 0.6, 1.0047 / 1.0091 / 1.0068 at
  /// a = 0.8, in 2.96 / 2.47 / 3.30 ms; r = 768: 1.0041 / 1.0091 / 1.0070 at a = 0.6 and
  /// 1.0103 / 1.0156 / 1.0128 at a = 0.8. p(G) V spans a range of ~(lambda_1 / b)^2: CholeskyQR
  /// orthonormalises it only because its diagonal shift is taken per column (after Jacobi
  /// scaling); a shift relative to the trace swamped the small columns (c = 1 gave 1.24 at a = 0.8).
  /// A plain round V <- CholeskyQR(G V) follows the filtered ones when there are fewer than two
  /// of them, with GramPrecision::Fp16Split, or when GpuCompressorOptions::plain_last_round asks
  /// for it (the figures above have it).
  /// After one filtered round the basis is still far from the leading eigenvectors and one
  /// CholeskyQR step of that range is not orthonormal to fp32 accuracy; after two, each column is
  /// close to one eigenvector, the columns of p(G) V differ in scale but hardly in direction, and
  /// one (Jacobi-scaled) step orthonormalises them. Only the Gram product offers the filter: the
  /// 16-bit sketches could not hold that range at all.
  Chebyshev,
};

/// The type G and the basis enter each G V product of the Gram rounds in. Fp16 and Tf32 both keep
/// 11 significant bits (TF32 rounds its fp32 operands to that many), so the rounds' error is the
/// same; fp16 runs the tensor cores at twice the TF32 rate, reads half the bytes, and its range is
/// what the scaling below is for. Fp16Split keeps ~22 bits of G for a second product.
enum class GramPrecision {
  /// G times a power of two that puts its largest diagonal entry (for a Gram matrix, >= every entry)
  /// in [2^13, 2^14), rounded to fp16 once, in place (no extra memory); V in fp16. Every quantity of
  /// a round scales with G, and CholeskyQR removes the scale, so the factor leaves no trace.
  Fp16,
  Tf32,  ///< G and V in fp32, multiplied on the TF32 tensor cores
  /// The scaled G as the sum of two fp16 matrices, G ~ H + L with L = fp16(G - H): ~22 significant
  /// bits of G, about fp32's, in the same bytes as the fp32 G (converted in place, no extra
  /// memory); every G V product is two fp16 GEMMs (H V + L V), V still in fp16. The rounds' 11-bit
  /// G is what limits the Gram product on steep spectra (SubspaceProduct::Gram); this lifts that
  /// floor for twice the products' time. On an H200 (n = 32768, D = 4096, r = 512, s_i ~ i^-1.0)
  /// err/opt 1.020 with two Chebyshev rounds and 1.011 with plain rounds (q = 4) instead of 1.27,
  /// in 3.14 ms instead of 2.97 (docs/PERFORMANCE.md). Needs D <= 49152 (one column of G in a
  /// block's shared memory while it is rewritten).
  Fp16Split,
};

/// Eigensolver of the small Rayleigh-Ritz problem of the randomized method.
enum class RitzSolver {
  Syevd,       ///< cusolverDnXsyevd, fp64
  SyevdFloat,  ///< cusolverDnXsyevd, fp32 (the problem is formed in fp64 and rounded)
  Syevj,       ///< cusolverDnDsyevj (Jacobi), fp64
  SyevjFloat,  ///< cusolverDnSsyevj (Jacobi), fp32
};

struct GpuCompressorOptions {
  /// Subspace is the fast default: err/opt about 1.003-1.006 on slowly decaying spectra (from the
  /// Gram matrix at n >= ~8 D with two Chebyshev rounds, 1.005 ending on the second, else over
  /// the sketches with q = 4;
  /// docs/PERFORMANCE.md); Randomized with
  /// q = 2 reaches about the same error with fewer passes over X but pays for the eigensolver, and
  /// holds it on spectra that fall too fast for the Gram product (see SubspaceProduct::Gram);
  /// Exact is the reference.
  GpuSvdMethod method = GpuSvdMethod::Subspace;
  int oversampling = 64;          ///< p: extra directions of the randomized method
  /// q in [0, 13]: X^T X is applied q + 1 times (q power iterations) by the sketches, and by the
  /// Gram product's plain rounds (GramFilter::Power), which at r = 768 reached err/opt 1.0108 with
  /// q = 3 on the benchmark spectrum, 1.0070 with 4.
  int power_iterations = 4;
  std::uint64_t seed = 0x786b76;  ///< same seed => bit-identical output
  RitzSolver ritz_solver = RitzSolver::Syevd;
  SubspaceProduct subspace_product = SubspaceProduct::Auto;
  GramFilter gram_filter = GramFilter::Chebyshev;  ///< rounds from the Gram matrix (see GramFilter)
  /// GramFilter::Chebyshev: filtered rounds after the plain first round, in [0, 12]. One round
  /// (then always followed by a plain round: 3 CholeskyQR steps and 4 G products, against the
  /// default's 3 and 5) took a Llama-3.1-8B 32k-token model's 16 groups 27.3-28.1 ms on an H200
  /// (ConcurrentCompressor, 8 and 16 lanes) against the default's 27.4-28.6 in the same run, at
  /// err/opt 1.0078 against 1.0049 per group (n = 32768, D = 4096, r = 512, s_i ~ i^-0.6;
  /// docs/PERFORMANCE.md).
  int chebyshev_rounds = 2;
  /// GramFilter::Chebyshev with chebyshev_rounds >= 2: false (the default) ends on the last filtered
  /// round; true runs a plain round V <- CholeskyQR(G V) after it, one CholeskyQR step and one G
  /// product more per group. On an H200 (n = 32768, D = 4096, r = 512, s_i ~ i^-0.6): err/opt
  /// 1.0049 in 2.33 ms against 1.0035 in 2.65 ms, and a Llama-3.1-8B 32k-token model's 16 groups
  /// (ConcurrentCompressor, 8 lanes) in 27.4-27.8 ms against 30.4-30.6 ms (docs/PERFORMANCE.md).
  /// The plain round always runs with fewer than two filtered rounds, and with
  /// GramPrecision::Fp16Split: on the steep spectra the split G is for, a filtered round's basis
  /// is not orthonormal after one CholeskyQR step (err/opt 1.16 against 1.02 at s_i ~ i^-1.3).
  bool plain_last_round = false;
  GramPrecision gram_precision = GramPrecision::Fp16;  ///< operands of the Gram rounds' G V products
  /// CTAs of the one-launch Cholesky factorisation (a latency-bound cooperative kernel whose CTAs
  /// wait at grid barriers): 0 uses as many as its widest step can (fastest for one group alone);
  /// a small cap such as 16 leaves the other SMs to the GEMMs of groups compressed at the same
  /// time on other streams.
  int cholesky_ctas = 0;
  /// Largest token (or column) chunk staged at once, as a fraction of the group's input bytes.
  double staging_fraction = 0.125;

  /// Throws xkv::Error naming the offending field.
  void validate() const;
};

/// One stream (keys or values) of one group. All pointers are device pointers. To keep the first
/// s tokens exact (attention sinks, as CacheOptions::sink_tokens does on the CPU), pass views
/// that start at token s (data + s * token_stride, tokens n - s) and keep those s rows yourself.
template <class T>
struct SvdArguments {
  std::span<const KVView<T>> layers;  ///< G views of the same shape and token count
  int rank = 0;                 ///< r in [1, min(n, D)]; 0: smallest rank keeping energy_fraction
  double energy_fraction = 1.0;  ///< used when rank == 0 (forces the exact method, one sync)
  int rank_capacity = 0;        ///< room the outputs have, in ranks; 0 means `rank`
  T* a = nullptr;               ///< [n x r] row-major (r = the rank chosen); also the run's scratch until A is written
  T* b = nullptr;               ///< G blocks of [r x H*d] row-major; also the run's scratch until B is written
  float* singular_values = nullptr;  ///< optional: r values, descending
  double* energies = nullptr;        ///< optional: {||X||_F^2, sum of the kept s_i^2}
  /// Optional: each B_l transposed as well, G blocks of [H*d x bt_ld] row-major (columns r and
  /// on untouched): the operand layout of ReconstructParams::bt, so that factors compressed here
  /// reconstruct on the wgmma kernel without a host round trip.
  T* bt = nullptr;
  std::int64_t bt_ld = 0;  ///< row stride of bt in elements; 0 means the capacity (rank_capacity, else rank)
};

/// The rank a run chose and the method it used.
struct SvdRun {
  int rank = 0;
  GpuSvdMethod method = GpuSvdMethod::Exact;
  bool gram_product = false;  ///< Subspace ran from the D x D Gram matrix (SubspaceProduct::Gram)
};

/// Outputs of one group's keys or values for compress_group.
template <class T>
struct DeviceFactorOutputs {
  T* a = nullptr;
  T* b = nullptr;
  float* singular_values = nullptr;
  double* energies = nullptr;
  int rank_capacity = 0;
  T* bt = nullptr;         ///< optional, see SvdArguments::bt
  std::int64_t bt_ld = 0;
};

namespace detail {
struct CompressorState;  // handles, host workspace, pinned status words
struct Plan;             // the buffers and steps of one run
}
template <class T>
class ConcurrentCompressor;

/// Truncated SVD of layer groups on one device. T is the storage type of inputs and factors:
/// __nv_bfloat16, __half or float. Not thread-safe: one run at a time per object. To compress
/// several groups at once (a whole model after prefill), use ConcurrentCompressor
/// (concurrent_compressor.hpp): one Compressor per job on lanes of streams, so the small-side
/// steps of one group (CholeskyQR, latency-bound) overlap the GEMMs of the others.
template <class T>
class Compressor {
 public:
  explicit Compressor(GpuCompressorOptions options = {});
  ~Compressor();
  Compressor(Compressor&&) noexcept;
  Compressor& operator=(Compressor&&) noexcept;
  Compressor(const Compressor&) = delete;
  Compressor& operator=(const Compressor&) = delete;

  /// Host-side checks of shapes, strides, ranks and pointers; throws xkv::Error naming the field.
  void validate(const SvdArguments<T>& args) const;
  /// Bytes of device workspace run() needs for these arguments (after validate()).
  [[nodiscard]] std::size_t workspace_bytes(const SvdArguments<T>& args) const;
  /// The method run() will use for these arguments.
  [[nodiscard]] GpuSvdMethod method_for(const SvdArguments<T>& args) const;
  /// Whether run() will apply X^T X through the D x D Gram matrix (SubspaceProduct).
  [[nodiscard]] bool gram_product_for(const SvdArguments<T>& args) const;

  /// Enqueues the factorisation on `stream`. Asynchronous, except for energy ranks (rank == 0),
  /// where the spectrum is read back to choose r. `workspace` must hold workspace_bytes(args).
  SvdRun run(const SvdArguments<T>& args, void* workspace, std::size_t workspace_size, cudaStream_t stream);
  /// Waits for `stream` and throws xkv::Error(Numerical) if a factorisation of the last run failed.
  void check(cudaStream_t stream) const;

  /// validate + allocate workspace + run + check, for callers without a workspace of their own.
  SvdRun compress_stream(const SvdArguments<T>& args, cudaStream_t stream);

  /// A group's keys and values with ranks from `policy` (Fixed, Ratio; Energy per stream).
  /// `values` may be empty. Allocates and frees its own workspace; synchronises `stream`.
  GroupRanks compress_group(std::span<const KVView<T>> keys, std::span<const KVView<T>> values,
                            const RankPolicy& policy, const DeviceFactorOutputs<T>& key_out,
                            const DeviceFactorOutputs<T>& value_out, cudaStream_t stream);

  [[nodiscard]] const GpuCompressorOptions& options() const { return options_; }

 private:
  friend class ConcurrentCompressor<T>;  // runs Gram-product jobs of several Compressors in lockstep
  /// run() around its method: checks, plan, streams, status words cleared / the optional B^T and
  /// the status words copied back.
  detail::Plan begin_run(const SvdArguments<T>& args, void* workspace, std::size_t workspace_size, cudaStream_t stream);
  void end_run(const SvdArguments<T>& args, const detail::Plan& plan, int rank, void* workspace, cudaStream_t stream);

  GpuCompressorOptions options_;
  std::unique_ptr<detail::CompressorState> state_;
};

extern template class Compressor<__nv_bfloat16>;
extern template class Compressor<__half>;
extern template class Compressor<float>;

}  // namespace xkv::cuda
