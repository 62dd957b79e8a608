# NCCL implementation of cluster::Comm (nccl_comm.*), included by cluster/CMakeLists.txt. Built
# only with V4RT_ENABLE_NCCL; it needs the CUDA runtime but nothing from kernels/.
if(V4RT_ENABLE_NCCL)
  target_sources(v4rt_cluster PRIVATE ${CMAKE_CURRENT_LIST_DIR}/nccl_comm.cpp)
  target_link_libraries(v4rt_cluster PUBLIC CUDA::cudart ${NCCL_LIBRARY})
  target_include_directories(v4rt_cluster PUBLIC ${NCCL_INCLUDE_DIR})
endif()
