# serve component: OpenAI-compatible HTTP server (cpp-httplib), request parsing, SSE output,
# stop signals and the leader's fault path (the scheduler and the engine are runtime/'s).
list(APPEND V4RT_LAUNCH_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/serve/openai_api.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/serve/output.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/serve/http_server.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/serve/http_connections.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/serve/ranks.cpp
)
# Debian's libcpp-httplib-dev is a compiled library (header declarations + libcpp-httplib.so) whose
# class layouts depend on the CPPHTTPLIB_*_SUPPORT defines in its pkg-config file, so take both
# from pkg-config. V4RT_LAUNCH_LIBS names it for whoever links v4rt_launch; the deferred call links
# it once launch/CMakeLists.txt has created the target.
pkg_check_modules(HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)
set(V4RT_LAUNCH_LIBS PkgConfig::HTTPLIB)
cmake_language(DEFER CALL target_link_libraries v4rt_launch PUBLIC PkgConfig::HTTPLIB)
