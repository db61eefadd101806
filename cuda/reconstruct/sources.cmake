# Sources of the fused reconstruct+RoPE kernels (target xkv_cuda). One .cu per element type and
# head_dim so the kernel instantiations compile in parallel.
target_sources(xkv_cuda PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/reconstruct.cpp
  ${CMAKE_CURRENT_LIST_DIR}/reconstruct_bf16.cu
  ${CMAKE_CURRENT_LIST_DIR}/reconstruct_fp16.cu
  ${CMAKE_CURRENT_LIST_DIR}/reconstruct_bf16_d64.cu
  ${CMAKE_CURRENT_LIST_DIR}/reconstruct_bf16_d128.cu
  ${CMAKE_CURRENT_LIST_DIR}/reconstruct_bf16_d256.cu
  ${CMAKE_CURRENT_LIST_DIR}/reconstruct_fp16_d64.cu
  ${CMAKE_CURRENT_LIST_DIR}/reconstruct_fp16_d128.cu
  ${CMAKE_CURRENT_LIST_DIR}/reconstruct_fp16_d256.cu
  ${CMAKE_CURRENT_LIST_DIR}/device_cache.cpp)

# The wgmma kernels need the architecture-specific sm_90a target. They are built as an object
# library of their own (CMake has no per-source architectures) when the build targets sm_90, and
# picked at run time only on a compute capability 9.0 device.
set(_xkv_rec_archs "${CMAKE_CUDA_ARCHITECTURES}")
list(FILTER _xkv_rec_archs INCLUDE REGEX "^90")
if(_xkv_rec_archs)
  add_library(xkv_cuda_reconstruct_sm90a OBJECT
    ${CMAKE_CURRENT_LIST_DIR}/reconstruct_sm90_bf16.cu
    ${CMAKE_CURRENT_LIST_DIR}/reconstruct_sm90_fp16.cu)
  set_target_properties(xkv_cuda_reconstruct_sm90a PROPERTIES
    CUDA_ARCHITECTURES 90a CUDA_STANDARD 20 CUDA_STANDARD_REQUIRED ON POSITION_INDEPENDENT_CODE ON)
  target_include_directories(xkv_cuda_reconstruct_sm90a PRIVATE ${PROJECT_SOURCE_DIR}/include)
  target_link_libraries(xkv_cuda_reconstruct_sm90a PRIVATE CUDA::cudart)
  target_compile_options(xkv_cuda_reconstruct_sm90a PRIVATE -lineinfo --expt-relaxed-constexpr)
  target_sources(xkv_cuda PRIVATE $<TARGET_OBJECTS:xkv_cuda_reconstruct_sm90a>)
  target_compile_definitions(xkv_cuda PRIVATE XKV_HAVE_SM90A=1)
endif()
