# GPU compression tests.
xkv_add_test(xkv_test_cuda_svd
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_svd.cpp ${CMAKE_CURRENT_LIST_DIR}/test_svd_api.cpp
  LIBS xkv::cuda xkv::xkv)
