# launch/bench: `v4rt bench <what>` benchmarks.
list(APPEND V4RT_LAUNCH_SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/bench/bench_tokenizer.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/bench/bench_step.cpp
  # --backend / --device, shared with logits and generate (listed here until launch/CMakeLists.txt does)
  ${CMAKE_CURRENT_SOURCE_DIR}/backend_option.cpp)
