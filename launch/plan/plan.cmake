# launch/plan: the capacity planner behind `v4rt plan` (cost model, layout enumeration, report).
set(V4RT_PLAN_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/plan/model_cost.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/plan/hardware.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/plan/planner.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/plan/report.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/plan/op_cost.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/plan/validate.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/plan/deploy_config.cpp
)
list(APPEND V4RT_LAUNCH_SOURCES ${V4RT_PLAN_SOURCES})
# Hardware tables: <prefix>/share/v4rt/configs of an installed tree, else the source tree's
# configs/ (plan::default_config_dir, common/install_dirs.h), unless --config-dir says otherwise.
