# launch/bench: `v4rt bench <what>` benchmarks.
list(APPEND V4RT_LAUNCH_SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/bench/bench_tokenizer.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/bench/bench_backend.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/bench/bench_step.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/bench/bench_prefill.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/bench/bench_mtp.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/bench/bench_serve.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/bench/bench_serve_stats.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/bench/bench_moe_comm.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/bench/bench_sample.cpp)
