# model: configuration, presets, runtime YAML, checkpoint reader/writer, synthetic checkpoints.
list(APPEND V4RT_MODEL_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/config.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/presets.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/safetensors.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/checkpoint.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/expected_tensors.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/synthetic.cpp
)
