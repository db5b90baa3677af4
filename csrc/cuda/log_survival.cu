// log_survival on CUDA: log S(t) = -sum_{k<=t} softplus(x_k) per trajectory (SPEC 1), and the
// backward d/dx_t = -h_t * sum_{k>=t} g_k, a reverse segmented scan (SPEC 3), read back to front.
#include "launchers.h"
#include "segmented.cuh"

namespace crm::cuda {
namespace {

template <bool kFinal, typename scalar_t, typename index_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM)
    log_survival_forward_kernel(const scalar_t* logits, const index_t* cu_steps, int64_t num_trajectories,
                                int64_t num_steps, acc_t* log_survival, Running<acc_t>* summaries,
                                const Running<acc_t>* carries) {
  ThreadSteps<false, index_t> steps(cu_steps, num_trajectories, num_steps, blockIdx.x);
  Running<acc_t> items[kItems];
  scan_chunk<kFinal>(steps, [&](int i) {
    return Running<acc_t>{softplus(widen<acc_t>(logits[steps.step(i)])), steps.starts_segment(i)};
  }, items, summaries, carries);
  if constexpr (kFinal) {
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      if (steps.valid(i)) log_survival[steps.step(i)] = -items[i].value;
    }
  }
}

template <bool kFinal, typename scalar_t, typename index_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM)
    log_survival_backward_kernel(const acc_t* grad_log_survival, const scalar_t* logits, const index_t* cu_steps,
                                 int64_t num_trajectories, int64_t num_steps, scalar_t* grad_logits,
                                 Running<acc_t>* summaries, const Running<acc_t>* carries) {
  ThreadSteps<true, index_t> steps(cu_steps, num_trajectories, num_steps, blockIdx.x);
  Running<acc_t> items[kItems];
  scan_chunk<kFinal>(steps, [&](int i) {
    return Running<acc_t>{grad_log_survival[steps.step(i)], steps.starts_segment(i)};
  }, items, summaries, carries);
  if constexpr (kFinal) {
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      if (!steps.valid(i)) continue;
      const acc_t x = widen<acc_t>(logits[steps.step(i)]);
      grad_logits[steps.step(i)] = narrow<scalar_t>(-sigmoid(x) * items[i].value);
    }
  }
}

}  // namespace

int64_t log_survival_workspace_bytes(int64_t num_steps, bool float64) {
  return float64 ? scan_workspace_bytes<Running<double>>(num_steps) : scan_workspace_bytes<Running<float>>(num_steps);
}

template <typename scalar_t, typename index_t, typename acc_t>
cudaError_t log_survival_forward(const scalar_t* logits, const index_t* cu_steps, int64_t num_trajectories,
                                 int64_t num_steps, acc_t* log_survival, void* workspace, cudaStream_t stream) {
  if (num_steps == 0 || num_trajectories == 0) return cudaSuccess;
  return launch_scan<Running<acc_t>>(log_survival_forward_kernel<false, scalar_t, index_t, acc_t>,
                                     log_survival_forward_kernel<true, scalar_t, index_t, acc_t>, num_steps,
                                     workspace, stream, logits, cu_steps, num_trajectories, num_steps, log_survival);
}

template <typename scalar_t, typename index_t, typename acc_t>
cudaError_t log_survival_backward(const acc_t* grad_log_survival, const scalar_t* logits, const index_t* cu_steps,
                                  int64_t num_trajectories, int64_t num_steps, scalar_t* grad_logits, void* workspace,
                                  cudaStream_t stream) {
  if (num_steps == 0 || num_trajectories == 0) return cudaSuccess;
  return launch_scan<Running<acc_t>>(log_survival_backward_kernel<false, scalar_t, index_t, acc_t>,
                                     log_survival_backward_kernel<true, scalar_t, index_t, acc_t>, num_steps,
                                     workspace, stream, grad_log_survival, logits, cu_steps, num_trajectories,
                                     num_steps, grad_logits);
}

#define CRM_INSTANTIATE(scalar_t, index_t, acc_t)                                                                   \
  template cudaError_t log_survival_forward<scalar_t, index_t, acc_t>(const scalar_t*, const index_t*, int64_t,     \
                                                                       int64_t, acc_t*, void*, cudaStream_t);       \
  template cudaError_t log_survival_backward<scalar_t, index_t, acc_t>(const acc_t*, const scalar_t*, const index_t*, \
                                                                        int64_t, int64_t, scalar_t*, void*,         \
                                                                        cudaStream_t);
CRM_CUDA_FOR_EACH_TYPE(CRM_INSTANTIATE)

}  // namespace crm::cuda
