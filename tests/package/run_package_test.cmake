# Driver of the package test (cmake -P). Installs XKV_BUILD_DIR to WORK_DIR/prefix, builds
# CONSUMER_SOURCE_DIR against it with the same generator and compiler, and runs the consumer.
cmake_minimum_required(VERSION 3.25)

foreach(var XKV_BUILD_DIR CONSUMER_SOURCE_DIR WORK_DIR GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_package_test.cmake: ${var} is not set")
  endif()
endforeach()

set(prefix ${WORK_DIR}/prefix)
set(consumer_build ${WORK_DIR}/consumer-build)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

# Runs a command, echoing it, and fails the test with its output if it fails.
function(run_step name)
  message(STATUS "[package test] ${name}: ${ARGN}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  message(STATUS "${out}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "[package test] ${name} failed (${rc}):\n${out}\n${err}")
  endif()
endfunction()

set(config_args)
if(XKV_CONFIG)
  set(config_args --config ${XKV_CONFIG})
endif()
run_step(install ${CMAKE_COMMAND} --install ${XKV_BUILD_DIR} --prefix ${prefix} ${config_args})

if(NOT EXISTS ${prefix}/include/xkv/xkv.hpp)
  message(FATAL_ERROR "[package test] the install has no include/xkv/xkv.hpp")
endif()
file(GLOB_RECURSE configs ${prefix}/*/xkvConfig.cmake)
if(NOT configs)
  message(FATAL_ERROR "[package test] the install has no xkvConfig.cmake")
endif()

# Configures, builds and runs the consumer project in `source` (its executable: app).
function(build_and_run_consumer source build)
  set(configure_args -S ${source} -B ${build} -G ${GENERATOR}
      -DCMAKE_CXX_COMPILER=${CXX_COMPILER} "-DCMAKE_PREFIX_PATH=${prefix};${EXTRA_PREFIX_PATH}")
  if(GENERATOR_PLATFORM)
    list(APPEND configure_args -A ${GENERATOR_PLATFORM})
  endif()
  if(GENERATOR_TOOLSET)
    list(APPEND configure_args -T ${GENERATOR_TOOLSET})
  endif()
  if(MAKE_PROGRAM)
    list(APPEND configure_args -DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM})
  endif()
  if(CUDA_COMPILER)
    list(APPEND configure_args -DCMAKE_CUDA_COMPILER=${CUDA_COMPILER})
  endif()
  if(XKV_CONFIG)
    list(APPEND configure_args -DCMAKE_BUILD_TYPE=${XKV_CONFIG})
  endif()
  run_step(configure ${CMAKE_COMMAND} ${configure_args})
  run_step(build ${CMAKE_COMMAND} --build ${build} ${config_args})

  # The consumer binary: single-config generators put it at the top, multi-config in a subfolder.
  find_program(app NAMES app PATHS ${build} ${build}/${XKV_CONFIG} NO_DEFAULT_PATH NO_CACHE)
  if(NOT app)
    message(FATAL_ERROR "[package test] the consumer was built but app was not found in ${build}")
  endif()
  run_step(run ${app})
endfunction()

build_and_run_consumer(${CONSUMER_SOURCE_DIR} ${consumer_build})
# With the CUDA component installed: find_package(xkv CONFIG REQUIRED COMPONENTS cuda) and
# xkv::cuda (its GPU run is skipped without a device).
if(CUDA_CONSUMER_SOURCE_DIR)
  build_and_run_consumer(${CUDA_CONSUMER_SOURCE_DIR} ${WORK_DIR}/consumer-cuda-build)
endif()
message(STATUS "[package test] passed")
