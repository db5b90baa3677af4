// The CUDA implementations of the crm_kernels_C schemas (csrc/ops.cpp): tensors in, launchers.h
// out. Built only when torch has CUDA; it needs no c10/cuda header (the stream comes through
// c10::Stream::native_handle), so CI can compile-check it against a CPU build of torch.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include <tuple>

#include "crm_ops.h"
#include "launchers.h"

namespace crm::cuda {
namespace {

// at::Half / at::BFloat16 have the layout of CUDA's own types; the kernels use the latter.
template <typename scalar_t>
struct Native {
  using type = scalar_t;
};
template <>
struct Native<at::Half> {
  using type = __half;
};
template <>
struct Native<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename scalar_t>
auto native(const at::Tensor& t) {
  return reinterpret_cast<const typename Native<scalar_t>::type*>(t.const_data_ptr<scalar_t>());
}
template <typename scalar_t>
auto native_mut(at::Tensor& t) {
  return reinterpret_cast<typename Native<scalar_t>::type*>(t.mutable_data_ptr<scalar_t>());
}

cudaStream_t current_stream(const at::Tensor& t) {
  return static_cast<cudaStream_t>(
      c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(t.device()).native_handle());
}

void check(cudaError_t status) {
  TORCH_CHECK(status == cudaSuccess, "crm_kernels CUDA kernel failed: ", cudaGetErrorString(status));
}

at::Tensor workspace(const at::Tensor& like, int64_t bytes) {
  return at::empty({bytes}, like.options().dtype(at::kByte));
}

at::Tensor log_survival_forward_op(const at::Tensor& logits_in, const at::Tensor& cu_steps_in) {
  const c10::DeviceGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous(), cu_steps = cu_steps_in.contiguous();
  at::Tensor log_survival = at::empty(logits.sizes(), logits.options().dtype(accumulate_type(logits)));
  at::Tensor scratch = workspace(logits, log_survival_workspace_bytes(logits.numel(), logits.scalar_type() == at::kDouble));
  CRM_DISPATCH_LOGITS_AND_OFFSETS(logits, cu_steps, "log_survival_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    check(log_survival_forward(native<scalar_t>(logits), cu_steps.const_data_ptr<index_t>(),
                                          num_trajectories(cu_steps), logits.numel(),
                                          log_survival.mutable_data_ptr<acc_t>(), scratch.mutable_data_ptr(),
                                          current_stream(logits)));
  });
  return log_survival;
}

at::Tensor log_survival_backward_op(const at::Tensor& grad_in, const at::Tensor& logits_in, const at::Tensor& cu_steps_in) {
  const c10::DeviceGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous(), cu_steps = cu_steps_in.contiguous();
  const at::Tensor grad_log_survival = grad_in.to(accumulate_type(logits)).contiguous();
  at::Tensor grad_logits = at::empty_like(logits);
  at::Tensor scratch = workspace(logits, log_survival_workspace_bytes(logits.numel(), logits.scalar_type() == at::kDouble));
  CRM_DISPATCH_LOGITS_AND_OFFSETS(logits, cu_steps, "log_survival_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    check(log_survival_backward(grad_log_survival.const_data_ptr<acc_t>(), native<scalar_t>(logits),
                                           cu_steps.const_data_ptr<index_t>(), num_trajectories(cu_steps),
                                           logits.numel(), native_mut<scalar_t>(grad_logits),
                                           scratch.mutable_data_ptr(), current_stream(logits)));
  });
  return grad_logits;
}

std::tuple<at::Tensor, at::Tensor> crm_loss_forward_op(const at::Tensor& logits, const at::Tensor& cu_steps,
                                                       const at::Tensor& outcome,
                                                       const std::optional<at::Tensor>& first_error, double w_survive,
                                                       double w_wrong, double w_first_error,
    std::optional<double> normalizer) {
  const c10::DeviceGuard guard(logits.device());
  const LossInputs in(logits, cu_steps, outcome, first_error);
  // Zeroed: empty trajectories have no step that would write their (zero) loss.
  at::Tensor losses = at::zeros({in.batch}, in.accumulate_options());
  at::Tensor log_survival_total = at::zeros({in.batch}, in.accumulate_options());
  at::Tensor scratch =
      workspace(in.logits, crm_loss_workspace_bytes(in.logits.numel(), in.logits.scalar_type() == at::kDouble));
  CRM_DISPATCH_LOGITS_AND_OFFSETS(in.logits, in.cu_steps, "crm_loss_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    check(crm_loss_forward(native<scalar_t>(in.logits), in.cu_steps.const_data_ptr<index_t>(), in.batch,
                           in.logits.numel(), in.labels.correct_ptr(), in.labels.first_error_ptr(),
                           LossWeights{w_survive, w_wrong, w_first_error}, losses.mutable_data_ptr<acc_t>(),
                           log_survival_total.mutable_data_ptr<acc_t>(), scratch.mutable_data_ptr(),
                           current_stream(in.logits)));
  });
  return {reduce_losses(losses, normalizer), log_survival_total};
}

at::Tensor crm_loss_backward_op(const at::Tensor& grad_losses, const at::Tensor& logits,
                                const at::Tensor& cu_steps, const at::Tensor& outcome,
                                const std::optional<at::Tensor>& first_error, const at::Tensor& log_survival_total,
                                double w_survive, double w_wrong, double w_first_error) {
  const c10::DeviceGuard guard(logits.device());
  const LossBackwardInputs in(grad_losses, logits, cu_steps, outcome, first_error, log_survival_total);
  at::Tensor grad_logits = at::empty_like(in.logits);
  CRM_DISPATCH_LOGITS_AND_OFFSETS(in.logits, in.cu_steps, "crm_loss_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    check(crm_loss_backward(in.grad_losses.const_data_ptr<acc_t>(), native<scalar_t>(in.logits),
                            in.cu_steps.const_data_ptr<index_t>(), in.batch, in.logits.numel(),
                            in.labels.correct_ptr(), in.labels.first_error_ptr(),
                            in.log_survival_total.const_data_ptr<acc_t>(), LossWeights{w_survive, w_wrong, w_first_error},
                            native_mut<scalar_t>(grad_logits), current_stream(in.logits)));
  });
  return grad_logits;
}

}  // namespace

TORCH_LIBRARY_IMPL(crm_kernels_C, CUDA, m) {
  m.impl("log_survival_forward", &log_survival_forward_op);
  m.impl("log_survival_backward", &log_survival_backward_op);
  m.impl("crm_loss_forward", &crm_loss_forward_op);
  m.impl("crm_loss_backward", &crm_loss_backward_op);
}

}  // namespace crm::cuda
