# GPU compression benchmarks.
add_library(xkv_svd_bench_data STATIC ${CMAKE_CURRENT_LIST_DIR}/svd_bench_data.cu)
target_link_libraries(xkv_svd_bench_data PUBLIC xkv::cuda)

add_executable(xkv_bench_cuda_svd ${CMAKE_CURRENT_LIST_DIR}/bench_cuda_svd.cpp)
target_link_libraries(xkv_bench_cuda_svd PRIVATE xkv::cuda xkv_svd_bench_data benchmark::benchmark xkv_private_flags)

# Command-line front end used by svd_side_by_side.py (same matrices as the torch baselines).
add_executable(xkv_svd_cli ${CMAKE_CURRENT_LIST_DIR}/xkv_svd_cli.cpp)
target_link_libraries(xkv_svd_cli PRIVATE xkv::cuda xkv_private_flags)
# --micro times the private one-launch Cholesky next to the cuSOLVER calls it replaces.
target_include_directories(xkv_svd_cli PRIVATE ${PROJECT_SOURCE_DIR}/cuda/svd)

# A whole model's compression overlapped with a prefill stand-in (cuBLAS GEMMs): the added wall time.
add_executable(xkv_bench_cuda_prefill_overlap ${CMAKE_CURRENT_LIST_DIR}/bench_cuda_prefill_overlap.cpp)
target_link_libraries(xkv_bench_cuda_prefill_overlap PRIVATE xkv::cuda xkv_svd_bench_data benchmark::benchmark
                      xkv_private_flags)
