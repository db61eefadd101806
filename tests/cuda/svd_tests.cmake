# GPU compression tests.
xkv_add_test(xkv_test_cuda_svd
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_svd.cpp ${CMAKE_CURRENT_LIST_DIR}/test_svd_api.cpp
          ${CMAKE_CURRENT_LIST_DIR}/test_svd_gram.cpp ${CMAKE_CURRENT_LIST_DIR}/test_svd_concurrent.cpp
          ${CMAKE_CURRENT_LIST_DIR}/test_svd_transposed.cpp
  LIBS xkv::cuda xkv::xkv)
# The one-launch Cholesky and the CholeskyQR products are private to cuda/svd; their tests read
# the private headers.
xkv_add_test(xkv_test_cuda_cholesky
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_cholesky.cpp ${CMAKE_CURRENT_LIST_DIR}/test_cholesky_qr.cpp
  LIBS xkv::cuda xkv::xkv)
target_include_directories(xkv_test_cuda_cholesky PRIVATE ${PROJECT_SOURCE_DIR}/cuda/svd)
