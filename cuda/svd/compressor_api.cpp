// Host side of xkv::cuda::Compressor: argument checks, planning, workspace sizing, dispatch.
#include <algorithm>
#include <climits>
#include <cstring>

#include "svd_plan.hpp"
#include "xkv/cuda/device.hpp"

namespace xkv::cuda {

void GpuCompressorOptions::validate() const {
  XKV_REQUIRE(oversampling >= 0, "GpuCompressorOptions.oversampling must be >= 0, got " << oversampling);
  // Each power iteration records one Cholesky status word; kInfoSlots bounds them.
  XKV_REQUIRE(power_iterations >= 0 && power_iterations <= detail::kMaxPowerIterations,
              "GpuCompressorOptions.power_iterations must be in [0, " << detail::kMaxPowerIterations << "], got "
                                                                      << power_iterations);
  XKV_REQUIRE(subspace_product == SubspaceProduct::Auto || subspace_product == SubspaceProduct::Sketch ||
                  subspace_product == SubspaceProduct::Gram,
              "GpuCompressorOptions.subspace_product is not a SubspaceProduct value: " << int(subspace_product));
  XKV_REQUIRE(gram_filter == GramFilter::Power || gram_filter == GramFilter::Chebyshev,
              "GpuCompressorOptions.gram_filter is not a GramFilter value: " << int(gram_filter));
  XKV_REQUIRE(gram_precision == GramPrecision::Fp16 || gram_precision == GramPrecision::Tf32 ||
                  gram_precision == GramPrecision::Fp16Split,
              "GpuCompressorOptions.gram_precision is not a GramPrecision value: " << int(gram_precision));
  // Two plain rounds and the filtered ones: one Cholesky status word each.
  XKV_REQUIRE(chebyshev_rounds >= 0 && chebyshev_rounds < detail::kMaxPowerIterations,
              "GpuCompressorOptions.chebyshev_rounds must be in [0, " << detail::kMaxPowerIterations - 1 << "], got "
                                                                      << chebyshev_rounds);
  XKV_REQUIRE(cholesky_ctas >= 0, "GpuCompressorOptions.cholesky_ctas must be >= 0, got " << cholesky_ctas);
  XKV_REQUIRE(staging_fraction > 0 && staging_fraction <= 1,
              "GpuCompressorOptions.staging_fraction must be in (0, 1], got " << staging_fraction);
}

namespace detail {

CompressorState::CompressorState() {
  try {
    XKV_CUDA_CHECK(cublasCreate(&blas));
    XKV_CUDA_CHECK(cusolverDnCreate(&solver));
    XKV_CUDA_CHECK(cusolverDnSetDeterministicMode(solver, CUSOLVER_DETERMINISTIC_RESULTS));
    XKV_CUDA_CHECK(cusolverDnCreateParams(&params));
    XKV_CUDA_CHECK(cusolverDnCreateSyevjInfo(&syevj));
    XKV_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&pinned_info), kInfoSlots * sizeof(int)));
    std::memset(pinned_info, 0, kInfoSlots * sizeof(int));
  } catch (...) {
    release();
    throw;
  }
}

CompressorState::~CompressorState() { release(); }

void CompressorState::release() noexcept {
  if (pinned_info) (void)cudaFreeHost(pinned_info);
  if (syevj) (void)cusolverDnDestroySyevjInfo(syevj);
  if (params) (void)cusolverDnDestroyParams(params);
  if (solver) (void)cusolverDnDestroy(solver);
  if (blas) (void)cublasDestroy(blas);
  pinned_info = nullptr;
  syevj = nullptr;
  params = nullptr;
  solver = nullptr;
  blas = nullptr;
}

namespace {

class Arena {
 public:
  std::size_t take(std::size_t bytes) {
    offset_ = (offset_ + 255) / 256 * 256;
    const std::size_t at = offset_;
    offset_ += bytes;
    return at;
  }
  [[nodiscard]] std::size_t size() const { return (offset_ + 255) / 256 * 256; }

 private:
  std::size_t offset_ = 0;
};

template <class T>
bool aligned_for_vectors(std::span<const KVView<T>> layers) {
  constexpr std::int64_t vec = 16 / sizeof(T);
  for (const auto& v : layers) {
    if (reinterpret_cast<std::uintptr_t>(v.data) % 16 != 0) return false;
    if (v.head_dim % vec != 0 || v.token_stride % vec != 0 || v.head_stride % vec != 0) return false;
  }
  return true;
}

/// True when the layers are column blocks of one row-major matrix whose rows are 16-byte aligned
/// (a KV cache laid out [tokens, layers, heads, d], or views into one [n x D] buffer).
template <class T>
bool tiles_one_matrix(std::span<const KVView<T>> layers) {
  const KVView<T>& first = layers[0];
  const std::int64_t width = first.width();
  if (first.head_stride != first.head_dim || first.token_stride < std::int64_t(layers.size()) * width) return false;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const KVView<T>& v = layers[l];
    if (v.token_stride != first.token_stride || v.head_stride != first.head_stride) return false;
    if (v.data != first.data + std::int64_t(l) * width) return false;
  }
  return aligned_for_vectors(layers);
}

std::int64_t round_down(std::int64_t v, std::int64_t multiple) { return std::max(multiple, v / multiple * multiple); }

/// Whether the Subspace method runs from the Gram matrix (SubspaceProduct::Auto: fewer FLOPs than
/// the sketches and the whole workspace within half of the input's bytes), and if so its staging
/// chunk size, fitted into that half.
bool choose_gram(Plan& p, const GpuCompressorOptions& opt, std::size_t st_bytes) {
  if (opt.subspace_product == SubspaceProduct::Sketch) return false;
  const double n = double(p.n), d = double(p.d), r = double(p.rank), elem = double(st_bytes);
  p.gram_blocks = int(std::clamp<std::int64_t>(p.d / 512, 1, 8));
  const double gram_flops = n * d * d * (p.gram_blocks + 1) / p.gram_blocks;  // upper block-rows of X^T X
  const double sketch_flops = 4.0 * (p.power_iterations + 1) * n * d * r;
  const double input = n * d * elem;
  // G, Z and V in fp32, V in T, the r x r Gram of CholeskyQR and the Cholesky workspace.
  const double fixed = 4 * d * d + 8 * d * r + elem * d * r + 8 * r * r + 8.0 * double(CholeskyWorkspace::doubles(p.rank));
  const std::int64_t min_stage_rows = p.direct ? 0 : std::min<std::int64_t>(p.n, 256);
  const double min_need = double(min_stage_rows) * d * elem;
  double avail = 0.49 * input - fixed;  // 1%: partial sums, status words, alignment
  const bool forced = opt.subspace_product == SubspaceProduct::Gram;
  if (!forced && (gram_flops >= sketch_flops || avail < min_need)) return false;
  p.gram = true;
  avail = std::max(avail, min_need);  // forced: the half-of-the-input target may not hold
  if (p.direct) {
    p.chunk_rows = p.n;  // X is read in place: one GEMM per block-row
  } else {  // staging takes what is left, and no more than the options allow
    const double stage_bytes = std::min(opt.staging_fraction * input, avail);
    p.chunk_rows = std::clamp<std::int64_t>(std::int64_t(stage_bytes / (d * elem)), min_stage_rows, p.n);
    if (p.chunk_rows < p.n) p.chunk_rows = round_down(p.chunk_rows, 64);
  }
  return true;
}

void layout_gram(Plan& p, std::size_t st_bytes, Arena& arena) {
  const std::size_t d = std::size_t(p.d), r = std::size_t(p.rank);
  p.k = p.rank;
  p.off_chol = arena.take(CholeskyWorkspace::doubles(p.rank) * sizeof(double));
  p.off_gram = arena.take(d * d * sizeof(float));
  p.off_z = arena.take(d * r * sizeof(float));
  p.off_v32 = arena.take(d * r * sizeof(float));
  p.off_v = arena.take(d * r * st_bytes);
  p.off_g = arena.take(r * r * sizeof(double));
  p.off_stage = arena.take(p.direct ? 0 : std::size_t(p.chunk_rows) * d * st_bytes);
  const std::int64_t chunks = (p.n + p.chunk_rows - 1) / p.chunk_rows;
  p.off_partials = arena.take(std::size_t(chunks) * kSumBlocks * sizeof(double));
  p.off_filter = arena.take(p.chebyshev ? 2 * kFilterBlocks * sizeof(double) : 0);
  p.off_gram_scale = arena.take(sizeof(float));
  // Tiles of 256: one batched GEMM over the upper tiles of G (D = 4096: 136 tiles, 136/256 of
  // X^T X). Tiles of 512 (36/64, as 8 block-rows) ran the whole model 1.1-1.4 ms faster than the
  // block-rows' split-K GEMMs, tiles of 256 another 0.3-0.5 ms (docs/PERFORMANCE.md).
  p.gram_tile = p.d % 256 == 0 && p.d >= 1024 ? 256 : 0;
  const std::size_t tiles = p.gram_tile > 0 ? std::size_t(p.d / p.gram_tile) * std::size_t(p.d / p.gram_tile + 1) / 2 : 0;
  p.off_gram_pointers = arena.take(3 * tiles * sizeof(void*));
}

template <class T>
Plan make_plan(CompressorState& st, const GpuCompressorOptions& opt, const SvdArguments<T>& args, GpuSvdMethod method) {
  Plan p;
  const auto& first = args.layers[0];
  p.n = first.tokens;
  p.layers = int(args.layers.size());
  p.width = first.width();
  p.d = std::int64_t(p.layers) * p.width;
  p.m = std::min(p.n, p.d);
  p.cols_side = p.d <= p.n;
  p.method = method;
  p.rank = args.rank;
  p.rank_capacity = args.rank_capacity > 0 ? args.rank_capacity : args.rank;
  p.power_iterations = opt.power_iterations;
  p.vector_loads = aligned_for_vectors(args.layers);
  p.direct = method != GpuSvdMethod::Exact && tiles_one_matrix(args.layers);
  p.x_ld = first.token_stride;

  const std::size_t st_bytes = sizeof(T);
  const double input_bytes = double(p.n) * double(p.d) * double(st_bytes);
  const double budget = std::max(opt.staging_fraction * input_bytes, double(4 << 20));
  p.chunk_rows = std::clamp<std::int64_t>(std::int64_t(budget / double(p.d * st_bytes)), std::min<std::int64_t>(p.n, 256), p.n);
  if (p.chunk_rows < p.n) p.chunk_rows = round_down(p.chunk_rows, 64);
  p.panel_cols = std::clamp<std::int64_t>(std::int64_t(budget / double(p.n * st_bytes)), std::min(p.width, 8), p.width);
  if (p.panel_cols < p.width) p.panel_cols = round_down(p.panel_cols, 8);

  Arena arena;
  std::size_t dev = 0, host = 0;
  if (method == GpuSvdMethod::Subspace && choose_gram(p, opt, st_bytes)) {
    p.chebyshev = opt.gram_filter == GramFilter::Chebyshev;
    // Ending on a filtered round needs two of them, and not the steep spectra the split G is for
    // (GpuCompressorOptions::plain_last_round).
    p.filtered_last = p.chebyshev && !opt.plain_last_round && opt.chebyshev_rounds >= 2 &&
                      opt.gram_precision != GramPrecision::Fp16Split;
    p.gram_rounds = p.chebyshev ? opt.chebyshev_rounds + (p.filtered_last ? 1 : 2) : opt.power_iterations + 1;
    p.gram_half = opt.gram_precision == GramPrecision::Fp16 || opt.gram_precision == GramPrecision::Fp16Split;
    p.gram_split = opt.gram_precision == GramPrecision::Fp16Split;
    XKV_REQUIRE(!p.gram_split || p.d <= kMaxSplitGramWidth,
                "GpuCompressorOptions.gram_precision: Fp16Split needs D <= " << kMaxSplitGramWidth << ", got D = " << p.d);
    layout_gram(p, st_bytes, arena);
  } else if (method == GpuSvdMethod::Randomized || method == GpuSvdMethod::Subspace) {
    const std::int64_t d = p.d, r = p.rank;
    const bool ritz = method == GpuSvdMethod::Randomized;
    const int k = ritz ? int(std::min<std::int64_t>(std::int64_t(p.rank) + opt.oversampling, p.m)) : p.rank;
    p.k = k;
    // Subspace iteration keeps each round's Y = X V (n x r, in T) in the A output, which has
    // exactly that shape and is written only after the last round: no Y buffer, and X read in
    // place needs no row chunks at all.
    p.y_in_a = !ritz;
    if (p.y_in_a && p.direct) p.chunk_rows = p.n;
    // Y is dead while CholeskyQR runs, so the k x k fp64 Gram of Z can borrow the A output too
    // where it fits (n >= ~4k in 16 bits), at A's first 8-byte boundary: the workspace size
    // depends on the shapes only, not on where A is.
    const double a_bytes = double(p.n) * k * double(st_bytes), b_bytes = double(d) * k * double(st_bytes);
    const double gram_bytes = double(k) * k * sizeof(double);
    const double slot_bytes = double(CholeskyWorkspace::doubles_in_place(k)) * sizeof(double);
    p.g_in_a = p.y_in_a && a_bytes >= gram_bytes + alignof(double);
    // Factoring in place in that Gram leaves the Cholesky one k x k buffer of its own (L^{-1}).
    p.chol_in_place = p.g_in_a && CholeskyWorkspace::can_factor_in_place(k);
    p.gram_slot_in_a = p.g_in_a && a_bytes >= gram_bytes + slot_bytes + alignof(double);
    // V is read by each round's Y = X V and rewritten by its CholeskyQR: between the two, and
    // until the end, the B output (B = V^T has V's size) is free, so V lives there; A = X V is
    // formed before B is written from a copy of V (in Z's place, dead by then).
    p.v_in_b = p.y_in_a;
    p.gram_slot_in_b = p.v_in_b && b_bytes >= slot_bytes + alignof(double);
    const std::size_t chol_bytes =
        (p.chol_in_place ? CholeskyWorkspace::doubles_in_place(k) : CholeskyWorkspace::doubles(k)) * sizeof(double);
    if (p.y_in_a && !p.direct) {
      // Staged layers: the Cholesky's buffers are dead while X is staged (and the stage while it
      // factors), so the two share one region. The token chunk takes what the other buffers leave
      // of half the input (1% kept for partial sums, status words and alignment), or the
      // Cholesky's region where that is more, within the staging budget, and >= 256 rows.
      const double row_bytes = double(d) * double(st_bytes);
      const double others = double(d) * k * sizeof(float) + (p.v_in_b ? 0 : b_bytes) + (p.g_in_a ? 0 : gram_bytes);
      const double fit_rows = std::max(0.49 * input_bytes - others, double(chol_bytes)) / row_bytes;
      const std::int64_t budget_rows = std::max<std::int64_t>(p.chunk_rows, std::int64_t(double(chol_bytes) / row_bytes));
      const std::int64_t min_rows = std::min<std::int64_t>(p.n, 256);
      p.chunk_rows = std::clamp<std::int64_t>(std::min<std::int64_t>(budget_rows, std::int64_t(fit_rows)), min_rows, p.n);
      if (p.chunk_rows < p.n) p.chunk_rows = round_down(p.chunk_rows, 64);
    }
    const std::int64_t chunks = (p.n + p.chunk_rows - 1) / p.chunk_rows;
    std::size_t pd = 0, ph = 0;
    if (ritz) {  // only the Rayleigh-Ritz eigensolver needs cuSOLVER workspace
      switch (opt.ritz_solver) {
        case RitzSolver::Syevj: {
          int lwork = 0;
          XKV_CUDA_CHECK(cusolverDnDsyevj_bufferSize(st.solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, k,
                                                     nullptr, k, nullptr, &lwork, st.syevj));
          dev = std::max(dev, std::size_t(lwork) * sizeof(double));
          break;
        }
        case RitzSolver::SyevjFloat: {
          int lwork = 0;
          XKV_CUDA_CHECK(cusolverDnSsyevj_bufferSize(st.solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, k,
                                                     nullptr, k, nullptr, &lwork, st.syevj));
          dev = std::max(dev, std::size_t(lwork) * sizeof(float));
          break;
        }
        case RitzSolver::Syevd:
        case RitzSolver::SyevdFloat: {
          const cudaDataType t = opt.ritz_solver == RitzSolver::Syevd ? CUDA_R_64F : CUDA_R_32F;
          XKV_CUDA_CHECK(cusolverDnXsyevd_bufferSize(st.solver, st.params, CUSOLVER_EIG_MODE_VECTOR,
                                                     CUBLAS_FILL_MODE_UPPER, k, t, nullptr, k, t, nullptr, t, &pd, &ph));
          dev = std::max(dev, pd);
          host = std::max(host, ph);
          break;
        }
      }
    }
    // Rayleigh-Ritz needs whole fp64 copies of the sketch and the basis; subspace iteration's
    // CholeskyQR reads the fp32 sketch Z directly.
    const std::size_t fp64_copy = ritz ? std::size_t(d) * k * sizeof(double) : 0;
    const std::size_t stage_bytes = p.direct ? 0 : std::size_t(p.chunk_rows * d) * st_bytes;
    if (p.y_in_a) {  // subspace iteration: staging and factoring never overlap
      p.off_chol = arena.take(std::max(chol_bytes, stage_bytes));
      p.off_stage = p.off_chol;
    } else {
      p.off_chol = arena.take(chol_bytes);
      p.off_stage = arena.take(stage_bytes);
    }
    p.off_yc = arena.take(p.y_in_a ? 0 : std::size_t(p.chunk_rows) * k * st_bytes);
    p.off_z = arena.take(std::size_t(d) * k * sizeof(float));
    p.off_zd = arena.take(fp64_copy);
    p.off_vd = arena.take(fp64_copy);
    p.off_v = arena.take(p.v_in_b ? 0 : std::size_t(d) * k * st_bytes);
    p.off_g = arena.take(p.g_in_a ? 0 : std::size_t(k) * k * sizeof(double));
    if (ritz) {
      p.off_vrt = arena.take(std::size_t(d * r) * st_bytes);
      p.off_wsc = arena.take(std::size_t(k * r) * sizeof(double));
      p.off_eigenvalues = arena.take(std::size_t(k) * sizeof(double));
      p.off_scale = arena.take(std::size_t(r) * sizeof(double));
      p.off_g32 = arena.take(std::size_t(k) * k * sizeof(float));
      p.off_mu32 = arena.take(std::size_t(k) * sizeof(float));
    }
    p.off_partials = arena.take(std::size_t(chunks) * kSumBlocks * sizeof(double));
  } else {
    std::size_t pd = 0, ph = 0;
    XKV_CUDA_CHECK(cusolverDnXsyevd_bufferSize(st.solver, st.params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, p.m,
                                               CUDA_R_32F, nullptr, p.m, CUDA_R_32F, nullptr, CUDA_R_32F, &pd, &ph));
    dev = pd;
    host = ph;
    p.off_s = arena.take(std::size_t(p.m * p.m) * sizeof(float));
    const std::int64_t stage = p.cols_side ? p.chunk_rows * p.d : p.n * p.panel_cols;
    p.off_stage = arena.take(std::size_t(stage) * st_bytes);
    p.off_eigenvalues = arena.take(std::size_t(p.m) * sizeof(float));
    p.off_vrt = arena.take(std::size_t(p.m) * std::size_t(std::max(p.rank_capacity, p.rank)) * st_bytes);
  }
  p.off_energies = arena.take(2 * sizeof(double));
  p.off_info = arena.take(kInfoSlots * sizeof(int));
  p.solver_bytes = std::max<std::size_t>(dev, 256);
  p.off_solver = arena.take(p.solver_bytes);
  p.total_bytes = arena.size();
  if (st.host_workspace.size() < host) st.host_workspace.resize(host);
  return p;
}

}  // namespace
}  // namespace detail

template <class T>
Compressor<T>::Compressor(GpuCompressorOptions options) : options_(options) {
  options_.validate();
  state_ = std::make_unique<detail::CompressorState>();
  state_->seed = options_.seed;
  state_->ritz_solver = options_.ritz_solver;
  state_->cholesky_ctas = options_.cholesky_ctas;
}

template <class T>
Compressor<T>::~Compressor() = default;
template <class T>
Compressor<T>::Compressor(Compressor&&) noexcept = default;
template <class T>
Compressor<T>& Compressor<T>::operator=(Compressor&&) noexcept = default;

template <class T>
void Compressor<T>::validate(const SvdArguments<T>& args) const {
  const std::size_t g = args.layers.size();
  XKV_REQUIRE(g >= 1 && g <= std::size_t(detail::kMaxGroupLayers),
              "SvdArguments.layers: a group needs 1.." << detail::kMaxGroupLayers << " layers, got " << g);
  const auto& first = args.layers[0];
  for (std::size_t l = 0; l < g; ++l) {
    const auto& v = args.layers[l];
    const std::string what = "SvdArguments.layers[" + std::to_string(l) + "]";
    v.validate(what.c_str());
    XKV_REQUIRE(v.data != nullptr, what << ": null device pointer");
    XKV_REQUIRE(v.tokens == first.tokens && v.heads == first.heads && v.head_dim == first.head_dim,
                what << " has shape [" << v.tokens << ", " << v.heads << ", " << v.head_dim << "] but layers[0] has ["
                     << first.tokens << ", " << first.heads << ", " << first.head_dim << "]");
  }
  XKV_REQUIRE(first.tokens > 0, "SvdArguments.layers: zero tokens");
  const std::int64_t d = std::int64_t(g) * first.width();
  const std::int64_t m = std::min<std::int64_t>(first.tokens, d);
  XKV_REQUIRE(first.tokens <= INT_MAX && d <= INT_MAX,
              "SvdArguments.layers: n=" << first.tokens << " and D=" << d << " must fit in int for cuBLAS");
  XKV_REQUIRE(args.rank >= 0 && args.rank <= m,
              "SvdArguments.rank must be in [1, min(n, D)] = [1, " << m << "] (or 0 for an energy rank), got " << args.rank);
  if (args.rank == 0) {
    XKV_REQUIRE(args.energy_fraction > 0 && args.energy_fraction <= 1,
                "SvdArguments.energy_fraction must be in (0, 1] when rank == 0, got " << args.energy_fraction);
    XKV_REQUIRE(args.rank_capacity >= 1,
                "SvdArguments.rank_capacity must be >= 1 when rank == 0, got " << args.rank_capacity);
  }
  XKV_REQUIRE(args.rank_capacity == 0 || args.rank_capacity >= args.rank,
              "SvdArguments.rank_capacity=" << args.rank_capacity << " is below rank=" << args.rank);
  XKV_REQUIRE(args.a != nullptr, "SvdArguments.a: null device pointer");
  XKV_REQUIRE(args.b != nullptr, "SvdArguments.b: null device pointer");
  if (args.bt != nullptr) {
    const int capacity = std::max(args.rank, args.rank_capacity);
    XKV_REQUIRE(args.bt_ld == 0 || args.bt_ld >= capacity,
                "SvdArguments.bt_ld=" << args.bt_ld << " is below the rank capacity " << capacity);
  }
  if (method_for(args) == GpuSvdMethod::Exact)
    XKV_REQUIRE(double(m) * double(m) * 4.0 < 0.9 * double(SIZE_MAX),
                "SvdArguments: the exact method's " << m << "x" << m << " Gram matrix does not fit in memory");
  if (method_for(args) == GpuSvdMethod::Subspace && options_.subspace_product == SubspaceProduct::Gram)
    XKV_REQUIRE(double(d) * double(d) * 4.0 < 0.9 * double(SIZE_MAX),
                "SvdArguments: the Gram product's " << d << "x" << d << " matrix does not fit in memory");
}

template <class T>
GpuSvdMethod Compressor<T>::method_for(const SvdArguments<T>& args) const {
  if (args.rank == 0) return GpuSvdMethod::Exact;
  // Subspace iteration has no Ritz values; singular values need the Rayleigh-Ritz problem.
  if (options_.method == GpuSvdMethod::Subspace && args.singular_values != nullptr) return GpuSvdMethod::Randomized;
  return options_.method;
}

template <class T>
bool Compressor<T>::gram_product_for(const SvdArguments<T>& args) const {
  validate(args);
  return detail::make_plan(*state_, options_, args, method_for(args)).gram;
}

template <class T>
std::size_t Compressor<T>::workspace_bytes(const SvdArguments<T>& args) const {
  validate(args);
  return detail::make_plan(*state_, options_, args, method_for(args)).total_bytes;
}

template <class T>
detail::Plan Compressor<T>::begin_run(const SvdArguments<T>& args, void* workspace, std::size_t workspace_size,
                                      cudaStream_t stream) {
  validate(args);
  detail::Plan plan = detail::make_plan(*state_, options_, args, method_for(args));
  XKV_REQUIRE(workspace != nullptr && workspace_size >= plan.total_bytes,
              "Compressor::run: workspace of " << workspace_size << " bytes at " << workspace << ", needs "
                                               << plan.total_bytes << " bytes");
  auto& st = *state_;
  XKV_CUDA_CHECK(cublasSetStream(st.blas, stream));
  XKV_CUDA_CHECK(cusolverDnSetStream(st.solver, stream));
  const detail::Workspace ws{static_cast<char*>(workspace)};
  XKV_CUDA_CHECK(cudaMemsetAsync(ws.get<int>(plan.off_info), 0, detail::kInfoSlots * sizeof(int), stream));
  XKV_CUDA_CHECK(cudaMemsetAsync(ws.get<double>(plan.off_energies), 0, 2 * sizeof(double), stream));
  return plan;
}

template <class T>
void Compressor<T>::end_run(const SvdArguments<T>& args, const detail::Plan& plan, int rank, void* workspace,
                            cudaStream_t stream) {
  if (args.bt != nullptr) {
    const std::int64_t ld = args.bt_ld > 0 ? args.bt_ld : std::max(args.rank, args.rank_capacity);
    detail::transpose_b_blocks<T>(args.b, plan.layers, rank, plan.width, args.bt, ld, stream);
  }
  const detail::Workspace ws{static_cast<char*>(workspace)};
  XKV_CUDA_CHECK(cudaMemcpyAsync(state_->pinned_info, ws.get<int>(plan.off_info), detail::kInfoSlots * sizeof(int),
                                 cudaMemcpyDeviceToHost, stream));
}

template <class T>
SvdRun Compressor<T>::run(const SvdArguments<T>& args, void* workspace, std::size_t workspace_size, cudaStream_t stream) {
  const detail::Plan plan = begin_run(args, workspace, workspace_size, stream);
  auto& st = *state_;
  const detail::Workspace ws{static_cast<char*>(workspace)};
  SvdRun result{args.rank, plan.method, plan.gram};
  if (plan.method == GpuSvdMethod::Randomized) detail::run_randomized<T>(st, plan, args, ws, stream);
  else if (plan.gram) detail::run_gram_subspace<T>(st, plan, args, ws, stream);
  else if (plan.method == GpuSvdMethod::Subspace) detail::run_subspace<T>(st, plan, args, ws, stream);
  else result.rank = detail::run_exact<T>(st, plan, args, ws, stream);
  end_run(args, plan, result.rank, workspace, stream);
  return result;
}

template <class T>
void Compressor<T>::check(cudaStream_t stream) const {
  XKV_CUDA_CHECK(cudaStreamSynchronize(stream));
  XKV_CHECK(state_->pinned_info[detail::kNonFiniteSlot] != detail::kNonFiniteInput, InvalidArgument,
            "SvdArguments.layers: the input of the last run holds NaN or Inf");
  for (int i = 0; i < detail::kInfoSlots; ++i) {
    XKV_CHECK(state_->pinned_info[i] == 0, Numerical,
              "GPU truncated SVD: a cuSOLVER factorisation (step " << i << ") reported info=" << state_->pinned_info[i]);
  }
}

template <class T>
SvdRun Compressor<T>::compress_stream(const SvdArguments<T>& args, cudaStream_t stream) {
  DeviceBuffer<char> workspace(workspace_bytes(args));
  const SvdRun result = run(args, workspace.get(), workspace.bytes(), stream);
  check(stream);
  return result;
}

template <class T>
GroupRanks Compressor<T>::compress_group(std::span<const KVView<T>> keys, std::span<const KVView<T>> values,
                                         const RankPolicy& policy, const DeviceFactorOutputs<T>& key_out,
                                         const DeviceFactorOutputs<T>& value_out, cudaStream_t stream) {
  policy.validate();
  XKV_REQUIRE(!keys.empty(), "compress_group: keys must hold at least one layer");
  XKV_REQUIRE(values.empty() || values.size() == keys.size(),
              "compress_group: " << values.size() << " value layers for " << keys.size() << " key layers");
  XKV_REQUIRE(values.empty() || values[0].tokens == keys[0].tokens,
              "compress_group: values have " << values[0].tokens << " tokens, keys " << keys[0].tokens);
  GroupRanks ranks;
  if (policy.kind != RankPolicy::Kind::Energy) {
    const GroupShape shape{keys[0].tokens, int(keys.size()), keys[0].width(), values.empty() ? 0 : values[0].width()};
    ranks = ranks_for_shape(policy, shape);
  }
  auto one = [&](std::span<const KVView<T>> layers, int rank, const DeviceFactorOutputs<T>& out) {
    SvdArguments<T> args;
    args.layers = layers;
    args.rank = rank;
    args.energy_fraction = policy.energy_fraction;
    args.rank_capacity = out.rank_capacity;
    args.a = out.a;
    args.b = out.b;
    args.bt = out.bt;
    args.bt_ld = out.bt_ld;
    args.singular_values = out.singular_values;
    args.energies = out.energies;
    return compress_stream(args, stream).rank;
  };
  GroupRanks chosen;
  chosen.key_rank = one(keys, ranks.key_rank, key_out);
  if (!values.empty()) chosen.value_rank = one(values, ranks.value_rank, value_out);
  return chosen;
}

template class Compressor<__nv_bfloat16>;
template class Compressor<__half>;
template class Compressor<float>;

}  // namespace xkv::cuda
