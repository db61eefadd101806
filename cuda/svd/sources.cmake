# Sources of the GPU compression backend (target xkv_cuda).
target_sources(xkv_cuda PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/cholesky.cu
  ${CMAKE_CURRENT_LIST_DIR}/cholesky_qr.cu
  ${CMAKE_CURRENT_LIST_DIR}/compressor.cu
  ${CMAKE_CURRENT_LIST_DIR}/compressor_api.cpp
  ${CMAKE_CURRENT_LIST_DIR}/concurrent_compressor.cpp
  ${CMAKE_CURRENT_LIST_DIR}/gram_subspace.cu)
