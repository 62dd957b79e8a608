# SPDX-License-Identifier: MIT
# The layering of DESIGN.md as a test: scans every source file of the libraries for its
# #include "..." lines and fails on an include that goes up or across the layering, naming the file
# and line. Run as `cmake -DROOT=<source dir> -P check_layering.cmake`.
#
#   common <- {cluster, kernels} <- parallel <- model <- runtime <- launch
#
# Inside kernels/ the generic layer (the Backend interface, the CPU reference and the debug wrapper)
# never includes kernels/cuda/; the CUDA backend reaches the rest of the tree only through the
# backend factory (kernels/backend_factory.*), its own module above both. A folder that does not
# exist yet (runtime/) is simply not scanned; its rule is in place for when it appears.
# Kernels take every setting through their backend's options (kernels/backend_factory.h): a getenv
# call anywhere under kernels/ fails too.
cmake_minimum_required(VERSION 3.25)
if(NOT ROOT)
  message(FATAL_ERROR "check_layering.cmake: pass -DROOT=<source dir>")
endif()

# Module -> the modules its files may include (itself included).
set(allowed_common         common)
set(allowed_cluster        common cluster)
set(allowed_kernels        common kernels)
set(allowed_kernels_cuda   common kernels kernels_cuda)
set(allowed_kernels_factory common kernels kernels_cuda kernels_factory)
# parallel's CUDA sources (parallel/cuda/, the EP row kernels) share the header-only device codecs
# of kernels/cuda/device_math.cuh: kernels, CUDA or not, sit below parallel.
set(allowed_parallel       common cluster kernels kernels_cuda kernels_factory parallel)
set(allowed_model          common cluster kernels kernels_factory parallel model)
set(allowed_runtime        common cluster kernels kernels_factory parallel model runtime)
set(allowed_launch         common cluster kernels kernels_cuda kernels_factory parallel model runtime launch)
set(library_folders common cluster kernels parallel model runtime launch)

# The module of a path relative to ROOT ("" when it lies outside the libraries, e.g. tests/).
function(module_of path out)
  set(m "")
  if(path MATCHES "^kernels/backend_factory\\.")
    set(m kernels_factory)
  elseif(path MATCHES "^kernels/cuda/")
    set(m kernels_cuda)
  elseif(path MATCHES "^([a-z_]+)/")
    if(CMAKE_MATCH_1 IN_LIST library_folders)
      set(m ${CMAKE_MATCH_1})
    endif()
  endif()
  set(${out} "${m}" PARENT_SCOPE)
endfunction()

set(violations 0)
set(scanned 0)
foreach(folder IN LISTS library_folders)
  if(NOT IS_DIRECTORY "${ROOT}/${folder}")
    continue()
  endif()
  file(GLOB_RECURSE files RELATIVE "${ROOT}" "${ROOT}/${folder}/*.h" "${ROOT}/${folder}/*.cpp"
       "${ROOT}/${folder}/*.cu" "${ROOT}/${folder}/*.cuh")
  list(SORT files)
  foreach(file IN LISTS files)
    module_of("${file}" from)
    get_filename_component(dir "${file}" DIRECTORY)
    math(EXPR scanned "${scanned} + 1")
    # One list element per line: characters that CMake lists treat specially are neutralised
    # first, so line numbers stay exact.
    file(READ "${ROOT}/${file}" text)
    string(REGEX REPLACE "[][;\\\\]" "_" text "${text}")
    string(REPLACE "\n" ";" lines "${text}")
    set(line_no 0)
    foreach(line IN LISTS lines)
      math(EXPR line_no "${line_no} + 1")
      if(from MATCHES "^kernels" AND line MATCHES "getenv[ \t]*\\(")
        message("${file}:${line_no}: layer ${from} reads an environment variable (settings come through BackendOptions)")
        math(EXPR violations "${violations} + 1")
      endif()
      if(NOT line MATCHES "^[ \t]*#[ \t]*include[ \t]*\"([^\"]+)\"")
        continue()
      endif()
      set(target "${CMAKE_MATCH_1}")
      # A bare or relative name is looked up beside the including file first.
      if(NOT target MATCHES "^([a-z_]+)/" OR NOT CMAKE_MATCH_1 IN_LIST library_folders)
        if(EXISTS "${ROOT}/${dir}/${target}")
          set(target "${dir}/${target}")
        endif()
      endif()
      if(target MATCHES "^tests/")
        message("${file}:${line_no}: includes test code \"${target}\" (layer ${from})")
        math(EXPR violations "${violations} + 1")
        continue()
      endif()
      module_of("${target}" to)
      if(to STREQUAL "" OR to IN_LIST allowed_${from})
        continue()
      endif()
      string(JOIN ", " may ${allowed_${from}})
      message("${file}:${line_no}: layer ${from} includes \"${target}\" of layer ${to} (${from} may include: ${may})")
      math(EXPR violations "${violations} + 1")
    endforeach()
  endforeach()
endforeach()

if(scanned EQUAL 0)
  message(FATAL_ERROR "check_layering: no source files under ${ROOT}")
endif()
if(violations GREATER 0)
  message(FATAL_ERROR "check_layering: ${violations} violation(s) of the layering in ${scanned} files")
endif()
message(STATUS "check_layering: ${scanned} files, every include within the layering")
