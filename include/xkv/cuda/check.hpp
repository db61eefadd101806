// The one status-check macro of xkv::cuda: XKV_CUDA_CHECK(expr) accepts cudaError_t,
// cublasStatus_t and cusolverStatus_t and throws xkv::Error with the call, the status and file:line.
// Eigen-free, so it may be included from .cu files.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <string>

#include "xkv/error.hpp"

namespace xkv::cuda::detail {

inline const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_<unknown>";
  }
}

inline const char* cusolver_status_name(cusolverStatus_t s) {
  switch (s) {
    case CUSOLVER_STATUS_SUCCESS: return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE: return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "CUSOLVER_STATUS_NOT_SUPPORTED";
    default: return "CUSOLVER_STATUS_<unknown>";
  }
}

inline void check_status(cudaError_t s, const char* expr, const char* file, int line) {
  if (s == cudaSuccess) return;
  const ErrorKind kind = (s == cudaErrorMemoryAllocation) ? ErrorKind::OutOfMemory : ErrorKind::Device;
  ::xkv::detail::raise(kind, file, line,
                       std::string(expr) + " failed: " + cudaGetErrorName(s) + " (" + cudaGetErrorString(s) + ")");
}
inline void check_status(cublasStatus_t s, const char* expr, const char* file, int line) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  const ErrorKind kind = (s == CUBLAS_STATUS_ALLOC_FAILED) ? ErrorKind::OutOfMemory : ErrorKind::Device;
  ::xkv::detail::raise(kind, file, line, std::string(expr) + " failed: " + cublas_status_name(s));
}
inline void check_status(cusolverStatus_t s, const char* expr, const char* file, int line) {
  if (s == CUSOLVER_STATUS_SUCCESS) return;
  const ErrorKind kind = (s == CUSOLVER_STATUS_ALLOC_FAILED) ? ErrorKind::OutOfMemory : ErrorKind::Device;
  ::xkv::detail::raise(kind, file, line, std::string(expr) + " failed: " + cusolver_status_name(s));
}

}  // namespace xkv::cuda::detail

#define XKV_CUDA_CHECK(expr) ::xkv::cuda::detail::check_status((expr), #expr, __FILE__, __LINE__)
