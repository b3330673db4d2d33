// EMBER_HOST_DEVICE: marks the inline functions of backends/semantics/ as callable from host
// code (the CPU back end) and, under nvcc, from device code (the CUDA kernels).
#pragma once

#if defined(__CUDACC__)
#define EMBER_HOST_DEVICE __host__ __device__
#else
#define EMBER_HOST_DEVICE
#endif
