# Installs pcx with a CMake package config, so that other projects can use
# find_package(pcx CONFIG) and link pcx::pcx.

include(CMakePackageConfigHelpers)

set(PCX_INSTALLED_TARGETS pcx)
if(TARGET pcx_nccl)
  list(APPEND PCX_INSTALLED_TARGETS pcx_nccl)
endif()
set(PCX_WITH_NCCL ${PCX_NCCL_FOUND})
install(TARGETS ${PCX_INSTALLED_TARGETS} EXPORT pcxTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/pcx DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

set(PCX_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/pcx)
install(EXPORT pcxTargets NAMESPACE pcx:: DESTINATION ${PCX_CMAKE_DIR})
configure_package_config_file(cmake/pcxConfig.cmake.in ${PROJECT_BINARY_DIR}/pcxConfig.cmake
  INSTALL_DESTINATION ${PCX_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/pcxConfigVersion.cmake COMPATIBILITY SameMajorVersion)
install(FILES ${PROJECT_BINARY_DIR}/pcxConfig.cmake ${PROJECT_BINARY_DIR}/pcxConfigVersion.cmake
  DESTINATION ${PCX_CMAKE_DIR})
