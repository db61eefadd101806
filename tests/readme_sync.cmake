# Fails unless the README's usage example is, line for line, the code compiled in
# tests/core/test_readme_example.cpp between README-EXAMPLE-BEGIN and README-EXAMPLE-END.
# Usage: cmake -DREADME=<README.md> -DSOURCE=<test_readme_example.cpp> -P readme_sync.cmake
file(READ "${SOURCE}" source_text)
string(REGEX MATCH "// README-EXAMPLE-BEGIN\n(.*)// README-EXAMPLE-END" _ "${source_text}")
set(example "${CMAKE_MATCH_1}")
if(example STREQUAL "")
  message(FATAL_ERROR "no README-EXAMPLE block in ${SOURCE}")
endif()
file(READ "${README}" readme_text)
string(FIND "${readme_text}" "```cpp\n${example}```" position)
if(position EQUAL -1)
  message(FATAL_ERROR "README.md's usage example differs from the compiled one in ${SOURCE}")
endif()
message(STATUS "README usage example matches ${SOURCE}")
