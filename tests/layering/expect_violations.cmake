# SPDX-License-Identifier: MIT
# The layering check must fail on the fixture tree and name each forbidden include by file and line
# (and pass the allowed ones). Run as `cmake -DCHECKER=<check_layering.cmake> -DFIXTURE=<dir> -P ...`.
execute_process(COMMAND ${CMAKE_COMMAND} -DROOT=${FIXTURE} -P ${CHECKER}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
set(all "${out}${err}")
if(rc EQUAL 0)
  message(FATAL_ERROR "check_layering passed a tree with forbidden includes:\n${all}")
endif()
foreach(expected
    "model/upward.cpp:3: layer model includes \"launch/sequence_table.h\" of layer launch"
    "kernels/cpu/cuda_from_generic.cpp:4: layer kernels includes \"kernels/cuda/factory.h\" of layer kernels_cuda"
    "common/test_helper.h:3: includes test code \"tests/golden_util.h\""
    "kernels/cuda/factory.h:3: layer kernels_cuda reads an environment variable"
    "4 violation(s) of the layering in 5 files")
  string(FIND "${all}" "${expected}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "check_layering output lacks '${expected}':\n${all}")
  endif()
endforeach()
if(all MATCHES "launch/fine.cpp")
  message(FATAL_ERROR "check_layering flagged an allowed include of launch/fine.cpp:\n${all}")
endif()
message(STATUS "check_layering names every forbidden include of the fixture")
