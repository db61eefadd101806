// RAII for device memory and streams, and the "is there a usable GPU" probe tests use.
// Eigen-free, so it may be included from .cu files.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#include "xkv/cuda/check.hpp"

namespace xkv::cuda {

/// True when at least one CUDA device can be used. Any error (no driver, no device) means false.
/// Never call from a static initialiser: test discovery runs binaries on machines without GPUs.
inline bool device_available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky error
    return false;
  }
  return count > 0;
}

/// An owning device allocation of `count` elements of T (uninitialised).
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t count) : count_(count) {
    if (count_ > 0) XKV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr_), count_ * sizeof(T)));
  }
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), count_(std::exchange(o.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      count_ = std::exchange(o.count_, 0);
    }
    return *this;
  }
  void reset() noexcept {
    if (ptr_) (void)cudaFree(ptr_);  // destructor path: never throws
    ptr_ = nullptr;
    count_ = 0;
  }
  [[nodiscard]] T* get() const { return ptr_; }
  [[nodiscard]] std::size_t size() const { return count_; }
  [[nodiscard]] std::size_t bytes() const { return count_ * sizeof(T); }

 private:
  T* ptr_ = nullptr;
  std::size_t count_ = 0;
};

/// An owning CUDA stream.
class Stream {
 public:
  Stream() { XKV_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  /// A stream of the given priority (cudaDeviceGetStreamPriorityRange: lower numbers run first).
  explicit Stream(int priority) {
    XKV_CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, priority));
  }
  ~Stream() {
    if (stream_) (void)cudaStreamDestroy(stream_);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  [[nodiscard]] cudaStream_t get() const { return stream_; }
  void synchronize() const { XKV_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

 private:
  cudaStream_t stream_ = nullptr;
};

/// An owning CUDA event pair for timing (benchmarks).
class EventTimer {
 public:
  EventTimer() {
    XKV_CUDA_CHECK(cudaEventCreate(&start_));
    XKV_CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~EventTimer() {
    (void)cudaEventDestroy(start_);
    (void)cudaEventDestroy(stop_);
  }
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  void start(cudaStream_t s) { XKV_CUDA_CHECK(cudaEventRecord(start_, s)); }
  /// Records the stop event, waits for it and returns milliseconds.
  float stop(cudaStream_t s) {
    XKV_CUDA_CHECK(cudaEventRecord(stop_, s));
    XKV_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0;
    XKV_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return ms;
  }

 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

}  // namespace xkv::cuda
