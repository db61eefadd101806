# Command-line tools on a real model (xkv-inspect, xkv-generate, xkv-long-context-demo).
foreach(_tool IN ITEMS inspect generate)
  add_executable(xkv_${_tool} ${CMAKE_CURRENT_LIST_DIR}/xkv_${_tool}.cpp)
  set_target_properties(xkv_${_tool} PROPERTIES OUTPUT_NAME xkv-${_tool})
  target_link_libraries(xkv_${_tool} PRIVATE xkv::model xkv_private_flags)
endforeach()

add_executable(xkv_long_context_demo ${CMAKE_CURRENT_LIST_DIR}/long_context_demo.cpp)
set_target_properties(xkv_long_context_demo PROPERTIES OUTPUT_NAME xkv-long-context-demo)
target_link_libraries(xkv_long_context_demo PRIVATE xkv::model xkv_private_flags)

if(XKV_INSTALL)
  install(TARGETS xkv_inspect xkv_generate xkv_long_context_demo RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
