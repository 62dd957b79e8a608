# text component: tokenizer, streaming detokenizer, chat encoder, streaming output parser and the
# Python-compatible JSON formatting they share (chat-format.md).
list(APPEND V4RT_MODEL_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/text/json_format.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/text/tokenizer.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/text/detokenizer.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/text/chat_encoder.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/text/output_parser.cpp
)
# Last place find_tokenizer_path looks: the repository copy fetched by scripts/fetch-tokenizer.sh.
set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/text/tokenizer.cpp PROPERTIES
  COMPILE_DEFINITIONS "V4RT_REPO_TOKENIZER=\"${CMAKE_SOURCE_DIR}/data/tokenizer/tokenizer.json\"")
