# batch component: `v4rt batch` (OpenAI Batch API JSONL in, results out) with a crash-safe
# journal; docs/BATCH.md.
list(APPEND V4RT_LAUNCH_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/batch/digest.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/batch/journal.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/batch/batch_input.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/batch/progress.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/batch/batch_job.cpp
)
