# SPDX-License-Identifier: MIT
# The link side of the layering (DESIGN.md): each v4rt library may link only the libraries of the
# layers below it. v4rt_check_link_layering(), called at the end of the top-level CMakeLists.txt,
# fails the configure step naming the library and the link that goes the wrong way. The include
# side is the test tests/layering (check_layering.cmake).
#
#   common <- {cluster, kernels <- kernels_cuda <- kernels_factory} <- parallel <- model <- runtime <- launch
#
# A library of this table that is not built (v4rt_kernels_cuda without CUDA, v4rt_runtime before it
# exists) is skipped.
set(V4RT_LAYER_LINKS_v4rt_common "")
set(V4RT_LAYER_LINKS_v4rt_cluster v4rt_common)
set(V4RT_LAYER_LINKS_v4rt_kernels v4rt_common)
set(V4RT_LAYER_LINKS_v4rt_kernels_cuda v4rt_common v4rt_kernels)
set(V4RT_LAYER_LINKS_v4rt_kernels_factory v4rt_common v4rt_kernels v4rt_kernels_cuda)
set(V4RT_LAYER_LINKS_v4rt_parallel v4rt_common v4rt_cluster v4rt_kernels)
set(V4RT_LAYER_LINKS_v4rt_model ${V4RT_LAYER_LINKS_v4rt_parallel} v4rt_parallel)
set(V4RT_LAYER_LINKS_v4rt_runtime ${V4RT_LAYER_LINKS_v4rt_model} v4rt_model v4rt_kernels_factory)
set(V4RT_LAYER_LINKS_v4rt_launch ${V4RT_LAYER_LINKS_v4rt_runtime} v4rt_runtime v4rt_kernels_cuda)
set(V4RT_LAYERED_LIBRARIES v4rt_common v4rt_cluster v4rt_kernels v4rt_kernels_cuda v4rt_kernels_factory
    v4rt_parallel v4rt_model v4rt_runtime v4rt_launch)

function(v4rt_check_link_layering)
  set(bad "")
  foreach(lib IN LISTS V4RT_LAYERED_LIBRARIES)
    if(NOT TARGET ${lib})
      continue()
    endif()
    get_target_property(links ${lib} LINK_LIBRARIES)
    get_target_property(iface ${lib} INTERFACE_LINK_LIBRARIES)
    foreach(link IN LISTS links iface)
      string(REGEX REPLACE "^\\$<LINK_ONLY:(.*)>$" "\\1" link "${link}")
      if(link MATCHES "^v4rt_" AND NOT link IN_LIST V4RT_LAYER_LINKS_${lib})
        string(APPEND bad "\n  ${lib} links ${link} (allowed: ${V4RT_LAYER_LINKS_${lib}})")
      endif()
    endforeach()
  endforeach()
  if(bad)
    message(FATAL_ERROR "link layering (cmake/v4rt_layering.cmake) broken:${bad}")
  endif()
endfunction()
