// Autograd of the public ops' private torch.library ops, torch.ops.crm_kernels._log_survival and
// _crm_loss, in C++. The schemas and every backend's implementation are defined in Python
// (crm_kernels/ops/, one file per op); this file only adds their Autograd kernels, so that a
// training step pays no Python between the op call and the kernel beyond the implementation
// itself: torch's Python custom_op autograd cost about 30 us per forward+backward on a small
// batch (issue 15), mostly in its argument plumbing.
//
// The forward redispatches below autograd to whichever implementation the tensors' device has
// (or to the op's fake under tracing), and saves what the backward op needs. The backward calls
// the private backward op, which is not itself differentiable: double backward is refused.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The private ops, looked up by name when first used: Python defines them when crm_kernels is
// imported, before this library is loaded.
template <typename Signature>
c10::TypedOperatorHandle<Signature> private_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

void refuse_double_backward(const char* op) {
  TORCH_CHECK(!at::GradMode::is_enabled(), op,
              ": double backward is not supported (backward was called with create_graph=True); the gradient of "
              "this op's gradient is not implemented");
}

// ---- log_survival -------------------------------------------------------------------------------

using LogSurvivalSignature = at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view, bool);
using LogSurvivalBackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                c10::string_view);

struct LogSurvival : torch::autograd::Function<LogSurvival> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& cu_steps,
                            c10::string_view backend, bool validate) {
    static const auto op = private_op<LogSurvivalSignature>("crm_kernels::_log_survival");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({logits, cu_steps});
    ctx->saved_data["backend"] = std::string(backend);
    return op.call(logits, cu_steps, backend, validate);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto op = private_op<LogSurvivalBackwardSignature>("crm_kernels::_log_survival_backward");
    refuse_double_backward("log_survival");
    const auto saved = ctx->get_saved_variables();
    const std::string backend = ctx->saved_data["backend"].toStringRef();
    return {op.call(grad_outputs[0], saved[0], saved[1], backend), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor log_survival_autograd(const at::Tensor& logits, const at::Tensor& cu_steps, c10::string_view backend,
                                 bool validate) {
  return LogSurvival::apply(logits, cu_steps, backend, validate);
}

// ---- crm_loss ---------------------------------------------------------------------------------

using CrmLossSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                            const std::optional<at::Tensor>&, double, double, double,
                                                            std::optional<double>, c10::string_view, bool);
using CrmLossBackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                            const std::optional<at::Tensor>&, const at::Tensor&, double, double,
                                            double, c10::string_view);

struct CrmLoss : torch::autograd::Function<CrmLoss> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& cu_steps,
                               const at::Tensor& outcome, const std::optional<at::Tensor>& first_error,
                               double w_survive, double w_wrong, double w_first_error, std::optional<double> normalizer,
                               c10::string_view backend, bool validate) {
    static const auto op = private_op<CrmLossSignature>("crm_kernels::_crm_loss");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [loss, log_survival_total] = op.call(logits, cu_steps, outcome, first_error, w_survive, w_wrong,
                                              w_first_error, normalizer, backend, validate);
    ctx->save_for_backward({logits, cu_steps, outcome, first_error.value_or(at::Tensor()), log_survival_total});
    ctx->saved_data["weights"] = std::vector<double>{w_survive, w_wrong, w_first_error};
    ctx->saved_data["normalizer"] = normalizer;  // None: the loss is the [B] vector; else sum / normalizer
    ctx->saved_data["backend"] = std::string(backend);
    // log S(T) is returned for the backward pass, not as a differentiable result.
    ctx->mark_non_differentiable({log_survival_total});
    return {loss, log_survival_total};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto op = private_op<CrmLossBackwardSignature>("crm_kernels::_crm_loss_backward");
    refuse_double_backward("crm_loss");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& log_survival_total = saved[4];
    // A reduced loss is (sum_i l_i) / normalizer: each trajectory's upstream gradient is grad / normalizer.
    at::Tensor grad_losses = grad_outputs[0];
    const auto normalizer = ctx->saved_data["normalizer"];
    if (!normalizer.isNone()) grad_losses = grad_losses.div(normalizer.toDouble()).expand(log_survival_total.sizes());
    const auto weights = ctx->saved_data["weights"].toDoubleVector();
    const std::string backend = ctx->saved_data["backend"].toStringRef();
    const std::optional<at::Tensor> first_error =
        saved[3].defined() ? std::optional<at::Tensor>(saved[3]) : std::nullopt;
    at::Tensor grad_logits = op.call(grad_losses, saved[0], saved[1], saved[2], first_error, log_survival_total,
                                     weights[0], weights[1], weights[2], backend);
    variable_list grads(10);
    grads[0] = grad_logits;
    return grads;
  }
};

std::tuple<at::Tensor, at::Tensor> crm_loss_autograd(const at::Tensor& logits, const at::Tensor& cu_steps,
                                                     const at::Tensor& outcome,
                                                     const std::optional<at::Tensor>& first_error, double w_survive,
                                                     double w_wrong, double w_first_error,
                                                     std::optional<double> normalizer, c10::string_view backend,
                                                     bool validate) {
  auto outputs = CrmLoss::apply(logits, cu_steps, outcome, first_error, w_survive, w_wrong, w_first_error, normalizer,
                                backend, validate);
  return {outputs[0], outputs[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(crm_kernels, Autograd, m) {
  m.impl("_log_survival", TORCH_FN(log_survival_autograd));
  m.impl("_crm_loss", TORCH_FN(crm_loss_autograd));
}
