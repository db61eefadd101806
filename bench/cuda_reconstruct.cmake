# Reconstruct+RoPE kernel benchmarks: Google Benchmark (xkv vs cuBLAS A*B alone, one process) and
# the small command-line timer that bench/reconstruct_side_by_side.py runs next to torch.
add_executable(xkv_bench_cuda_reconstruct ${CMAKE_CURRENT_LIST_DIR}/bench_cuda_reconstruct.cpp)
target_link_libraries(xkv_bench_cuda_reconstruct PRIVATE xkv::cuda benchmark::benchmark xkv_private_flags)

add_executable(xkv_reconstruct_cli ${CMAKE_CURRENT_LIST_DIR}/reconstruct_cli.cpp)
target_link_libraries(xkv_reconstruct_cli PRIVATE xkv::cuda xkv_private_flags)
