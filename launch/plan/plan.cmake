# launch/plan: the capacity planner behind `v4rt plan` (cost model, layout enumeration, report).
set(V4RT_PLAN_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/plan/model_cost.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/plan/hardware.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/plan/planner.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/plan/report.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/plan/op_cost.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/plan/validate.cpp
)
list(APPEND V4RT_LAUNCH_SOURCES ${V4RT_PLAN_SOURCES})
# Hardware tables are read from the source tree's configs/ unless --config-dir says otherwise.
set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/plan/hardware.cpp PROPERTIES
  COMPILE_DEFINITIONS "V4RT_CONFIG_DIR=\"${CMAKE_SOURCE_DIR}/configs\"")
