// GPU truncated SVD of a layer group: tensor-core GEMMs over staged token chunks, fp64 work on
// the small side only. See include/xkv/cuda/compressor.hpp for the contract.
//
// Randomized method (X is n x D, k = r + p, V_0 Gaussian D x k):
//   round i = 0..q:  Z_i = X^T (X V_i)      chunk by chunk: Y_c = X_c V_i (bf16), Z_i += X_c^T Y_c (fp32)
//                    V_{i+1} = CholeskyQR(Z_i) in fp64 (i < q)
//   Rayleigh-Ritz:   with Y = X V_q, Y^T Y = V_q^T Z_q = R^T R and Q = Y R^{-1} orthonormal,
//                    Bt = X^T Q = Z_q R^{-1} (D x k); eig(Bt^T Bt) = W diag(s^2) W^T;
//                    V_r = Bt W_r diag(1/s_r) (orthonormal); A = X V_r, B = V_r^T.
//   Only D x k and k x k matrices are orthonormalised, so the n-side never needs a solve, and the
//   only passes over X are 2(q+1) sketch GEMMs and the final A = X V_r.
// Subspace method: the same rounds at k = r without the Rayleigh-Ritz problem; V_q is B^T. When the
// D x D Gram matrix is cheaper than the sketches it runs from G = X^T X instead (gram_subspace.cu).
// Exact method: S = Gram of the smaller side (fp32 accumulate), cusolverDnXsyevd, then A/B as on the CPU.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "svd_steps.cuh"

namespace xkv::cuda {

namespace detail {

namespace {

/// Eigen-decomposition of the k x k Rayleigh-Ritz matrix g (upper triangle, fp64): eigenvalues
/// ascending into mu, eigenvectors into g, with the solver the options chose.
void solve_ritz(CompressorState& st, const Plan& plan, double* g, double* mu, const Workspace& ws, void* solver_ws,
                int* info, cudaStream_t stream) {
  const int k = plan.k;
  const std::int64_t kk = std::int64_t(k) * k;
  auto* g32 = ws.get<float>(plan.off_g32);
  auto* mu32 = ws.get<float>(plan.off_mu32);
  switch (st.ritz_solver) {
    case RitzSolver::Syevd:
      XKV_CUDA_CHECK(cusolverDnXsyevd(st.solver, st.params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, k,
                                      CUDA_R_64F, g, k, CUDA_R_64F, mu, CUDA_R_64F, solver_ws, plan.solver_bytes,
                                      st.host_workspace.data(), st.host_workspace.size(), info));
      return;
    case RitzSolver::Syevj:
      XKV_CUDA_CHECK(cusolverDnXsyevjSetTolerance(st.syevj, 1e-10));
      XKV_CUDA_CHECK(cusolverDnXsyevjSetMaxSweeps(st.syevj, 30));
      XKV_CUDA_CHECK(cusolverDnDsyevj(st.solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, k, g, k, mu,
                                      static_cast<double*>(solver_ws), int(plan.solver_bytes / sizeof(double)), info,
                                      st.syevj));
      return;
    case RitzSolver::SyevdFloat:
    case RitzSolver::SyevjFloat:
      convert(g, g32, kk, stream);
      if (st.ritz_solver == RitzSolver::SyevdFloat) {
        XKV_CUDA_CHECK(cusolverDnXsyevd(st.solver, st.params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, k,
                                        CUDA_R_32F, g32, k, CUDA_R_32F, mu32, CUDA_R_32F, solver_ws, plan.solver_bytes,
                                        st.host_workspace.data(), st.host_workspace.size(), info));
      } else {
        XKV_CUDA_CHECK(cusolverDnXsyevjSetTolerance(st.syevj, 1e-6));
        XKV_CUDA_CHECK(cusolverDnXsyevjSetMaxSweeps(st.syevj, 30));
        XKV_CUDA_CHECK(cusolverDnSsyevj(st.solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, k, g32, k, mu32,
                                        static_cast<float*>(solver_ws), int(plan.solver_bytes / sizeof(float)), info,
                                        st.syevj));
      }
      convert(g32, g, kk, stream);
      convert(mu32, mu, k, stream);
      return;
  }
}

/// One sketch pass over X: Z (d x k, fp32) = X^T (X V), chunk by chunk: Y_c = X_c V (in T),
/// Z += X_c^T Y_c. With energy_partials, the first read also sums ||X_c||^2 (kSumBlocks per chunk).
/// Y_c goes to yc, or with plan.y_in_a to rows t0.. of yc as an n x k row-major matrix (the A output).
template <class T>
void sketch_pass(CompressorState& st, const Plan& plan, const LayerTable<T>& tab, const T* v, int k, T* stage, T* yc,
                 float* z, double* energy_partials, cudaStream_t stream) {
  const cudaDataType dt = data_type<T>();
  const cublasComputeType_t compute = fast_compute<T>();
  const std::int64_t n = plan.n, d = plan.d;
  const std::int64_t chunks = (n + plan.chunk_rows - 1) / plan.chunk_rows;
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::int64_t t0 = c * plan.chunk_rows;
    const std::int64_t rows = std::min(plan.chunk_rows, n - t0);
    std::int64_t ld = 0;
    const T* x = chunk_of_x(plan, tab, t0, rows, stage, energy_partials ? energy_partials + c * kSumBlocks : nullptr,
                            ld, stream);
    // Y_c (k x rows) = V^T X_c^T ; Z (d x k) += X_c^T Y_c^T in column-major terms.
    T* y = plan.y_in_a ? yc + t0 * k : yc;
    gemm(st.blas, CUBLAS_OP_T, CUBLAS_OP_N, k, rows, d, v, dt, d, x, dt, ld, 0.0f, y, dt, k, compute);
    gemm(st.blas, CUBLAS_OP_N, CUBLAS_OP_T, d, k, rows, x, dt, ld, y, dt, k, c == 0 ? 0.0f : 1.0f, z, CUDA_R_32F, d,
         compute);
  }
}

}  // namespace

template <class T>
void run_randomized(CompressorState& st, const Plan& plan, const SvdArguments<T>& args, const Workspace& ws,
                    cudaStream_t stream) {
  const auto tab = make_table(args.layers);
  const std::int64_t d = plan.d;
  const int k = plan.k, r = plan.rank;
  auto* stage = ws.get<T>(plan.off_stage);
  auto* yc = ws.get<T>(plan.off_yc);
  auto* z = ws.get<float>(plan.off_z);
  auto* zd = ws.get<double>(plan.off_zd);
  auto* vd = ws.get<double>(plan.off_vd);
  auto* v = ws.get<T>(plan.off_v);
  auto* vrt = ws.get<T>(plan.off_vrt);
  auto* g = ws.get<double>(plan.off_g);
  auto* wsc = ws.get<double>(plan.off_wsc);
  auto* mu = ws.get<double>(plan.off_eigenvalues);
  auto* scale = ws.get<double>(plan.off_scale);
  auto* partials = ws.get<double>(plan.off_partials);
  auto* energies = ws.get<double>(plan.off_energies);
  auto* info = ws.get<int>(plan.off_info);
  void* solver_ws = ws.get<char>(plan.off_solver);
  const CholeskyWorkspace chol = carve_cholesky(st, ws.get<double>(plan.off_chol), k);

  gaussian_kernel<T><<<grid_for(d * k), kThreads, 0, stream>>>(v, d * k, st.seed);
  check_launch();
  int slot = 0;
  for (int round = 0; round <= plan.power_iterations; ++round) {
    sketch_pass(st, plan, tab, v, k, stage, yc, z, round == 0 && args.energies ? partials : nullptr, stream);
    if (round < plan.power_iterations) {
      convert(z, zd, d * k, stream);
      cholesky_qr(st, zd, vd, d, k, g, chol, info + slot++, stream);
      convert(vd, v, d * k, stream);
    }
  }

  // Rayleigh-Ritz on span(X^T X V_q), using the V_q that was actually multiplied (rounded to T).
  convert(v, vd, d * k, stream);
  convert(z, zd, d * k, stream);
  dgemm(st.blas, CUBLAS_OP_T, CUBLAS_OP_N, k, k, d, vd, d, zd, d, g, k);  // V^T Z = Y^T Y
  {
    const dim3 block(32, 8), grid((k + 31) / 32, (k + 7) / 8);
    symmetrize_upper_kernel<<<grid, block, 0, stream>>>(g, k);
    check_launch();
  }
  factor_shifted(g, k, chol, info + slot++, stream);  // V^T Z: no Gram of a stored matrix
  const double one = 1.0, zero = 0.0;
  double* bt = vd;  // Bt = X^T Q = Z R^{-1} (d x k); V's fp64 copy is no longer needed
  XKV_CUDA_CHECK(cublasDgemm(st.blas, CUBLAS_OP_N, CUBLAS_OP_T, int(d), k, k, &one, zd, int(d), chol.w, chol.padded,
                             &zero, bt, int(d)));
  XKV_CUDA_CHECK(cublasDsyrk(st.blas, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_T, k, int(d), &one, bt, int(d), &zero, g, k));
  solve_ritz(st, plan, g, mu, ws, solver_ws, info + slot++, stream);
  flag_nonfinite_kernel<double><<<1, 256, 0, stream>>>(mu, k, info + kNonFiniteSlot, 1);
  check_launch();
  select_top_kernel<double><<<1, 256, 0, stream>>>(mu, k, r, args.singular_values, scale, energies + 1);
  check_launch();
  take_top_columns_kernel<double, double><<<grid_for(std::int64_t(k) * r), kThreads, 0, stream>>>(g, k, k, r, scale, wsc);
  check_launch();
  double* vr = zd;  // V_r (d x r, fp64) reuses Z's fp64 copy
  dgemm(st.blas, CUBLAS_OP_N, CUBLAS_OP_N, d, r, k, bt, d, wsc, k, vr, d);
  convert(vr, vrt, d * r, stream);
  write_b_blocks<T, T>(vrt, d, r, plan.width, args.b, stream);
  check_launch();
  project_rows(st, plan, tab, vrt, r, stage, args.a, stream);
  if (args.energies) {
    reduce_input_energy(plan, partials, energies, stream);
    XKV_CUDA_CHECK(cudaMemcpyAsync(args.energies, energies, 2 * sizeof(double), cudaMemcpyDeviceToDevice, stream));
  }
}

template <class T>
void run_subspace(CompressorState& st, const Plan& plan, const SvdArguments<T>& args, const Workspace& ws,
                  cudaStream_t stream) {
  const auto tab = make_table(args.layers);
  const std::int64_t d = plan.d;
  const int r = plan.rank;
  auto* stage = ws.get<T>(plan.off_stage);
  T* yc = args.a;  // plan.y_in_a: each round's Y lives in the A output until A = X V replaces it
  auto* z = ws.get<float>(plan.off_z);
  // plan.v_in_b: the basis lives in the B output (read by the next round's Y = X V, rewritten by
  // CholeskyQR after that round's Z = X^T Y; dead in between).
  T* v = plan.v_in_b ? args.b : ws.get<T>(plan.off_v);
  // plan.g_in_a: the Gram is consumed by each round's factorisation before the next Y overwrites it.
  double* g = plan.g_in_a ? aligned_doubles(args.a) : ws.get<double>(plan.off_g);
  auto* partials = ws.get<double>(plan.off_partials);
  auto* energies = ws.get<double>(plan.off_energies);
  auto* info = ws.get<int>(plan.off_info);
  CholeskyWorkspace chol = plan.chol_in_place
                               ? CholeskyWorkspace::carve_in_place(ws.get<double>(plan.off_chol), g, r)
                               : CholeskyWorkspace::carve(ws.get<double>(plan.off_chol), r);
  chol.max_ctas = st.cholesky_ctas;
  // The Gram's row slices also use what of A and B is dead while CholeskyQR runs.
  GramScratch scratch(chol, g);
  if (plan.gram_slot_in_a) scratch.add(g + std::size_t(r) * r);
  if (plan.gram_slot_in_b) scratch.add(aligned_doubles(args.b));

  gaussian_kernel<T><<<grid_for(d * r), kThreads, 0, stream>>>(v, d * r, st.seed);
  check_launch();
  int slot = 0;
  for (int round = 0; round <= plan.power_iterations; ++round) {
    sketch_pass(st, plan, tab, v, r, stage, yc, z, round == 0 && args.energies ? partials : nullptr, stream);
    // One CholeskyQR pass leaves V^T V - I at about cond(Z)^2 * 1e-16 in fp64, far below the
    // 16-bit rounding of B = V^T that follows, so the last basis needs no second pass.
    cholesky_qr_fp32(z, v, d, r, g, chol, scratch, info + slot++, stream,
                     round == 0 ? info + kNonFiniteSlot : nullptr);
  }
  // V (d x r, column-major) is both B^T and the right factor of A = X V; Z is dead, so it takes
  // V's copy when V is in B.
  finish_subspace(st, plan, tab, args, v, reinterpret_cast<T*>(z), stage, partials, energies, stream);
}

template <class T>
int run_exact(CompressorState& st, const Plan& plan, const SvdArguments<T>& args, const Workspace& ws,
              cudaStream_t stream) {
  const auto tab = make_table(args.layers);
  const cudaDataType dt = data_type<T>();
  const cublasComputeType_t compute = exact_compute<T>();
  const std::int64_t n = plan.n, d = plan.d, m = plan.m;
  auto* s = ws.get<float>(plan.off_s);
  auto* stage = ws.get<T>(plan.off_stage);
  auto* lambda = ws.get<float>(plan.off_eigenvalues);
  auto* vrt = ws.get<T>(plan.off_vrt);
  auto* energies = ws.get<double>(plan.off_energies);
  auto* info = ws.get<int>(plan.off_info);
  void* solver_ws = ws.get<char>(plan.off_solver);

  if (plan.cols_side) {  // S = X^T X (d x d)
    const std::int64_t chunks = (n + plan.chunk_rows - 1) / plan.chunk_rows;
    for (std::int64_t c = 0; c < chunks; ++c) {
      const std::int64_t t0 = c * plan.chunk_rows;
      const std::int64_t rows = std::min(plan.chunk_rows, n - t0);
      gather(plan, tab, t0, rows, 0, d, stage, stream);
      gemm(st.blas, CUBLAS_OP_N, CUBLAS_OP_T, d, d, rows, stage, dt, d, stage, dt, d, c == 0 ? 0.0f : 1.0f, s,
           CUDA_R_32F, d, compute);
    }
  } else {  // S = X X^T (n x n), column panels inside one layer
    bool first = true;
    for (int l = 0; l < plan.layers; ++l) {
      for (std::int64_t j0 = 0; j0 < plan.width; j0 += plan.panel_cols) {
        const std::int64_t w = std::min<std::int64_t>(plan.panel_cols, plan.width - j0);
        gather(plan, tab, 0, n, std::int64_t(l) * plan.width + j0, w, stage, stream);
        gemm(st.blas, CUBLAS_OP_T, CUBLAS_OP_N, n, n, w, stage, dt, w, stage, dt, w, first ? 0.0f : 1.0f, s,
             CUDA_R_32F, n, compute);
        first = false;
      }
    }
  }
  trace_kernel<<<1, 256, 0, stream>>>(s, m, energies);
  check_launch();
  XKV_CUDA_CHECK(cusolverDnXsyevd(st.solver, st.params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, m,
                                  CUDA_R_32F, s, m, CUDA_R_32F, lambda, CUDA_R_32F, solver_ws, plan.solver_bytes,
                                  st.host_workspace.data(), st.host_workspace.size(), info));
  flag_nonfinite_kernel<float><<<1, 256, 0, stream>>>(lambda, int(m), info + kNonFiniteSlot, 1);
  check_launch();

  int r = plan.rank;
  if (r == 0) {  // energy rank: the spectrum decides r, so it has to come back to the host
    std::vector<float> host_lambda(static_cast<std::size_t>(m));
    double total = 0;
    int host_info = 0;
    XKV_CUDA_CHECK(cudaMemcpyAsync(host_lambda.data(), lambda, m * sizeof(float), cudaMemcpyDeviceToHost, stream));
    XKV_CUDA_CHECK(cudaMemcpyAsync(&total, energies, sizeof(double), cudaMemcpyDeviceToHost, stream));
    int host_nonfinite = 0;
    XKV_CUDA_CHECK(cudaMemcpyAsync(&host_info, info, sizeof(int), cudaMemcpyDeviceToHost, stream));
    XKV_CUDA_CHECK(cudaMemcpyAsync(&host_nonfinite, info + kNonFiniteSlot, sizeof(int), cudaMemcpyDeviceToHost, stream));
    XKV_CUDA_CHECK(cudaStreamSynchronize(stream));
    XKV_CHECK(host_nonfinite == 0, InvalidArgument, "SvdArguments.layers: the input holds NaN or Inf");
    XKV_CHECK(host_info == 0, Numerical, "cusolverDnXsyevd failed on the " << m << "x" << m << " Gram matrix: info=" << host_info);
    std::vector<float> sv(static_cast<std::size_t>(m));
    for (std::int64_t i = 0; i < m; ++i) sv[std::size_t(i)] = std::sqrt(std::max(host_lambda[std::size_t(m - 1 - i)], 0.0f));
    r = std::max(1, rank_for_energy(sv, total, args.energy_fraction));
    XKV_REQUIRE(r <= plan.rank_capacity, "SvdArguments.rank_capacity=" << plan.rank_capacity << " is too small: energy_fraction="
                                                                        << args.energy_fraction << " needs rank " << r);
  }
  select_top_kernel<float><<<1, 256, 0, stream>>>(lambda, int(m), r, args.singular_values, nullptr, energies + 1);
  check_launch();
  take_top_columns_kernel<float, T><<<grid_for(m * r), kThreads, 0, stream>>>(s, m, int(m), r, nullptr, vrt);
  check_launch();
  if (plan.cols_side) {  // V_r = vrt; B = V_r^T; A = X V_r
    write_b_blocks<T, T>(vrt, d, r, plan.width, args.b, stream);
    check_launch();
    const std::int64_t chunks = (n + plan.chunk_rows - 1) / plan.chunk_rows;
    for (std::int64_t c = 0; c < chunks; ++c) {
      const std::int64_t t0 = c * plan.chunk_rows;
      const std::int64_t rows = std::min(plan.chunk_rows, n - t0);
      gather(plan, tab, t0, rows, 0, d, stage, stream);
      gemm(st.blas, CUBLAS_OP_T, CUBLAS_OP_N, r, rows, d, vrt, dt, d, stage, dt, d, 0.0f, args.a + t0 * r, dt, r,
           compute);
    }
  } else {  // U_r = vrt; A = U_r; B_l = U_r^T X_l
    transpose_to_rows_kernel<T, T><<<grid_for(n * r), kThreads, 0, stream>>>(vrt, n, r, args.a);
    check_launch();
    for (int l = 0; l < plan.layers; ++l) {
      for (std::int64_t j0 = 0; j0 < plan.width; j0 += plan.panel_cols) {
        const std::int64_t w = std::min<std::int64_t>(plan.panel_cols, plan.width - j0);
        gather(plan, tab, 0, n, std::int64_t(l) * plan.width + j0, w, stage, stream);
        T* out = args.b + std::int64_t(l) * r * plan.width + j0;
        gemm(st.blas, CUBLAS_OP_N, CUBLAS_OP_N, w, r, n, stage, dt, w, vrt, dt, n, 0.0f, out, dt, plan.width, compute);
      }
    }
  }
  if (args.energies)
    XKV_CUDA_CHECK(cudaMemcpyAsync(args.energies, energies, 2 * sizeof(double), cudaMemcpyDeviceToDevice, stream));
  return r;
}

template <class T>
void transpose_b_blocks(const T* b, int layers, int r, int width, T* bt, std::int64_t ld, cudaStream_t stream) {
  const dim3 grid((width + 31) / 32, (r + 31) / 32, layers), block(32, 8);
  transpose_b_blocks_kernel<T><<<grid, block, 0, stream>>>(b, r, width, bt, ld);
  check_launch();
}

#define XKV_INSTANTIATE_RUNS(T)                                                                                  \
  template void transpose_b_blocks<T>(const T*, int, int, int, T*, std::int64_t, cudaStream_t);              \
  template void run_randomized<T>(CompressorState&, const Plan&, const SvdArguments<T>&, const Workspace&,     \
                                  cudaStream_t);                                                               \
  template void run_subspace<T>(CompressorState&, const Plan&, const SvdArguments<T>&, const Workspace&,       \
                                cudaStream_t);                                                                 \
  template int run_exact<T>(CompressorState&, const Plan&, const SvdArguments<T>&, const Workspace&, cudaStream_t);
XKV_INSTANTIATE_RUNS(__nv_bfloat16)
XKV_INSTANTIATE_RUNS(__half)
XKV_INSTANTIATE_RUNS(float)
#undef XKV_INSTANTIATE_RUNS

}  // namespace detail
}  // namespace xkv::cuda
