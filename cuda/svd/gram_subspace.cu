// Subspace method from the Gram matrix (SubspaceProduct::Gram): rounds of V <- CholeskyQR(Z) as
// run_subspace, with X^T X formed once instead of applied as two sketches over X per round.
//
//   G = X^T X (D x D, fp32 accumulate)   upper block-rows only: block-row i is X_i^T X[:, i:],
//                                        (b + 1) / 2b of a full GEMM for b blocks; then mirrored
//   each round:      Z = G V             fp16 GEMM from a scaled fp16 G (GramPrecision::Fp16, the
//                                        default), two from a split one (H V + L V, Fp16Split) or
//                                        TF32, 2 D^2 r FLOPs each (X^T X V for ~1/n of the cost);
//                                        GramFilter::Chebyshev, after a plain first round (and
//                                        before a plain last one if asked): Z = p(G) V, p of
//                                        degree 2 (two such GEMMs, chebyshev_kernels.cuh)
//                    V = CholeskyQR(Z)   fp64 tensor-core products from the fp32 Z
//   B = V^T, A = X V                     the second and last read of X
//
// For n >> D this moves most of the work into one GEMM of n D^2 (b + 1) / b FLOPs against
// 4 (q + 1) n D r for the sketches: at D = 4096 (b = 8), r = 512, q = 4 (the default) that is
// 4608 n D against 10240 n D.
// On slowly decaying spectra the accuracy matches the sketches' (G is exact products of the 16-bit
// X with fp32 accumulation, and G V from 11-bit operands keeps more bits than the bf16 Y = X V the
// sketches round to). But G squares the spectrum's range: where the discarded eigenvalues fall
// below ~1e-5 of the largest, the 11-bit products of G no longer resolve them and the sketches,
// which never form G, do better (SubspaceProduct::Gram in compressor.hpp, docs/PERFORMANCE.md).
#include <algorithm>
#include <type_traits>

#include "chebyshev_kernels.cuh"
#include "gram_half_kernels.cuh"
#include "svd_steps.cuh"

namespace xkv::cuda::detail {

namespace {

/// Operand pointers of the upper tiles (i <= j) of G = X_c^T X_c for one batched GEMM: tile t of
/// side (side + 1) / 2 in row-major upper order, tile i of the column-major X_c^T at x + i * tile.
template <class T>
__global__ void gram_tile_pointers_kernel(const T* x, int tile, int side, float* g, std::int64_t d,
                                          const void** a, const void** b, void** c) {
  const int index = blockIdx.x * blockDim.x + threadIdx.x;
  if (index >= side * (side + 1) / 2) return;
  int i = 0, t = index;
  while (t >= side - i) {  // row i of the upper triangle holds side - i tiles
    t -= side - i;
    ++i;
  }
  const int j = i + t;
  a[index] = x + std::int64_t(i) * tile;
  b[index] = x + std::int64_t(j) * tile;
  c[index] = g + std::int64_t(i) * tile + std::int64_t(j) * tile * d;
}

/// G (D x D, column-major, fp32) = X^T X, upper part only (the strict lower triangle is filled by
/// mirroring afterwards): with plan.gram_tile, the side (side + 1) / 2 upper tiles of that size as
/// ONE batched GEMM, else plan.gram_blocks upper block-rows, one GEMM each. With energy_partials,
/// the same read of X sums ||X||^2 exactly (kSumBlocks partial sums per chunk; the trace of G would
/// carry TF32 rounding for fp32 X). `tile_pointers`: 3 x tiles pointers of workspace.
template <class T>
void gram_of_x(CompressorState& st, const Plan& plan, const LayerTable<T>& tab, T* stage, float* g,
               double* energy_partials, void** tile_pointers, cudaStream_t stream) {
  const cudaDataType dt = data_type<T>();
  const std::int64_t n = plan.n, d = plan.d;
  // Block-rows start at multiples of 64 columns, so every operand stays 16-byte aligned.
  const std::int64_t block = ((d + plan.gram_blocks - 1) / plan.gram_blocks + 63) / 64 * 64;
  const std::int64_t chunks = (n + plan.chunk_rows - 1) / plan.chunk_rows;
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::int64_t t0 = c * plan.chunk_rows;
    const std::int64_t rows = std::min(plan.chunk_rows, n - t0);
    std::int64_t ld = 0;
    const T* x = chunk_of_x(plan, tab, t0, rows, stage, energy_partials ? energy_partials + c * kSumBlocks : nullptr,
                            ld, stream);
    const float alpha = 1.0f, beta = c == 0 ? 0.0f : 1.0f;
    // Column-major view: X_c^T is D x rows with leading dimension ld. Tile (i, j) of G is
    // (X_c^T)[i-th tile rows, :] (X_c^T)[j-th tile rows, :]^T; block-row i of G is
    // G[a0 : a0 + h, a0 : D] = (X_c^T)[a0 : a0 + h, :] (X_c^T)[a0 : D, :]^T.
    if (plan.gram_tile > 0) {
      const int side = int(d / plan.gram_tile), tiles = side * (side + 1) / 2;
      const void** a_ptrs = const_cast<const void**>(tile_pointers);
      const void** b_ptrs = a_ptrs + tiles;
      void** c_ptrs = tile_pointers + 2 * tiles;
      // Rewritten per chunk: stream order keeps the previous chunk's GEMM reading the old ones.
      gram_tile_pointers_kernel<T><<<(tiles + 127) / 128, 128, 0, stream>>>(x, plan.gram_tile, side, g, d, a_ptrs,
                                                                            b_ptrs, c_ptrs);
      check_launch();
      XKV_CUDA_CHECK(cublasGemmBatchedEx(st.blas, CUBLAS_OP_N, CUBLAS_OP_T, plan.gram_tile, plan.gram_tile, int(rows),
                                         &alpha, a_ptrs, dt, int(ld), b_ptrs, dt, int(ld), &beta, c_ptrs, CUDA_R_32F,
                                         int(d), tiles, fast_compute<T>(), CUBLAS_GEMM_DEFAULT));
      continue;
    }
    for (std::int64_t a0 = 0; a0 < d; a0 += block) {
      const std::int64_t h = std::min(block, d - a0);
      gemm(st.blas, CUBLAS_OP_N, CUBLAS_OP_T, h, d - a0, rows, x + a0, dt, ld, x + a0, dt, ld, beta,
           g + a0 + a0 * d, CUDA_R_32F, d, fast_compute<T>());
    }
  }
  // The fp16 rounds convert both triangles from the upper one (to_half_symmetric_kernel); the
  // others need G whole now.
  if (!plan.gram_half || plan.gram_split) {
    const dim3 tiles_grid(unsigned((d + 31) / 32), unsigned((d + 31) / 32));
    mirror_upper_kernel<<<tiles_grid, dim3(32, 8), 0, stream>>>(g, d);
    check_launch();
  }
}

/// The G V products' operands (GramPrecision): G and the basis in fp32 on the TF32 tensor cores,
/// or both in fp16 (G scaled, gram_half_kernels.cuh) on the fp16 ones; fp32 accumulation either way.
template <class Basis>
struct RoundOperands {
  static_assert(std::is_same_v<Basis, float> || std::is_same_v<Basis, __half>);
  static constexpr cudaDataType type = std::is_same_v<Basis, float> ? CUDA_R_32F : CUDA_R_16F;
  static constexpr cublasComputeType_t compute =
      std::is_same_v<Basis, float> ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  const Basis* gram = nullptr;     ///< D x D, column-major, leading dimension ld
  const Basis* gram_lo = nullptr;  ///< GramPrecision::Fp16Split: the remainder L (G ~ gram + gram_lo), same ld
  std::int64_t ld = 0;
  Basis* basis = nullptr;          ///< D x r: V between rounds, the filter's Y within one
};

/// z = G b (beta 0) or z += G b (beta 1), b = op.basis: one GEMM, or two with the split G.
template <class Basis>
void multiply_gram(CompressorState& st, const RoundOperands<Basis>& op, std::int64_t d, int r, float beta, float* z) {
  using Op = RoundOperands<Basis>;
  gemm(st.blas, CUBLAS_OP_N, CUBLAS_OP_N, d, r, d, op.gram, Op::type, op.ld, op.basis, Op::type, d, beta, z, CUDA_R_32F,
       d, Op::compute);
  if (op.gram_lo)
    gemm(st.blas, CUBLAS_OP_N, CUBLAS_OP_N, d, r, d, op.gram_lo, Op::type, op.ld, op.basis, Op::type, d, 1.0f, z,
         CUDA_R_32F, d, Op::compute);
}

/// One round's product into z: G V (the first round, a plain last one, and GramFilter::Power), else
/// the degree-2 Chebyshev filter (G^2 - b G + b^2/8) V / trace G (chebyshev_kernels.cuh), which
/// leaves Y in the basis buffer. With r = D nothing is discarded and every round is plain.
template <class Basis>
void round_product(CompressorState& st, const Plan& plan, int round, const RoundOperands<Basis>& op, float* z,
                   double* filter_partials, cudaStream_t stream) {
  const std::int64_t d = plan.d;
  const int r = plan.rank;
  multiply_gram(st, op, d, r, 0.0f, z);
  const bool filtered = plan.chebyshev && round > 0 && (round + 1 < plan.gram_rounds || plan.filtered_last) && d > r;
  if (!filtered) return;
  filter_traces_kernel<Basis><<<kFilterBlocks, 256, 0, stream>>>(op.basis, z, d * r, op.gram, op.gram_lo, d, op.ld,
                                                                 filter_partials);
  check_launch();
  filter_operands_kernel<Basis><<<grid_for(d * r), kThreads, 0, stream>>>(z, op.basis, d * r, filter_partials, d, r);
  check_launch();
  multiply_gram(st, op, d, r, 1.0f, z);
}

/// GramPrecision::Fp16: G (fp32, upper triangle) -> scale * G in fp16, both triangles, in the
/// first half of its own buffer (gram_half_kernels.cuh); `scratch` (scratch_floats fp32, here Z,
/// which no round has written yet) carries the first block of columns.
void gram_to_half(float* gram, std::int64_t d, float* scale, float* scratch, std::int64_t scratch_floats,
                  cudaStream_t stream) {
  half_scale_kernel<<<1, kHalfScaleThreads, 0, stream>>>(gram, d, scale);
  check_launch();
  auto* half_gram = reinterpret_cast<__half*>(gram);
  const std::int64_t first = std::clamp<std::int64_t>(2 * scratch_floats / d, 1, d);
  const auto convert_columns = [&](std::int64_t c0, std::int64_t c1, __half* out) {
    const std::int64_t column_tiles = (c1 - c0 + kHalfTile - 1) / kHalfTile;
    XKV_REQUIRE(column_tiles <= 65535, "gram_to_half: " << c1 - c0 << " columns in one launch (d=" << d << ")");
    const dim3 grid(unsigned((d + kHalfTile - 1) / kHalfTile), unsigned(column_tiles));
    to_half_symmetric_kernel<<<grid, dim3(32, 8), 0, stream>>>(gram, d, c0, c1, scale, out);
    check_launch();
  };
  convert_columns(0, first, reinterpret_cast<__half*>(scratch));
  XKV_CUDA_CHECK(cudaMemcpyAsync(half_gram, scratch, std::size_t(first * d) * sizeof(__half), cudaMemcpyDeviceToDevice,
                                 stream));
  for (std::int64_t c0 = first; c0 < d;) {
    const std::int64_t c1 = std::min(2 * c0, d);
    convert_columns(c0, c1, half_gram + c0 * d);
    c0 = c1;
  }
}

/// GramPrecision::Fp16Split: G (fp32, mirrored) -> the pair (H, L) of scale * G, column by column
/// in its own bytes (gram_half_kernels.cuh).
void gram_to_half_pairs(float* gram, std::int64_t d, float* scale, cudaStream_t stream) {
  half_scale_kernel<<<1, kHalfScaleThreads, 0, stream>>>(gram, d, scale);
  check_launch();
  const std::size_t shared = std::size_t(d) * sizeof(float);
  if (shared > 48 * 1024)
    XKV_CUDA_CHECK(cudaFuncSetAttribute(to_half_pairs_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)));
  to_half_pairs_kernel<<<unsigned(d), 512, shared, stream>>>(gram, d, scale);
  check_launch();
}

/// The operands of a job's rounds in plan.gram_half's type (G converted first if fp16).
template <class Basis>
RoundOperands<Basis> round_operands(const Plan& plan, const Workspace& ws, cudaStream_t stream) {
  auto* gram = ws.get<float>(plan.off_gram);
  auto* basis = ws.get<float>(plan.off_v32);
  if constexpr (std::is_same_v<Basis, __half>) {
    auto* half_gram = reinterpret_cast<const __half*>(gram);
    auto* scale = ws.get<float>(plan.off_gram_scale);
    if (plan.gram_split) {
      gram_to_half_pairs(gram, plan.d, scale, stream);
      return {half_gram, half_gram + plan.d, 2 * plan.d, reinterpret_cast<__half*>(basis)};
    }
    gram_to_half(gram, plan.d, scale, ws.get<float>(plan.off_z), plan.d * plan.rank, stream);
    return {half_gram, nullptr, plan.d, reinterpret_cast<__half*>(basis)};
  } else {
    return {gram, nullptr, plan.d, basis};
  }
}

template <class T, class Basis>
void gram_rounds(CompressorState& st, const Plan& plan, const SvdArguments<T>& args, const Workspace& ws,
                 cudaStream_t stream) {
  const auto tab = make_table(args.layers);
  const std::int64_t d = plan.d;
  const int r = plan.rank;
  auto* stage = ws.get<T>(plan.off_stage);
  auto* z = ws.get<float>(plan.off_z);
  auto* v = ws.get<T>(plan.off_v);
  auto* g = ws.get<double>(plan.off_g);
  auto* partials = ws.get<double>(plan.off_partials);
  auto* energies = ws.get<double>(plan.off_energies);
  auto* info = ws.get<int>(plan.off_info);
  const CholeskyWorkspace chol = carve_cholesky(st, ws.get<double>(plan.off_chol), r);

  gram_of_x(st, plan, tab, stage, ws.get<float>(plan.off_gram), args.energies ? partials : nullptr,
            ws.get<void*>(plan.off_gram_pointers), stream);
  const RoundOperands<Basis> op = round_operands<Basis>(plan, ws, stream);
  // The same Gaussian start as the sketches (drawn in T, then converted to the rounds' type), so
  // both products begin from the same subspace for a given seed.
  gaussian_kernel<T, Basis><<<grid_for(d * r), kThreads, 0, stream>>>(op.basis, d * r, st.seed);
  check_launch();
  auto* filter_partials = ws.get<double>(plan.off_filter);
  int slot = 0;
  for (int round = 0; round < plan.gram_rounds; ++round) {
    round_product(st, plan, round, op, z, filter_partials, stream);
    int* nonfinite = round == 0 ? info + kNonFiniteSlot : nullptr;  // NaN or Inf in X reaches G, then Z
    if (round + 1 < plan.gram_rounds)
      cholesky_qr_fp32(z, op.basis, d, r, g, chol, GramScratch(chol, g), info + slot++, stream, nonfinite);
    else  // the last basis goes straight to T: it is B^T and the right factor of A = X V
      cholesky_qr_fp32(z, v, d, r, g, chol, GramScratch(chol, g), info + slot++, stream, nonfinite);
  }
  finish_subspace(st, plan, tab, args, v, static_cast<T*>(nullptr), stage, partials, energies, stream);
}

}  // namespace

template <class T>
void run_gram_subspace(CompressorState& st, const Plan& plan, const SvdArguments<T>& args, const Workspace& ws,
                       cudaStream_t stream) {
  if (plan.gram_half) gram_rounds<T, __half>(st, plan, args, ws, stream);
  else gram_rounds<T, float>(st, plan, args, ws, stream);
}

namespace {

template <class T, class Basis>
void gram_lockstep(std::span<const GramJob<T>> jobs, cudaStream_t factor_stream) {
  struct Buffers {
    LayerTable<T> tab;
    T* stage;
    float* z;
    RoundOperands<Basis> op;
    double *g, *partials, *energies, *filter_partials;
    T* v;
    int* info;
    CholeskyWorkspace chol;
  };
  const int r = jobs[0].plan->rank;
  const int rounds = jobs[0].plan->gram_rounds;
  std::vector<Buffers> bufs;
  for (const GramJob<T>& job : jobs) {
    const Plan& plan = *job.plan;
    const Workspace& ws = job.ws;
    bufs.push_back({make_table(job.args->layers), ws.get<T>(plan.off_stage), ws.get<float>(plan.off_z), {},
                    ws.get<double>(plan.off_g), ws.get<double>(plan.off_partials),
                    ws.get<double>(plan.off_energies), ws.get<double>(plan.off_filter), ws.get<T>(plan.off_v),
                    ws.get<int>(plan.off_info),
                    carve_cholesky(*job.st, ws.get<double>(plan.off_chol), r)});
  }
  // One event per job (its Gram of Z is ready) and one for the batch's factors; re-recording an
  // event is safe once the waits on its previous record are enqueued.
  std::vector<cudaEvent_t> ready(jobs.size(), nullptr), drawn(jobs.size(), nullptr);
  cudaEvent_t factored = nullptr;
  auto release = [&] {
    for (const auto* events : {&ready, &drawn})
      for (cudaEvent_t e : *events)
        if (e) (void)cudaEventDestroy(e);
    if (factored) (void)cudaEventDestroy(factored);
  };
  try {
    for (cudaEvent_t& e : ready) XKV_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    XKV_CUDA_CHECK(cudaEventCreateWithFlags(&factored, cudaEventDisableTiming));
    // start[j]: the Gaussian basis job j's first round multiplies. Jobs with one seed and side (the
    // Compressors of a ConcurrentCompressor share their options) draw the same one, so only the
    // first of them draws it and the others read its buffer: that job's first CholeskyQR overwrites
    // it only after the batch's factorisation, which waits for every job's first product.
    std::vector<Basis*> start(jobs.size(), nullptr);
    for (std::size_t j = 0; j < jobs.size(); ++j) {  // the bulk: every G, and the starts of run_gram_subspace
      const GramJob<T>& job = jobs[j];
      Buffers& b = bufs[j];
      const std::int64_t d = job.plan->d;
      gram_of_x(*job.st, *job.plan, b.tab, b.stage, job.ws.template get<float>(job.plan->off_gram),
                job.args->energies ? b.partials : nullptr, job.ws.template get<void*>(job.plan->off_gram_pointers),
                job.stream);
      b.op = round_operands<Basis>(*job.plan, job.ws, job.stream);
      std::size_t first = 0;
      while (first < j && !(jobs[first].st->seed == job.st->seed && jobs[first].plan->d == d)) ++first;
      if (first == j) {
        gaussian_kernel<T, Basis><<<grid_for(d * r), kThreads, 0, job.stream>>>(b.op.basis, d * r, job.st->seed);
        check_launch();
        XKV_CUDA_CHECK(cudaEventCreateWithFlags(&drawn[j], cudaEventDisableTiming));
        XKV_CUDA_CHECK(cudaEventRecord(drawn[j], job.stream));
        start[j] = b.op.basis;
      } else {
        XKV_CUDA_CHECK(cudaStreamWaitEvent(job.stream, drawn[first]));
        start[j] = start[first];
      }
    }
    std::vector<CholeskyTask> tasks(jobs.size());
    for (int round = 0; round < rounds; ++round) {
      for (std::size_t j = 0; j < jobs.size(); ++j) {
        const GramJob<T>& job = jobs[j];
        Buffers& b = bufs[j];
        const std::int64_t d = job.plan->d;
        RoundOperands<Basis> op = b.op;
        if (round == 0) op.basis = start[j];  // read only: the first round is plain
        round_product(*job.st, *job.plan, round, op, b.z, b.filter_partials, job.stream);
        cholesky_qr_gram(b.z, d, r, b.g, GramScratch(b.chol, b.g), job.stream, round == 0 ? b.info + kNonFiniteSlot : nullptr);
        XKV_CUDA_CHECK(cudaEventRecord(ready[j], job.stream));
        XKV_CUDA_CHECK(cudaStreamWaitEvent(factor_stream, ready[j]));
        tasks[j] = {b.g, b.chol, b.info + round};
      }
      cholesky_inverse_batched(tasks, r, factor_stream);
      XKV_CUDA_CHECK(cudaEventRecord(factored, factor_stream));
      for (std::size_t j = 0; j < jobs.size(); ++j) {
        const GramJob<T>& job = jobs[j];
        Buffers& b = bufs[j];
        const std::int64_t d = job.plan->d;
        XKV_CUDA_CHECK(cudaStreamWaitEvent(job.stream, factored));
        if (round + 1 < rounds)
          cholesky_qr_apply(b.z, b.op.basis, d, r, b.chol, job.stream);
        else  // the last basis goes straight to T: it is B^T and the right factor of A = X V
          cholesky_qr_apply(b.z, b.v, d, r, b.chol, job.stream);
      }
    }
    for (std::size_t j = 0; j < jobs.size(); ++j) {
      Buffers& b = bufs[j];
      finish_subspace(*jobs[j].st, *jobs[j].plan, b.tab, *jobs[j].args, b.v, static_cast<T*>(nullptr), b.stage,
                      b.partials, b.energies, jobs[j].stream);
    }
  } catch (...) {
    release();
    throw;
  }
  release();
}

}  // namespace

template <class T>
void run_gram_subspace_lockstep(std::span<const GramJob<T>> jobs, cudaStream_t factor_stream) {
  XKV_REQUIRE(!jobs.empty() && jobs.size() <= std::size_t(kMaxCholeskyBatch),
              "run_gram_subspace_lockstep: " << jobs.size() << " jobs, at most " << kMaxCholeskyBatch);
  const Plan& first = *jobs[0].plan;
  for (const GramJob<T>& job : jobs) {
    const Plan& plan = *job.plan;
    XKV_REQUIRE(plan.gram && plan.rank == first.rank && plan.gram_rounds == first.gram_rounds &&
                    plan.chebyshev == first.chebyshev && plan.filtered_last == first.filtered_last &&
                    plan.gram_half == first.gram_half &&
                    plan.gram_split == first.gram_split,
                "run_gram_subspace_lockstep: jobs must all take the Gram product with one rank, filter, round count "
                "and precision");
  }
  if (first.gram_half) gram_lockstep<T, __half>(jobs, factor_stream);
  else gram_lockstep<T, float>(jobs, factor_stream);
}

#define XKV_INSTANTIATE_GRAM(T)                                                                              \
  template void run_gram_subspace<T>(CompressorState&, const Plan&, const SvdArguments<T>&, const Workspace&, \
                                     cudaStream_t);                                                         \
  template void run_gram_subspace_lockstep<T>(std::span<const GramJob<T>>, cudaStream_t);
XKV_INSTANTIATE_GRAM(__nv_bfloat16)
XKV_INSTANTIATE_GRAM(__half)
XKV_INSTANTIATE_GRAM(float)
#undef XKV_INSTANTIATE_GRAM

}  // namespace xkv::cuda::detail
