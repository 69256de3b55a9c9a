# pcx_add_mpi_test(<name> SOURCES <files...> RANKS <n...> [TIMEOUT <seconds>] [ARGS <args...>])
#
# Builds one test executable and registers it under mpiexec once per rank count, as
# <name>.ranks<n>. Open MPI gets --oversubscribe (more ranks than cores on small
# machines) and the variables that let it run as root in containers. Each test has a
# TIMEOUT, so a deadlock fails instead of hanging, and reserves one CTest processor per rank.
#
# pcx_add_mpi_executable_test(<name> TARGET <target> RANKS <n...> [TIMEOUT <s>] [LABELS <l...>]
#                             [RANK_ENV <VAR=value...>] [ARGS <args...>])
# registers an existing target the same way. RANK_ENV variables reach the ranks only (not
# mpiexec itself), which is how LD_PRELOAD puts a rank on the NCCL emulator.

if(MPI_CXX_LIBRARY_VERSION_STRING MATCHES "Open MPI")
  set(PCX_MPIEXEC_EXTRA_FLAGS --oversubscribe)
endif()

# pcx_mpiexec_env_flags(<out> <VAR=value...>): the mpiexec flags that give the ranks (and
# not mpiexec) those variables.
function(pcx_mpiexec_env_flags out)
  set(flags)
  foreach(variable IN LISTS ARGN)
    if(MPI_CXX_LIBRARY_VERSION_STRING MATCHES "Open MPI")
      list(APPEND flags -x ${variable})
    else()
      string(REPLACE "=" ";" pair "${variable}")
      list(APPEND flags -genv ${pair})
    endif()
  endforeach()
  set(${out} ${flags} PARENT_SCOPE)
endfunction()

function(pcx_add_mpi_executable_test name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "TIMEOUT;TARGET" "RANKS;ARGS;LABELS;RANK_ENV")
  if(NOT arg_TIMEOUT)
    set(arg_TIMEOUT 60)
  endif()
  pcx_mpiexec_env_flags(env_flags ${arg_RANK_ENV})
  foreach(ranks IN LISTS arg_RANKS)
    set(test_name ${name}.ranks${ranks})
    add_test(NAME ${test_name}
             COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${ranks} ${PCX_MPIEXEC_EXTRA_FLAGS} ${env_flags}
                     ${MPIEXEC_PREFLAGS} $<TARGET_FILE:${arg_TARGET}> ${MPIEXEC_POSTFLAGS} ${arg_ARGS})
    set_tests_properties(${test_name} PROPERTIES
      TIMEOUT ${arg_TIMEOUT}
      PROCESSORS ${ranks}
      LABELS "mpi;${arg_LABELS}"
      ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_rmaps_base_oversubscribe=1")
  endforeach()
endfunction()

function(pcx_add_mpi_test name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "TIMEOUT" "SOURCES;RANKS;ARGS;LIBRARIES")
  add_executable(${name} ${arg_SOURCES})
  target_link_libraries(${name} PRIVATE pcx::mpi pcx::testing Boost::unit_test_framework fmt::fmt pcx_warnings ${arg_LIBRARIES})
  target_compile_definitions(${name} PRIVATE BOOST_TEST_DYN_LINK)
  pcx_add_mpi_executable_test(${name} TARGET ${name} RANKS ${arg_RANKS} TIMEOUT ${arg_TIMEOUT} ARGS ${arg_ARGS})
endfunction()
