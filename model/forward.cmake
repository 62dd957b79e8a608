# model forward: weights, per-sequence state, the V4 blocks, the model and the sampler.
list(APPEND V4RT_MODEL_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/weights.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/row_table.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/kv_pool.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/kv_rows.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/state.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/prefix_state.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/mhc.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/attention.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/attention_ops.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/compressor.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/moe.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/model.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/mtp.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/speculative.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/distributed.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/sampler.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/token_ids.cpp
)
