# Installs pcx with a CMake package config, so that other projects can use
# find_package(pcx CONFIG COMPONENTS core mpi nccl testing) and link pcx::<component>.
# Each component has an export set of its own, so that finding one looks for the
# dependencies of that one only (pcx::core alone needs neither MPI nor CUDA).

include(CMakePackageConfigHelpers)

set(PCX_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/pcx)
set(PCX_COMPONENTS core mpi testing)
if(TARGET pcx_nccl)
  list(APPEND PCX_COMPONENTS nccl)
endif()
foreach(component IN LISTS PCX_COMPONENTS)
  install(TARGETS pcx_${component} EXPORT pcx_${component}_targets
    LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
    ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
    RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
    INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
  install(EXPORT pcx_${component}_targets NAMESPACE pcx:: DESTINATION ${PCX_CMAKE_DIR})
endforeach()
install(DIRECTORY include/pcx DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

configure_package_config_file(cmake/pcxConfig.cmake.in ${PROJECT_BINARY_DIR}/pcxConfig.cmake
  INSTALL_DESTINATION ${PCX_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/pcxConfigVersion.cmake COMPATIBILITY SameMajorVersion)
install(FILES ${PROJECT_BINARY_DIR}/pcxConfig.cmake ${PROJECT_BINARY_DIR}/pcxConfigVersion.cmake
  DESTINATION ${PCX_CMAKE_DIR})
