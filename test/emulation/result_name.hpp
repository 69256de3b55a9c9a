#pragma once
// The name of an ncclResult_t, for the emulator's tests and the rules checker.

#include <nccl.h>

#include <string>

namespace emutest {

inline std::string result_name(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "ncclSuccess";
    case ncclUnhandledCudaError: return "ncclUnhandledCudaError";
    case ncclSystemError: return "ncclSystemError";
    case ncclInternalError: return "ncclInternalError";
    case ncclInvalidArgument: return "ncclInvalidArgument";
    case ncclInvalidUsage: return "ncclInvalidUsage";
    case ncclRemoteError: return "ncclRemoteError";
    case ncclInProgress: return "ncclInProgress";
    default: return "ncclResult_t(" + std::to_string(static_cast<int>(r)) + ")";
  }
}

}  // namespace emutest
