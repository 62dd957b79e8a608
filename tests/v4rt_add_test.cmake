# v4rt_add_test(NAME SOURCES src... [LIBS lib...] LABELS unit|golden|mpi|gpu|... [NP n] [TIMEOUT s])
# Registers a gtest binary with CTest. With NP the test runs under `mpiexec -n NP` (oversubscribed,
# ob1 PML, allowed as root) and always with a timeout so a broken collective cannot hang CI.
# Golden reference data and the release metadata live in the repository (tests/data/README.md).
set(V4RT_GOLDEN_DIR "${CMAKE_SOURCE_DIR}/tests/data/golden" CACHE PATH "Golden reference data (tests/data/golden)")
# The Open MPI environment of every test run under mpirun (ENVIRONMENT of the CTest entries);
# tests that start mpirun themselves set the same list through tests/mpi_env.h.
set(V4RT_MPI_TEST_ENV
    "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_pml=ob1;OMPI_MCA_btl=self,vader,tcp;OMPI_MCA_rmaps_base_oversubscribe=1")

function(v4rt_add_test NAME)
  cmake_parse_arguments(T "" "NP;TIMEOUT" "SOURCES;LIBS;LABELS;ARGS" ${ARGN})
  add_executable(${NAME} ${T_SOURCES})
  target_link_libraries(${NAME} PRIVATE ${T_LIBS} GTest::gtest)
  target_include_directories(${NAME} PRIVATE ${PROJECT_SOURCE_DIR})  # tests/*.h helpers
  if(NOT T_NP)
    target_link_libraries(${NAME} PRIVATE GTest::gtest_main)
  endif()
  target_compile_definitions(${NAME} PRIVATE
    V4RT_GOLDEN_DIR="${V4RT_GOLDEN_DIR}" V4RT_SOURCE_DIR="${CMAKE_SOURCE_DIR}"
    V4RT_BINARY_DIR="${CMAKE_BINARY_DIR}")
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  if(T_NP)
    set(test_name ${NAME}_np${T_NP})
    add_test(NAME ${test_name}
      COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${T_NP} --oversubscribe
              $<TARGET_FILE:${NAME}> ${T_ARGS})
    set_tests_properties(${test_name} PROPERTIES
      ENVIRONMENT "${V4RT_MPI_TEST_ENV}")
  else()
    set(test_name ${NAME})
    add_test(NAME ${test_name} COMMAND ${NAME} ${T_ARGS})
  endif()
  set_tests_properties(${test_name} PROPERTIES LABELS "${T_LABELS}" TIMEOUT ${T_TIMEOUT})
endfunction()
