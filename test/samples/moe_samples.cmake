# Tests of samples/moe_dispatch, samples/two_contexts and samples/mock_mpu. Included from
# test/samples/CMakeLists.txt, so PcxMpiTest's functions and PCX_BASH are available.

# moe_dispatch: each rank count runs the sample with --dump, and moe_dispatch_check
# recomputes every token's output and every expert's averaged gradient from the gate and
# the experts alone (test/samples/check_moe_dispatch.sh).
if(TARGET moe_dispatch)
  add_executable(moe_dispatch_check moe_dispatch_check.cpp)
  target_link_libraries(moe_dispatch_check PRIVATE fmt::fmt pcx_warnings)

  # moe_dispatch.<name>: moe_dispatch on <ranks> ranks with <flags...>, checked. TAMPER:
  # a changed value of the dump must fail the check. RANK_ENV reaches the ranks only.
  function(_pcx_moe_dispatch_test name ranks)
    cmake_parse_arguments(PARSE_ARGV 2 arg "TAMPER" "TIMEOUT" "LABELS;RANK_ENV;ARGS")
    pcx_mpiexec_env_flags(env_flags ${arg_RANK_ENV})
    set(tamper)
    if(arg_TAMPER)
      set(tamper --tamper)
    endif()
    add_test(NAME moe_dispatch.${name}
             COMMAND ${PCX_BASH} ${CMAKE_CURRENT_SOURCE_DIR}/check_moe_dispatch.sh ${tamper}
                     $<TARGET_FILE:moe_dispatch_check> ${ranks} ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${ranks}
                     ${PCX_MPIEXEC_EXTRA_FLAGS} ${env_flags} ${MPIEXEC_PREFLAGS} $<TARGET_FILE:moe_dispatch>
                     ${MPIEXEC_POSTFLAGS} -- ${arg_ARGS})
    set_tests_properties(moe_dispatch.${name} PROPERTIES
      TIMEOUT ${arg_TIMEOUT}
      PROCESSORS ${ranks}
      LABELS "mpi;samples;${arg_LABELS}"
      ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_rmaps_base_oversubscribe=1")
  endfunction()

  # Every rank count with its own layout: experts per rank, k, and the expert order vary.
  _pcx_moe_dispatch_test(ranks1 1 TIMEOUT 60)
  _pcx_moe_dispatch_test(ranks2 2 TIMEOUT 60 ARGS --experts-per-rank 3 --top-k 3 --tokens 50)
  _pcx_moe_dispatch_test(ranks4 4 TIMEOUT 60 ARGS --ep 2 --expert-order data-first --hidden 5)
  _pcx_moe_dispatch_test(ranks8 8 TIMEOUT 60 ARGS --ep 4 --experts-per-rank 2 --top-k 4 --tokens 100)
  _pcx_moe_dispatch_test(check_catches_changed_values 2 TAMPER TIMEOUT 60 ARGS --ep 2 --steps 1)

  # Input that must fail on every rank with one error line, the same status everywhere,
  # and no hang: on every rank, on some ranks only, or flags that differ between ranks.
  pcx_sample_failure_test(moe_dispatch.error.bad_flag moe_dispatch "--bogus" 4 --bogus)
  pcx_sample_failure_test(moe_dispatch.error.top_k_zero moe_dispatch "--top-k" 4 --top-k 0)
  pcx_sample_failure_test(moe_dispatch.error.top_k_above_experts moe_dispatch
                          "--top-k 9 is more than the 8 experts of the layer" 4 --top-k 9)
  pcx_sample_failure_test(moe_dispatch.error.ep_does_not_divide moe_dispatch
                          "expert parallel size 3 does not divide data parallel size 4" 4 --ep 3)
  pcx_sample_failure_test(moe_dispatch.error.tokens_zero_on_some_ranks moe_dispatch
                          "^moe_dispatch: error: rank 2: --tokens" 2 : 2 --tokens 0)
  pcx_sample_failure_test(moe_dispatch.error.tokens_differ moe_dispatch
                          "ranks disagree on the command line: --tokens ranges from 3 to 64" 2 : 2 --tokens 3)
  pcx_sample_failure_test(moe_dispatch.error.expert_order_differs moe_dispatch "the --expert-order differ"
                          2 --expert-order data-first : 2)
  pcx_sample_failure_test(moe_dispatch.error.help_on_one_rank moe_dispatch
                          "whether --help is given ranges from 0 to 1" 1 --help : 3)

  if(TARGET pcx::nccl)
    # Real GPUs, one rank; skipped (exit 77) where there is no CUDA device.
    _pcx_moe_dispatch_test(nccl.ranks1 1 TIMEOUT 120 LABELS gpu nccl ARGS --backend nccl)
    set_tests_properties(moe_dispatch.nccl.ranks1 PROPERTIES SKIP_RETURN_CODE 77)
    _pcx_moe_dispatch_test(nccl.emulated.ranks4 4 TIMEOUT 120 LABELS emulator nccl RANK_ENV ${PCX_ON_EMULATOR}
                           ARGS --backend nccl --ep 4 --top-k 3)
    _pcx_moe_dispatch_test(nccl.emulated.ranks8 8 TIMEOUT 120 LABELS emulator nccl RANK_ENV ${PCX_ON_EMULATOR}
                           ARGS --backend nccl --ep 4 --expert-order data-first)
  endif()
endif()

# two_contexts: a training and an evaluation context, alternately, on 4 and 8 ranks.
if(TARGET two_contexts)
  pcx_add_mpi_executable_test(two_contexts TARGET two_contexts RANKS 4 8 TIMEOUT 60 LABELS samples)
  pcx_sample_failure_test(two_contexts.error.bad_flag two_contexts "unknown flag '--bogus'" 4 --bogus)
  pcx_sample_failure_test(two_contexts.error.steps_zero_on_some_ranks two_contexts
                          "^two_contexts: error: rank 2: --steps: '0' is not a whole number" 2 : 2 --steps 0)
  pcx_sample_failure_test(two_contexts.error.steps_differ two_contexts
                          "ranks disagree on the command line: --steps ranges from 4 to 6" 2 --steps 4 : 2)
  pcx_sample_failure_test(two_contexts.error.help_on_one_rank two_contexts
                          "whether --help is given ranges from 0 to 1" 3 : 1 -h)
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

# elastic: rank 3 of 8 stops at step 2; the survivors time out, rebuild without its data
# parallel replica and go on, checking every number (test/samples/check_elastic.sh). The
# KILLED cases kill rank 3 instead: mpiexec then needs recovery enabled
# (orte_enable_recovery, mpiexec --enable-recovery) not to end the job with it, and each
# rank's own exit status is checked (rank_status.sh), since mpiexec's is then always 0.
if(TARGET elastic)
  function(_pcx_elastic_test name ranks)
    cmake_parse_arguments(PARSE_ARGV 2 arg "KILLED" "" "LABELS;RANK_ENV;ARGS")
    set(check ${PCX_BASH} ${CMAKE_CURRENT_SOURCE_DIR}/check_elastic.sh)
    set(program $<TARGET_FILE:elastic>)
    set(environment OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1)
    if(arg_KILLED)
      list(APPEND check --killed 3 ${ranks})
      # The rank's variables reach elastic only, not the shell around it: a sanitized
      # emulator cannot be preloaded into bash.
      set(program ${PCX_BASH} ${CMAKE_CURRENT_SOURCE_DIR}/rank_status.sh env ${arg_RANK_ENV} ${program})
      list(APPEND arg_ARGS --fail-rank 3 --fail-by kill)
      list(APPEND environment OMPI_MCA_orte_enable_recovery=1)
    else()
      pcx_mpiexec_env_flags(env_flags ${arg_RANK_ENV})
    endif()
    add_test(NAME elastic.${name}
             COMMAND ${check} ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${ranks} ${PCX_MPIEXEC_EXTRA_FLAGS}
                     ${env_flags} ${MPIEXEC_PREFLAGS} ${program} ${MPIEXEC_POSTFLAGS} ${arg_ARGS})
    set_tests_properties(elastic.${name} PROPERTIES
      TIMEOUT 120
      PROCESSORS ${ranks}
      LABELS "mpi;samples;${arg_LABELS}"
      SKIP_RETURN_CODE 77
      ENVIRONMENT "${environment}")
  endfunction()
  _pcx_elastic_test(mpi.ranks8 8)
  _pcx_elastic_test(mpi.first_rank_at_first_step.ranks4 4 ARGS --fail-rank 0 --fail-step 1 --steps 2 --tp 1 --ep 1)
  _pcx_elastic_test(mpi.killed.ranks8 8 KILLED)
  if(TARGET pcx::nccl)
    _pcx_elastic_test(nccl.emulated.ranks8 8 LABELS emulator nccl RANK_ENV ${PCX_ON_EMULATOR} ARGS --backend nccl)
    _pcx_elastic_test(nccl.emulated.killed.ranks8 8 KILLED LABELS emulator nccl RANK_ENV ${PCX_ON_EMULATOR}
                      ARGS --backend nccl)
  endif()
  pcx_sample_failure_test(elastic.error.fail_rank_outside elastic "--fail-rank 9 is not a rank of the 4 ranks" 4
                          --fail-rank 9)
endif()
