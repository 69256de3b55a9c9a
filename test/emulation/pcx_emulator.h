// Queries of the host emulator of the CUDA runtime and NCCL (libpcx_emulator.so).
//
// The emulator defines the CUDA runtime and NCCL functions pcx uses; a program built
// against the real CUDA 13 / NCCL 2.28 headers and libraries runs on it unchanged when it
// is preloaded (LD_PRELOAD=libpcx_emulator.so). These extra functions let a test see what
// is alive. A preloaded program finds them with dlsym(RTLD_DEFAULT, "pcxemu_...") and is
// on real CUDA where they are absent.
//
// Environment (read once, at the first call, except PCX_EMU_FAULT):
//   PCX_EMU_DEVICES        the machine's devices (default 8; 0: cudaGetDeviceCount fails
//                          with cudaErrorNoDevice); CUDA_VISIBLE_DEVICES selects among them
//                          as CUDA does, and a device's PCI bus id names the machine's device
//   PCX_EMU_DEVICE_MEMORY  bytes of each device (default 80G; K, M, G suffixes)
//   PCX_EMU_COMM_MEMORY    bytes every live communicator charges to its device (default
//                          64M): a model of NCCL's buffers, not a measurement
//   PCX_EMU_LAUNCH_DELAY_US  how long a non-blocking call stays ncclInProgress before
//                          it completes in the background (default 2000)
//   PCX_EMU_SPLIT_IN_PROGRESS  1: a non-blocking ncclCommSplit or ncclCommShrink works
//                          as an init does: it returns ncclInProgress (NCCL 2.28.9:
//                          ncclSuccess) and writes *newcomm at once (2.28.9: when the
//                          split ends), a child that reports ncclInProgress until then;
//                          NCCL's user guide allows both (default 0)
//   NCCL_HOSTID            the host this process is on, as NCCL reads it (unset: host name
//                          and boot id); two ranks of one communicator on one host and one
//                          device fail to initialize with ncclInvalidUsage, as in NCCL
//   PCX_EMU_FAULT          comma-separated faults, read when a communicator is created
//                          (init, split, shrink) and kept by it:
//                            init_hang[@R]   init (or the child side of a split) of rank R
//                                            never completes
//                            split_hang[@R]  ncclCommSplit / ncclCommShrink called by
//                                            parent rank R never completes
//                            op_hang:K[@R]   the K-th operation (1-based; a group counts
//                                            once) of rank R never completes
//                            op_error:K[@R]  the K-th operation of rank R fails with an
//                                            asynchronous error (ncclRemoteError)
//                          Without @R the fault applies to every rank of this process.
#pragma once

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Communicators of this process that are initialized or initializing and not yet
/// destroyed or aborted.
int pcxemu_live_communicators(void);
/// Device allocations (cudaMalloc) of this process not yet freed.
int pcxemu_live_allocations(void);
/// Bytes of those allocations.
size_t pcxemu_allocated_bytes(void);
/// Streams created and not yet destroyed.
int pcxemu_live_streams(void);

#ifdef __cplusplus
}
#endif
