// Fused reconstruct-then-RoPE on the GPU: out = RoPE(A[tokens] * B) (keys) or A[tokens] * B (values),
// written straight into a token-major, head-major or paged KV buffer.
//
// Launch API in the CUTLASS manner: fill a ReconstructParams, `Reconstruct::validate` (throws
// xkv::Error naming the argument), `run(stream)`. Eigen-free, so it may be included from .cu files.
// The kernels themselves live in reconstruct_kernels.cuh (mma.sync, any sm_80+ device),
// reconstruct_kernels_gather.cuh (wgmma, gathered selections), reconstruct_kernels_pingpong.cuh
// (wgmma + TMA, ping-pong, dense ranges of rank <= 512; also the sm_90 dispatch) and
// reconstruct_kernels_tma.cuh (wgmma + TMA, cooperative, the other dense ranges).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "xkv/error.hpp"
#include "xkv/rope.hpp"

namespace xkv::cuda {

/// Element type of factors and output (the kernels accumulate in fp32).
enum class ScalarType { BFloat16, Float16 };

inline const char* scalar_type_name(ScalarType t) { return t == ScalarType::BFloat16 ? "bf16" : "fp16"; }

/// Which kernel runs: Auto picks wgmma (sm_90, needs ReconstructParams::bt; head_dim 64 or 128,
/// or 256 for dense ranges) when the configuration allows it, else mma.sync. Forcing one that
/// cannot run is an error.
enum class KernelPath { Auto, MmaSync, Wgmma };

/// Order of a paged buffer's dimensions: vLLM / FlashInfer "NHD" [pages, page_size, heads, head_dim]
/// or "HND" [pages, heads, page_size, head_dim].
enum class PagedLayout { NHD, HND };

/// Where reconstructed rows go. Output row `row` (see ReconstructParams::output_rows), head h,
/// element i lands at
///   strided: data + row * token_stride + h * head_stride + i            (0 <= row < rows)
///   paged:   data + page_table[row / page_size] * page_stride
///                 + (row % page_size) * token_stride + h * head_stride + i
/// Strides count elements and must be multiples of 8 (16-byte stores); `data` 16-byte aligned.
struct OutputSpec {
  void* data = nullptr;
  std::int64_t rows = 0;  ///< strided: rows the buffer holds
  std::int64_t token_stride = 0;
  std::int64_t head_stride = 0;
  // Paged output (page_table != nullptr):
  const std::int32_t* page_table = nullptr;  ///< device array: logical page -> physical page
  std::int64_t page_table_len = 0;           ///< entries of page_table
  int page_size = 0;                         ///< tokens per page
  std::int64_t num_pages = 0;                ///< physical pages in `data`; other entries are rejected
  std::int64_t page_stride = 0;              ///< elements between physical pages

  [[nodiscard]] bool paged() const { return page_table != nullptr; }

  /// [rows, heads, head_dim], contiguous.
  static OutputSpec token_major(void* data, std::int64_t rows, int heads, int head_dim) {
    OutputSpec s;
    s.data = data;
    s.rows = rows;
    s.token_stride = std::int64_t(heads) * head_dim;
    s.head_stride = head_dim;
    return s;
  }
  /// [heads, capacity, head_dim], contiguous (HF layout; capacity >= rows written).
  static OutputSpec head_major(void* data, int /*heads*/, std::int64_t capacity, int head_dim) {
    OutputSpec s;
    s.data = data;
    s.rows = capacity;
    s.token_stride = head_dim;
    s.head_stride = capacity * head_dim;
    return s;
  }
  /// A paged pool of `num_pages` pages of `page_size` tokens; `page_table` (device memory,
  /// `page_table_len` entries) maps a sequence's logical pages to physical ones.
  static OutputSpec paged_pool(void* pool, std::int64_t num_pages, int page_size, int heads, int head_dim,
                               PagedLayout layout, const std::int32_t* page_table, std::int64_t page_table_len) {
    OutputSpec s;
    s.data = pool;
    s.page_table = page_table;
    s.page_table_len = page_table_len;
    s.page_size = page_size;
    s.num_pages = num_pages;
    s.page_stride = std::int64_t(page_size) * heads * head_dim;
    if (layout == PagedLayout::NHD) {
      s.token_stride = std::int64_t(heads) * head_dim;
      s.head_stride = head_dim;
    } else {
      s.token_stride = head_dim;
      s.head_stride = std::int64_t(page_size) * head_dim;
    }
    return s;
  }
};

/// One reconstruction: for each selected token t (0 <= t < tokens)
///   token(t)    = token_indices ? token_indices[t] : token_begin + t       (row of A)
///   position(t) = positions ? positions[t] : position_offset + token(t)   (RoPE position)
///   row(t)      = output_row_offset + (output_rows ? output_rows[t] : t)  (output row)
///   out[row(t), h, :] = RoPE_position(t)( A[token(t), :] * B[:, h*head_dim : (h+1)*head_dim] )
/// With `b == nullptr` A holds the rows themselves (an uncompressed tail: A[token, h*head_dim + i])
/// and they are copied with RoPE applied.
/// All pointers are device pointers. Arrays read by the kernel (token_indices, positions,
/// output_rows, page_table) cannot be checked on the host: an entry out of range makes the kernel
/// write NaN for that row (bad token or position) or skip it (bad output row or page) and, if
/// `error_flag` is set, OR in the ReconstructError bit. Everything else is checked by validate().
struct ReconstructParams {
  ScalarType dtype = ScalarType::BFloat16;

  // Factors: A [a_rows x rank] with row stride lda, B [rank x heads*head_dim] with row stride ldb,
  // both row-major; lda and ldb multiples of 8, pointers 16-byte aligned.
  const void* a = nullptr;
  std::int64_t a_rows = 0;
  std::int64_t lda = 0;
  int rank = 0;
  const void* b = nullptr;
  std::int64_t ldb = 0;
  /// Optional copy of B transposed, [heads*head_dim x rank] with row stride ldbt (a multiple of 8).
  /// With it, Hopper GPUs run the wgmma kernel (head_dim 64/128, RoPE off, full-head half-split
  /// or interleaved with rotary dims a multiple of 8); otherwise the mma.sync kernel runs.
  const void* bt = nullptr;
  std::int64_t ldbt = 0;
  int heads = 0;
  int head_dim = 0;  ///< 64, 128 or 256

  // Token selection.
  std::int64_t tokens = 0;
  std::int64_t token_begin = 0;
  const std::int64_t* token_indices = nullptr;

  // Positions.
  const std::int64_t* positions = nullptr;
  std::int64_t position_offset = 0;

  // RoPE: `rope.enabled` false for values. cos/sin are computed in the kernel (fp64 angle,
  // fp32 sin/cos) unless a caller's table is given: cos_table[p * pairs + i], sin_table likewise,
  // pairs = rotary dims / 2 (the layout of xkv::RopeTable), for 0 <= p < table_positions.
  RopeConfig rope = RopeConfig::disabled();
  const float* cos_table = nullptr;
  const float* sin_table = nullptr;
  std::int64_t table_positions = 0;

  // Output.
  OutputSpec out;
  const std::int64_t* output_rows = nullptr;
  std::int64_t output_row_offset = 0;

  int* error_flag = nullptr;  ///< optional device int; see ReconstructError

  /// The caller's promise that the stream's previous kernel writes none of this call's inputs
  /// (A, B, B^T, token indices, positions, cos/sin table, page table, output row list): the
  /// Hopper gathered kernels, launched as programmatic dependents, may then read them and run
  /// their products while that kernel finishes, and let the stream's next kernel start beside
  /// them; they still write nothing (output, error_flag) before the previous kernel has
  /// completed. A decode step that reconstructs layer after layer from factors and an index list
  /// made before the step sets it (on an H200, 2048 of 131072 tokens: 6.2 us per layer back to
  /// back, 6.7 without). Without the promise (the default) the kernel touches no memory before
  /// the previous kernel has completed. Other kernels ignore it.
  bool inputs_ready = false;

  KernelPath kernel = KernelPath::Auto;
};

/// Bits the kernel ORs into ReconstructParams::error_flag.
enum ReconstructError : int {
  kBadTokenIndex = 1,   ///< token(t) outside [0, a_rows): row written as NaN
  kBadPosition = 2,     ///< position outside the caller's table: row written as NaN
  kBadOutputRow = 4,    ///< row(t) outside the buffer or page table, or a bad page id: row skipped
};

namespace detail {
/// Largest number of rotated pairs (head_dim 256).
inline constexpr int kMaxRopePairs = 128;

/// Flattened, POD form of ReconstructParams the kernels take by value.
struct ReconstructArgs {
  const void* a;
  const void* b;
  const void* bt;
  std::int64_t a_rows, lda, ldb, ldbt;
  int rank, heads, head_dim;
  std::int64_t tokens, token_begin;
  const std::int64_t* token_indices;
  const std::int64_t* positions;
  std::int64_t position_offset;
  int rotary_dim;  ///< 0: no RoPE
  const float* cos_table;
  const float* sin_table;
  std::int64_t table_positions;
  void* out;
  std::int64_t out_rows, out_token_stride, out_head_stride;
  const std::int32_t* page_table;
  std::int64_t page_table_len;
  int page_size;
  std::int64_t num_pages, page_stride;
  const std::int64_t* output_rows;
  std::int64_t output_row_offset;
  int* error_flag;
  int early_reads;  ///< ReconstructParams::inputs_ready
  double inv_freq[kMaxRopePairs];  ///< fp64 inverse frequencies (Llama-3 scaling applied)
};

enum class RopeMode { None, HalfSplit, Interleaved };

/// Compiled launchers (cuda/reconstruct/*.cu). `table` selects cos/sin from the caller's table.
void launch_reconstruct_bf16(const ReconstructArgs& args, RopeMode mode, bool table, cudaStream_t stream);
void launch_reconstruct_fp16(const ReconstructArgs& args, RopeMode mode, bool table, cudaStream_t stream);
/// Whether a wgmma kernel handles a configuration (else the mma.sync kernel runs): whole heads in
/// its column tile (64 or 128; 256 too for dense ranges, whose tile is 256 wide), and RoPE pairs
/// that sit in one thread's accumulators.
inline bool wgmma_supports(int head_dim, RopeMode mode, int rotary_dim, bool gathered) {
  if (head_dim != 64 && head_dim != 128 && (head_dim != 256 || gathered)) return false;
  if (mode == RopeMode::HalfSplit) return rotary_dim == head_dim;
  if (mode == RopeMode::Interleaved) return rotary_dim % 8 == 0;
  return true;
}

/// wgmma launchers (compiled for sm_90a when the build targets sm_90).
void launch_reconstruct_sm90_bf16(const ReconstructArgs& args, RopeMode mode, bool table, cudaStream_t stream);
void launch_reconstruct_sm90_fp16(const ReconstructArgs& args, RopeMode mode, bool table, cudaStream_t stream);
/// True when this build holds the wgmma kernels.
bool have_sm90_kernels();
}  // namespace detail

/// The operation: construct (validates), then run on a stream. Needs no workspace.
class Reconstruct {
 public:
  explicit Reconstruct(const ReconstructParams& params) : params_(params) { validate(params_); }

  /// Throws xkv::Error(InvalidArgument) naming the first bad argument and its value.
  static void validate(const ReconstructParams& params);
  [[nodiscard]] static std::size_t workspace_size(const ReconstructParams&) { return 0; }

  /// Enqueues the kernel; checks the launch. Asynchronous like any kernel launch. On sm_90 the
  /// gathered kernels launch as programmatic dependents of the stream's previous kernel (their
  /// CTAs may be scheduled while it finishes but touch no memory before it has completed, or
  /// only read with inputs_ready), which shortens back-to-back launches such as a decode step's
  /// layers; stream order is unchanged.
  void run(cudaStream_t stream = nullptr) const;

  [[nodiscard]] const ReconstructParams& params() const { return params_; }
  /// The kernel run() launches on the current device.
  [[nodiscard]] KernelPath selected_kernel() const;

 private:
  ReconstructParams params_;
};

/// One-call form: validate + run.
inline void reconstruct(const ReconstructParams& params, cudaStream_t stream = nullptr) {
  Reconstruct(params).run(stream);
}

}  // namespace xkv::cuda
