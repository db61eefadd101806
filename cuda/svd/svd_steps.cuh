// Private to cuda/svd: the host-side steps the GPU SVD methods share (staging chunks of X,
// conversions, cuBLAS GEMM wrappers, CholeskyQR, the final projection A = X V). Included by the
// .cu files of cuda/svd only; every function enqueues work on the caller's stream.
#pragma once

#include <algorithm>
#include <span>

#include "cholesky.hpp"
#include "cholesky_qr.hpp"
#include "svd_kernels.cuh"
#include "svd_plan.hpp"

namespace xkv::cuda::detail {

inline constexpr int kThreads = 256;

inline int grid_for(std::int64_t count) {
  const std::int64_t blocks = (count + kThreads - 1) / kThreads;
  return int(std::clamp<std::int64_t>(blocks, 1, 132 * 16));
}

inline void check_launch() { XKV_CUDA_CHECK(cudaGetLastError()); }

/// The first 8-byte boundary at or after p: where fp64 scratch borrowed from an output starts
/// (plans reserve alignof(double) bytes for it, so sizes never depend on where outputs are).
template <class T>
double* aligned_doubles(T* p) {
  const auto at = reinterpret_cast<std::uintptr_t>(p);
  return reinterpret_cast<double*>((at + alignof(double) - 1) / alignof(double) * alignof(double));
}

template <class T>
LayerTable<T> make_table(std::span<const KVView<T>> layers) {
  LayerTable<T> tab{};
  tab.layers = int(layers.size());
  tab.heads = layers[0].heads;
  tab.head_dim = layers[0].head_dim;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    tab.data[l] = layers[l].data;
    tab.token_stride[l] = layers[l].token_stride;
    tab.head_stride[l] = layers[l].head_stride;
  }
  return tab;
}

/// Stages X[t0 : t0+rows, c0 : c0+cols] into dst (row-major). With energy_partials, also writes
/// kSumBlocks partial sums of squares of the staged values there (fixed grid: deterministic).
template <class T>
void gather(const Plan& plan, const LayerTable<T>& tab, std::int64_t t0, std::int64_t rows, std::int64_t c0,
            std::int64_t cols, T* dst, cudaStream_t stream, double* energy_partials = nullptr) {
  constexpr int kVec = int(16 / sizeof(T));
  const bool vec = plan.vector_loads && c0 % kVec == 0 && cols % kVec == 0;
  const std::int64_t items = rows * (vec ? cols / kVec : cols);
  if (energy_partials) {
    if (vec)
      gather_chunk_kernel<T, kVec, true><<<kSumBlocks, kThreads, 0, stream>>>(tab, t0, rows, c0, cols, dst,
                                                                               energy_partials);
    else
      gather_chunk_kernel<T, 1, true><<<kSumBlocks, kThreads, 0, stream>>>(tab, t0, rows, c0, cols, dst,
                                                                          energy_partials);
  } else if (vec) {
    gather_chunk_kernel<T, kVec><<<grid_for(items), kThreads, 0, stream>>>(tab, t0, rows, c0, cols, dst);
  } else {
    gather_chunk_kernel<T, 1><<<grid_for(items), kThreads, 0, stream>>>(tab, t0, rows, c0, cols, dst);
  }
  check_launch();
}

template <class Src, class Dst>
void convert(const Src* in, Dst* out, std::int64_t count, cudaStream_t stream) {
  convert_kernel<Src, Dst><<<grid_for(count), kThreads, 0, stream>>>(in, out, count);
  check_launch();
}

/// C = op(A) op(B) (+ beta C) through cublasGemmEx with fp32 alpha/beta.
inline void gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, std::int64_t m, std::int64_t n,
          std::int64_t k, const void* a, cudaDataType at, std::int64_t lda, const void* b, cudaDataType bt,
          std::int64_t ldb, float beta, void* c, cudaDataType ct, std::int64_t ldc, cublasComputeType_t compute) {
  const float alpha = 1.0f;
  XKV_CUDA_CHECK(cublasGemmEx(h, ta, tb, int(m), int(n), int(k), &alpha, a, at, int(lda), b, bt, int(ldb), &beta, c,
                              ct, int(ldc), compute, CUBLAS_GEMM_DEFAULT));
}

inline void dgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, std::int64_t m, std::int64_t n,
           std::int64_t k, const double* a, std::int64_t lda, const double* b, std::int64_t ldb, double* c,
           std::int64_t ldc) {
  const double one = 1.0, zero = 0.0;
  XKV_CUDA_CHECK(cublasDgemm(h, ta, tb, int(m), int(n), int(k), &one, a, int(lda), b, int(ldb), &zero, c, int(ldc)));
}

/// Relative diagonal shift before Cholesky of an fp64 Gram matrix (per unit of its trace, after
/// Jacobi scaling for the per-column shift of GramDiagonal): far above fp64 rounding of the Gram,
/// far below anything that changes the subspace.
inline constexpr double kCholeskyShift = 1e-12;
inline constexpr double kCholeskyFloor = 1e-200;

inline CholeskyWorkspace carve_cholesky(const CompressorState& st, double* base, int k) {
  CholeskyWorkspace chol = CholeskyWorkspace::carve(base, k);
  chol.max_ctas = st.cholesky_ctas;
  return chol;
}

/// g (k x k, upper triangle) <- chol + inverse in `chol`, after the diagonal shift relative to its
/// trace (shift_by_trace_kernel).
inline void factor_shifted(double* g, int k, const CholeskyWorkspace& chol, int* info, cudaStream_t stream) {
  shift_by_trace_kernel<<<1, 1024, 0, stream>>>(g, k, kCholeskyShift, kCholeskyFloor);
  check_launch();
  cholesky_inverse(g, k, chol, info, stream);
}

/// out (rows x k, fp64) = x R^{-1} with R^T R = x^T x + shift: one CholeskyQR pass, the
/// triangular solve done as a GEMM with the explicit inverse (R^{-1} = L^{-T}). The randomized
/// method's rounds: their shift stays relative to the trace (shift_by_trace_kernel), so that
/// directions X does not have (a rank-deficient input) stay tiny columns of the basis instead of
/// unit ones. The Rayleigh-Ritz matrix V^T Z that follows is formed in working precision, and unit
/// columns in the null space of X would fill it with indefinite rounding far above its shift.
inline void cholesky_qr(CompressorState& st, const double* x, double* out, std::int64_t rows, int k, double* g,
                 const CholeskyWorkspace& chol, int* info, cudaStream_t stream, int* nonfinite = nullptr) {
  const double one = 1.0, zero = 0.0;
  XKV_CUDA_CHECK(cublasDsyrk(st.blas, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_T, k, int(rows), &one, x, int(rows), &zero, g, k));
  if (nonfinite) {  // NaN or Inf anywhere in X reaches this Gram
    flag_nonfinite_kernel<double><<<1, 256, 0, stream>>>(g, k, nonfinite, k + 1);
    check_launch();
  }
  factor_shifted(g, k, chol, info, stream);
  XKV_CUDA_CHECK(cublasDgemm(st.blas, CUBLAS_OP_N, CUBLAS_OP_T, int(rows), k, k, &one, x, int(rows), chol.w,
                             chol.padded, &zero, out, int(rows)));
}


/// CholeskyQR of z (rows x k, fp32, column-major) into out (rows x k, column-major): R^T R =
/// z^T z + shift summed in fp64 into g, then out = z R^{-1}, both products on the fp64 tensor cores
/// straight from the fp32 z (cholesky_qr.hpp; the row slices of the Gram borrow `scratch`, usually
/// chol's buffers, which the factorisation overwrites next). `nonfinite` flags NaN or Inf in z
/// (through g). In two halves around the factorisation, so that groups run in lockstep can share
/// one batched Cholesky launch: cholesky_qr_gram, then cholesky_inverse(_batched) of g, then
/// cholesky_qr_apply.
inline void cholesky_qr_gram(const float* z, std::int64_t rows, int k, double* g, const GramScratch& scratch,
                             cudaStream_t stream, int* nonfinite = nullptr) {
  // The flag and the per-column shift ride on the pass that sums the Gram's row slices.
  const GramDiagonal diagonal{.shift = true,
                              .relative = kCholeskyShift,
                              .floor = kCholeskyFloor,
                              .nonfinite = nonfinite,
                              .nonfinite_code = kNonFiniteInput};
  basis_gram(z, rows, k, g, scratch, stream, /*stages=*/0, diagonal);
}

template <class Out>
void cholesky_qr_apply(const float* z, Out* out, std::int64_t rows, int k, const CholeskyWorkspace& chol,
                       cudaStream_t stream) {
  apply_inverse(z, rows, k, chol, out, stream);
}

template <class Out>
void cholesky_qr_fp32(const float* z, Out* out, std::int64_t rows, int k, double* g, const CholeskyWorkspace& chol,
                      const GramScratch& scratch, int* info, cudaStream_t stream, int* nonfinite = nullptr) {
  cholesky_qr_gram(z, rows, k, g, scratch, stream, nonfinite);
  cholesky_inverse(g, k, chol, info, stream);
  cholesky_qr_apply(z, out, rows, k, chol, stream);
}

/// Rows [t0, t0 + rows) of X as a row-major matrix with leading dimension `ld`: X itself when the
/// layers tile one matrix (plan.direct), else staged into `stage`. With energy_partials, also
/// kSumBlocks partial sums of their squares.
template <class T>
const T* chunk_of_x(const Plan& plan, const LayerTable<T>& tab, std::int64_t t0, std::int64_t rows, T* stage,
                    double* energy_partials, std::int64_t& ld, cudaStream_t stream) {
  if (!plan.direct) {
    gather(plan, tab, t0, rows, 0, plan.d, stage, stream, energy_partials);
    ld = plan.d;
    return stage;
  }
  if (energy_partials) gather<T>(plan, tab, t0, rows, 0, plan.d, nullptr, stream, energy_partials);
  ld = plan.x_ld;
  return tab.data[0] + t0 * plan.x_ld;
}


/// A (n x r, row-major) = X V with V (d x r, column-major), chunk by chunk.
template <class T>
void project_rows(CompressorState& st, const Plan& plan, const LayerTable<T>& tab, const T* v, int r, T* stage, T* a,
                  cudaStream_t stream) {
  const std::int64_t n = plan.n, d = plan.d;
  const std::int64_t chunks = (n + plan.chunk_rows - 1) / plan.chunk_rows;
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::int64_t t0 = c * plan.chunk_rows;
    const std::int64_t rows = std::min(plan.chunk_rows, n - t0);
    std::int64_t ld = 0;
    const T* x = chunk_of_x(plan, tab, t0, rows, stage, nullptr, ld, stream);
    gemm(st.blas, CUBLAS_OP_T, CUBLAS_OP_N, r, rows, d, v, data_type<T>(), d, x, data_type<T>(), ld, 0.0f, a + t0 * r,
         data_type<T>(), r, fast_compute<T>());
  }
}

/// energies[0] = sum of the chunks' partial sums of ||X||^2.
inline void reduce_input_energy(const Plan& plan, const double* partials, double* energies, cudaStream_t stream) {
  const std::int64_t chunks = (plan.n + plan.chunk_rows - 1) / plan.chunk_rows;
  reduce_partials_kernel<<<1, 256, 0, stream>>>(partials, int(chunks * kSumBlocks), energies);
  check_launch();
}

/// The subspace methods' outputs from their last basis V (d x r in T, column-major, orthonormal):
/// A = X V, B = V^T and, with args.energies, {||X||^2 (summed from the partial sums the first read
/// of X left in `partials`), ||A||^2 = ||X V||^2 (what the projection onto V keeps)}. V may live
/// in the B output itself (plan.v_in_b): it is then copied to `v_copy` (d x r in T) after A is
/// formed, and B written from the copy.
template <class T>
void finish_subspace(CompressorState& st, const Plan& plan, const LayerTable<T>& tab, const SvdArguments<T>& args,
                     const T* v, T* v_copy, T* stage, double* partials, double* energies, cudaStream_t stream) {
  const std::int64_t d = plan.d;
  const int r = plan.rank;
  project_rows(st, plan, tab, v, r, stage, args.a, stream);
  if (v == args.b) {
    XKV_CUDA_CHECK(cudaMemcpyAsync(v_copy, v, std::size_t(d) * r * sizeof(T), cudaMemcpyDeviceToDevice, stream));
    v = v_copy;
  }
  write_b_blocks<T, T>(v, d, r, plan.width, args.b, stream);
  check_launch();
  if (args.energies) {
    reduce_input_energy(plan, partials, energies, stream);
    sum_squares_kernel<T><<<kSumBlocks, 256, 0, stream>>>(args.a, plan.n * r, partials);
    check_launch();
    reduce_partials_kernel<<<1, 256, 0, stream>>>(partials, kSumBlocks, energies + 1);
    check_launch();
    XKV_CUDA_CHECK(cudaMemcpyAsync(args.energies, energies, 2 * sizeof(double), cudaMemcpyDeviceToDevice, stream));
  }
}

}  // namespace xkv::cuda::detail
