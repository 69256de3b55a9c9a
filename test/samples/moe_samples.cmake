# Tests of samples/moe_dispatch, samples/two_contexts and samples/mock_mpu. Included from
# test/samples/CMakeLists.txt, so PcxMpiTest's functions and PCX_BASH are available.

# moe_dispatch: every ep size of 8 ranks in both orders (step 3 of scripts/demo), and
# one ep size and one order on 4 ranks. Exit status 0 means every number was checked.
if(TARGET moe_dispatch)
  pcx_add_mpi_executable_test(moe_dispatch TARGET moe_dispatch RANKS 8 TIMEOUT 120 LABELS samples)
  pcx_add_mpi_executable_test(moe_dispatch.ep2_data_first TARGET moe_dispatch RANKS 4 TIMEOUT 120 LABELS samples
                              ARGS --ep 2 --expert-order data-first)

  # Input that must fail on every rank with one error line, the same status everywhere, and no hang.
  function(_pcx_moe_dispatch_failure_test name ranks status pattern)
    add_test(NAME moe_dispatch.error.${name}
             COMMAND ${PCX_BASH} ${CMAKE_CURRENT_SOURCE_DIR}/expect_sample_failure.sh moe_dispatch ${status}
                     ${pattern} ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${ranks} ${PCX_MPIEXEC_EXTRA_FLAGS}
                     ${MPIEXEC_PREFLAGS} $<TARGET_FILE:moe_dispatch> ${MPIEXEC_POSTFLAGS} -- ${ARGN})
    set_tests_properties(moe_dispatch.error.${name} PROPERTIES
      TIMEOUT 60
      PROCESSORS 1
      LABELS "mpi;samples"
      ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_rmaps_base_oversubscribe=1")
  endfunction()
  _pcx_moe_dispatch_failure_test(tokens_not_multiple_of_ep 8 2 "--tokens 3 is not a multiple of expert parallel size 2"
                                 --tokens 3 --ep 2)
  _pcx_moe_dispatch_failure_test(ep_does_not_divide 8 2 "expert parallel size 3 does not divide data parallel size 8"
                                 --ep 3)
  _pcx_moe_dispatch_failure_test(bad_flag 4 2 "unknown flag '--bogus'" --bogus)
  # A corrupted value on one rank: every rank exits 1 together, after the checks.
  _pcx_moe_dispatch_failure_test(mismatch_detected 4 1 "checks failed" --corrupt-rank 1 --ep 2,4)

  # The NCCL backend, one rank (one GPU); skipped (exit 77) where there is no CUDA device.
  if(TARGET pcx::nccl)
    pcx_add_mpi_executable_test(moe_dispatch.nccl TARGET moe_dispatch RANKS 1 TIMEOUT 120 LABELS samples gpu nccl
                                ARGS --backend nccl)
    set_tests_properties(moe_dispatch.nccl.ranks1 PROPERTIES SKIP_RETURN_CODE 77)
    pcx_add_mpi_executable_test(moe_dispatch.nccl.emulated TARGET moe_dispatch RANKS 4 8 TIMEOUT 120
                                LABELS samples emulator nccl RANK_ENV ${PCX_ON_EMULATOR} ARGS --backend nccl)
  endif()
endif()

# two_contexts: a training and an evaluation context, alternately, on 4 and 8 ranks.
if(TARGET two_contexts)
  pcx_add_mpi_executable_test(two_contexts TARGET two_contexts RANKS 4 8 TIMEOUT 60 LABELS samples)
  if(TARGET pcx::nccl)
    pcx_add_mpi_executable_test(two_contexts.nccl.emulated TARGET two_contexts RANKS 4 8 TIMEOUT 120
                                LABELS samples emulator nccl RANK_ENV ${PCX_ON_EMULATOR} ARGS --backend nccl)
  endif()
endif()

# mock_mpu: model code unit-tested over FakeCommunicator and MockMpu, no MPI launch.
if(TARGET mock_mpu_test)
  add_test(NAME mock_mpu_test COMMAND mock_mpu_test)
  set_tests_properties(mock_mpu_test PROPERTIES TIMEOUT 60 LABELS "unit;samples")
endif()
