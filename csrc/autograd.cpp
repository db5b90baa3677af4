// Autograd of the public ops' private torch.library ops, torch.ops.crm_kernels._log_survival,
// _crm_loss, _prm_loss, _orm_loss and _pqm_loss, in C++. The schemas and every backend's implementation are defined in Python
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

#include <algorithm>
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

// The upstream gradient of each unit's loss (step or trajectory): the losses' own gradient, or for
// a reduced loss, (sum of the units' losses) / normalizer, the scalar's divided by the normalizer.
// units is symbolic under tracing (torch.compile with dynamic shapes).
at::Tensor per_unit_upstream(const at::Tensor& grad_loss, const c10::IValue& normalizer, const c10::SymInt& units) {
  if (normalizer.isNone()) return grad_loss;
  return grad_loss.div(normalizer.toDouble()).expand_symint({units});
}

// The number of trajectories of cu_steps, B = len(cu_steps) - 1.
c10::SymInt trajectories(const at::Tensor& cu_steps) { return cu_steps.sym_size(0) - 1; }

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
    const at::Tensor grad_losses =
        per_unit_upstream(grad_outputs[0], ctx->saved_data["normalizer"], log_survival_total.sym_size(0));
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

// ---- the baseline objectives: prm_loss, orm_loss, pqm_loss ----------------------------------
// Each forward is loss(logits, cu_steps, labels, [margin,] normalizer, backend, validate) and
// each backward grad_logits(grad_losses, logits, [cu_steps,] labels, [margin,] backend), with
// grad_losses the upstream gradient of each unit's loss: each step for PRM, each trajectory else.

using LabelLossSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, std::optional<double>,
                                      c10::string_view, bool);

void save_loss_context(AutogradContext* ctx, std::optional<double> normalizer, c10::string_view backend) {
  ctx->saved_data["normalizer"] = normalizer;
  ctx->saved_data["backend"] = std::string(backend);
}

struct PrmLoss : torch::autograd::Function<PrmLoss> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& cu_steps,
                            const at::Tensor& step_labels, std::optional<double> normalizer, c10::string_view backend,
                            bool validate) {
    static const auto op = private_op<LabelLossSignature>("crm_kernels::_prm_loss");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({logits, step_labels});
    save_loss_context(ctx, normalizer, backend);
    return op.call(logits, cu_steps, step_labels, normalizer, backend, validate);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view);
    static const auto op = private_op<Signature>("crm_kernels::_prm_loss_backward");
    refuse_double_backward("prm_loss");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor grad_losses = per_unit_upstream(grad_outputs[0], ctx->saved_data["normalizer"], saved[0].sym_size(0));
    return {op.call(grad_losses, saved[0], saved[1], ctx->saved_data["backend"].toStringRef()), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

struct OrmLoss : torch::autograd::Function<OrmLoss> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& cu_steps,
                            const at::Tensor& outcome, std::optional<double> normalizer, c10::string_view backend,
                            bool validate) {
    static const auto op = private_op<LabelLossSignature>("crm_kernels::_orm_loss");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({logits, cu_steps, outcome});
    save_loss_context(ctx, normalizer, backend);
    return op.call(logits, cu_steps, outcome, normalizer, backend, validate);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    using Signature =
        at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view);
    static const auto op = private_op<Signature>("crm_kernels::_orm_loss_backward");
    refuse_double_backward("orm_loss");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor grad_losses =
        per_unit_upstream(grad_outputs[0], ctx->saved_data["normalizer"], trajectories(saved[1]));
    return {op.call(grad_losses, saved[0], saved[1], saved[2], ctx->saved_data["backend"].toStringRef()),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

struct PqmLoss : torch::autograd::Function<PqmLoss> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& cu_steps,
                            const at::Tensor& first_error, double margin, std::optional<double> normalizer,
                            c10::string_view backend, bool validate) {
    using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                                 std::optional<double>, c10::string_view, bool);
    static const auto op = private_op<Signature>("crm_kernels::_pqm_loss");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({logits, cu_steps, first_error});
    save_loss_context(ctx, normalizer, backend);
    ctx->saved_data["margin"] = margin;
    return op.call(logits, cu_steps, first_error, margin, normalizer, backend, validate);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                                 c10::string_view);
    static const auto op = private_op<Signature>("crm_kernels::_pqm_loss_backward");
    refuse_double_backward("pqm_loss");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor grad_losses =
        per_unit_upstream(grad_outputs[0], ctx->saved_data["normalizer"], trajectories(saved[1]));
    return {op.call(grad_losses, saved[0], saved[1], saved[2], ctx->saved_data["margin"].toDouble(),
                    ctx->saved_data["backend"].toStringRef()),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor prm_loss_autograd(const at::Tensor& logits, const at::Tensor& cu_steps, const at::Tensor& step_labels,
                             std::optional<double> normalizer, c10::string_view backend, bool validate) {
  return PrmLoss::apply(logits, cu_steps, step_labels, normalizer, backend, validate);
}

at::Tensor orm_loss_autograd(const at::Tensor& logits, const at::Tensor& cu_steps, const at::Tensor& outcome,
                             std::optional<double> normalizer, c10::string_view backend, bool validate) {
  return OrmLoss::apply(logits, cu_steps, outcome, normalizer, backend, validate);
}

at::Tensor pqm_loss_autograd(const at::Tensor& logits, const at::Tensor& cu_steps, const at::Tensor& first_error,
                             double margin, std::optional<double> normalizer, c10::string_view backend,
                             bool validate) {
  return PqmLoss::apply(logits, cu_steps, first_error, margin, normalizer, backend, validate);
}

}  // namespace

TORCH_LIBRARY_IMPL(crm_kernels, Autograd, m) {
  m.impl("_log_survival", TORCH_FN(log_survival_autograd));
  m.impl("_crm_loss", TORCH_FN(crm_loss_autograd));
  m.impl("_prm_loss", TORCH_FN(prm_loss_autograd));
  m.impl("_orm_loss", TORCH_FN(orm_loss_autograd));
  m.impl("_pqm_loss", TORCH_FN(pqm_loss_autograd));
}
