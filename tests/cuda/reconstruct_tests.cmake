# Fused reconstruct+RoPE kernel tests.
xkv_add_test(xkv_test_cuda_reconstruct
  SOURCES test_reconstruct.cpp test_reconstruct_layouts.cpp test_reconstruct_gathered.cpp reconstruct_case.cpp
          test_reconstruct_validate.cpp late_writer.cu
  LIBS xkv::cuda)
xkv_add_test(xkv_test_cuda_reconstruct_cache
  SOURCES test_reconstruct_cache.cpp
  LIBS xkv::cuda)
