# Finds pcx's dependencies. MPI, spdlog and fmt are required; CUDA and NCCL are
# optional and enable the NCCL backend.

include(GNUInstallDirs)

set(MPI_CXX_SKIP_MPICXX ON)
set(MPI_DETERMINE_LIBRARY_VERSION TRUE)  # else the version string, used to detect Open MPI, is empty
find_package(MPI REQUIRED COMPONENTS CXX)
find_package(spdlog CONFIG REQUIRED)
find_package(fmt CONFIG REQUIRED)

if(NOT DEFINED CUDAToolkit_ROOT AND EXISTS /usr/local/cuda)
  set(CUDAToolkit_ROOT /usr/local/cuda)
endif()
find_package(CUDAToolkit QUIET)

set(PCX_NCCL_FOUND FALSE)
if(CUDAToolkit_FOUND)
  find_path(NCCL_INCLUDE_DIR nccl.h
    HINTS ${NCCL_ROOT} $ENV{NCCL_ROOT} ${CUDAToolkit_INCLUDE_DIRS} ${CUDAToolkit_ROOT}
    PATH_SUFFIXES include)
  find_library(NCCL_LIBRARY nccl
    HINTS ${NCCL_ROOT} $ENV{NCCL_ROOT} ${CUDAToolkit_LIBRARY_DIR} ${CUDAToolkit_ROOT}
    PATH_SUFFIXES lib lib64)
  if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
    file(STRINGS ${NCCL_INCLUDE_DIR}/nccl.h _pcx_nccl_version_lines REGEX "#define NCCL_(MAJOR|MINOR|PATCH) ")
    foreach(_line IN LISTS _pcx_nccl_version_lines)
      if(_line MATCHES "#define NCCL_(MAJOR|MINOR|PATCH) +([0-9]+)")
        set(_pcx_nccl_${CMAKE_MATCH_1} ${CMAKE_MATCH_2})
      endif()
    endforeach()
    set(PCX_NCCL_VERSION "${_pcx_nccl_MAJOR}.${_pcx_nccl_MINOR}.${_pcx_nccl_PATCH}")
    set(PCX_NCCL_FOUND TRUE)
    if(NOT TARGET pcx_nccl_imported)
      add_library(pcx_nccl_imported UNKNOWN IMPORTED)
      set_target_properties(pcx_nccl_imported PROPERTIES
        IMPORTED_LOCATION ${NCCL_LIBRARY}
        INTERFACE_INCLUDE_DIRECTORIES ${NCCL_INCLUDE_DIR})
    endif()
  endif()
endif()

if(PCX_BUILD_TESTS)
  find_package(Boost 1.74 REQUIRED COMPONENTS unit_test_framework)
endif()
if(PCX_BUILD_TOOLS OR PCX_BUILD_BENCH OR PCX_BUILD_TESTS)
  find_package(CLI11 CONFIG REQUIRED)
endif()
if(PCX_BUILD_TOOLS OR PCX_BUILD_TESTS)
  find_package(nlohmann_json CONFIG REQUIRED)
endif()
if(PCX_BUILD_BENCH)
  find_package(benchmark CONFIG REQUIRED)
endif()
