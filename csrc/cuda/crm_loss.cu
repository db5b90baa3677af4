// crm_loss on CUDA: the per-trajectory loss l_i of SPEC 3 and its gradient.
//
// Forward: two segmented sums scanned together, sum_t softplus(x_t) and
// L_z = sum_{t<z} softplus(x_t) + softplus(-x_z); the thread holding a trajectory's last step
// applies the loss epilogue. Backward: elementwise once each step knows its trajectory.
#include "launchers.h"
#include "segmented.cuh"

namespace crm::cuda {
namespace {

__device__ __forceinline__ int64_t first_error_of(const int64_t* first_error, int64_t seg) {
  return first_error ? first_error[seg] : -1;
}

template <bool kFinal, typename scalar_t, typename index_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM)
    crm_loss_forward_kernel(const scalar_t* logits, const index_t* cu_steps, int64_t num_trajectories,
                            int64_t num_steps, const bool* correct, const int64_t* first_error, LossWeights weights,
                            acc_t* losses, acc_t* log_survival_total, Running2<acc_t>* summaries,
                            const Running2<acc_t>* carries) {
  ThreadSteps<false, index_t> steps(cu_steps, num_trajectories, num_steps, blockIdx.x);
  Running2<acc_t> items[kItems];
  scan_chunk<kFinal>(steps, [&](int i) {
    const acc_t x = widen<acc_t>(logits[steps.step(i)]);
    const acc_t tail = softplus_tail(x);
    const acc_t softplus_x = Math<acc_t>::relu(x) + tail;
    const int64_t index = steps.step(i) - steps.seg_begin(), z = first_error_of(first_error, steps.seg);
    return Running2<acc_t>{softplus_x, first_error_term(x, softplus_x, tail, index, z), steps.starts_segment(i)};
  }, items, summaries, carries);
  if constexpr (kFinal) {
    // scan_chunk left `steps` at the thread's last valid step; the epilogue walks again from the first.
    ThreadSteps<false, index_t> epilogue(cu_steps, num_trajectories, num_steps, blockIdx.x);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      if (!epilogue.valid(i)) continue;
      epilogue.advance(i);
      if (epilogue.step(i) != epilogue.seg_end() - 1) continue;  // not the trajectory's last step
      const int64_t seg = epilogue.seg;
      losses[seg] = trajectory_loss(items[i].first, items[i].second, correct[seg],
                                    first_error_of(first_error, seg) >= 0, weights);
      log_survival_total[seg] = -items[i].first;
    }
  }
}

template <typename scalar_t, typename index_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM)
    crm_loss_backward_kernel(const acc_t* grad_losses, const scalar_t* logits, const index_t* cu_steps,
                             int64_t num_trajectories, int64_t num_steps, const bool* correct,
                             const int64_t* first_error, const acc_t* log_survival_total, LossWeights weights,
                             scalar_t* grad_logits) {
  ThreadSteps<false, index_t> steps(cu_steps, num_trajectories, num_steps, blockIdx.x);
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    if (!steps.valid(i)) continue;
    steps.advance(i);
    const int64_t seg = steps.seg, z = first_error_of(first_error, seg), index = steps.step(i) - steps.seg_begin();
    const acc_t upstream = grad_losses[seg];
    const acc_t coef = upstream * trajectory_grad_coef(log_survival_total[seg], correct[seg], weights);
    const acc_t first_error_grad = z >= 0 ? upstream * acc_t(weights.first_error) : acc_t(0);
    const acc_t x = widen<acc_t>(logits[steps.step(i)]);
    grad_logits[steps.step(i)] = narrow<scalar_t>(step_grad(x, sigmoid(x), coef, first_error_grad, index, z));
  }
}

}  // namespace

int64_t crm_loss_workspace_bytes(int64_t num_steps, bool float64) {
  return float64 ? scan_workspace_bytes<Running2<double>>(num_steps) : scan_workspace_bytes<Running2<float>>(num_steps);
}

template <typename scalar_t, typename index_t, typename acc_t>
cudaError_t crm_loss_forward(const scalar_t* logits, const index_t* cu_steps, int64_t num_trajectories,
                             int64_t num_steps, const bool* correct, const int64_t* first_error, LossWeights weights,
                             acc_t* losses, acc_t* log_survival_total, void* workspace, cudaStream_t stream) {
  if (num_steps == 0 || num_trajectories == 0) return cudaSuccess;
  return launch_scan<Running2<acc_t>>(crm_loss_forward_kernel<false, scalar_t, index_t, acc_t>,
                                      crm_loss_forward_kernel<true, scalar_t, index_t, acc_t>, num_steps, workspace,
                                      stream, logits, cu_steps, num_trajectories, num_steps, correct, first_error,
                                      weights, losses, log_survival_total);
}

template <typename scalar_t, typename index_t, typename acc_t>
cudaError_t crm_loss_backward(const acc_t* grad_losses, const scalar_t* logits, const index_t* cu_steps,
                              int64_t num_trajectories, int64_t num_steps, const bool* correct,
                              const int64_t* first_error, const acc_t* log_survival_total, LossWeights weights,
                              scalar_t* grad_logits, cudaStream_t stream) {
  if (num_steps == 0 || num_trajectories == 0) return cudaSuccess;
  const int64_t num_chunks = (num_steps + kChunk - 1) / kChunk;
  crm_loss_backward_kernel<scalar_t, index_t, acc_t><<<num_chunks, kThreads, 0, stream>>>(
      grad_losses, logits, cu_steps, num_trajectories, num_steps, correct, first_error, log_survival_total, weights,
      grad_logits);
  return cudaGetLastError();
}

#define CRM_INSTANTIATE(scalar_t, index_t, acc_t)                                                                  \
  template cudaError_t crm_loss_forward<scalar_t, index_t, acc_t>(const scalar_t*, const index_t*, int64_t,        \
                                                                   int64_t, const bool*, const int64_t*,           \
                                                                   LossWeights, acc_t*, acc_t*, void*,             \
                                                                   cudaStream_t);                                  \
  template cudaError_t crm_loss_backward<scalar_t, index_t, acc_t>(const acc_t*, const scalar_t*, const index_t*,  \
                                                                    int64_t, int64_t, const bool*, const int64_t*, \
                                                                    const acc_t*, LossWeights, scalar_t*,          \
                                                                    cudaStream_t);
CRM_CUDA_FOR_EACH_TYPE(CRM_INSTANTIATE)

}  // namespace crm::cuda
