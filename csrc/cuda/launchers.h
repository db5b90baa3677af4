// Host entry points of the CUDA kernels: raw pointers and a stream, no torch types, so the .cu
// files compile with nothing but the CUDA toolkit (CI compiles them without a GPU) and
// ops_cuda.cpp does the torch side. Each returns the CUDA status of its launches.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "crm_math.h"

// The (scalar_t, index_t, acc_t) combinations the launchers are built for; each .cu file passes
// its own instantiation macro.
#define CRM_CUDA_FOR_EACH_TYPE(INSTANTIATE) \
  INSTANTIATE(float, int32_t, float)        \
  INSTANTIATE(float, int64_t, float)        \
  INSTANTIATE(double, int32_t, double)      \
  INSTANTIATE(double, int64_t, double)      \
  INSTANTIATE(__half, int32_t, float)       \
  INSTANTIATE(__half, int64_t, float)       \
  INSTANTIATE(__nv_bfloat16, int32_t, float) \
  INSTANTIATE(__nv_bfloat16, int64_t, float)

namespace crm::cuda {

// Scratch bytes the scan launchers below need for num_steps steps (one allocation per call).
int64_t log_survival_workspace_bytes(int64_t num_steps, bool float64);
int64_t crm_loss_workspace_bytes(int64_t num_steps, bool float64);

// acc_t is float, or double for double logits.
template <typename scalar_t, typename index_t, typename acc_t>
cudaError_t log_survival_forward(const scalar_t* logits, const index_t* cu_steps, int64_t num_trajectories,
                                 int64_t num_steps, acc_t* log_survival, void* workspace, cudaStream_t stream);

template <typename scalar_t, typename index_t, typename acc_t>
cudaError_t log_survival_backward(const acc_t* grad_log_survival, const scalar_t* logits, const index_t* cu_steps,
                                  int64_t num_trajectories, int64_t num_steps, scalar_t* grad_logits, void* workspace,
                                  cudaStream_t stream);

// first_error may be nullptr (unknown everywhere). losses and log_survival_total must be zeroed
// by the caller: empty trajectories have no step to write them.
template <typename scalar_t, typename index_t, typename acc_t>
cudaError_t crm_loss_forward(const scalar_t* logits, const index_t* cu_steps, int64_t num_trajectories,
                             int64_t num_steps, const bool* correct, const int64_t* first_error, LossWeights weights,
                             acc_t* losses, acc_t* log_survival_total, void* workspace, cudaStream_t stream);

template <typename scalar_t, typename index_t, typename acc_t>
cudaError_t crm_loss_backward(const acc_t* grad_losses, const scalar_t* logits, const index_t* cu_steps,
                              int64_t num_trajectories, int64_t num_steps, const bool* correct,
                              const int64_t* first_error, const acc_t* log_survival_total, LossWeights weights,
                              scalar_t* grad_logits, cudaStream_t stream);

}  // namespace crm::cuda
