// Schemas of the compiled kernels. These are private building blocks: the public, differentiable,
// compile-friendly ops live in crm_kernels/ops/ (torch.ops.crm_kernels._*) and call these
// for backend="cpu" (and, on GPUs, backend="cuda"). Each backend adds its implementations with
// TORCH_LIBRARY_IMPL in its own file under cpu/ or cuda/.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(crm_kernels_C, m) {
  // SPEC 5's value rules, evaluated where the data lives; false means "run the detailed check".
  m.def("inputs_are_valid(Tensor logits, Tensor cu_steps, Tensor? outcome, Tensor? first_error) -> bool");
  m.def("log_survival_forward(Tensor logits, Tensor cu_steps) -> Tensor");
  m.def("log_survival_backward(Tensor grad_log_survival, Tensor logits, Tensor cu_steps) -> Tensor");
  m.def(
      "crm_loss_forward(Tensor logits, Tensor cu_steps, Tensor outcome, Tensor? first_error, float w_survive, "
      "float w_wrong, float w_first_error, float? normalizer=None) -> (Tensor loss, Tensor log_survival_total)");
  m.def(
      "crm_loss_backward(Tensor grad_losses, Tensor logits, Tensor cu_steps, Tensor outcome, Tensor? first_error, "
      "Tensor log_survival_total, float w_survive, float w_wrong, float w_first_error) -> Tensor");
  // The baseline objectives of SPEC 7 (CPU; on GPUs the eager backend until they have kernels there).
  m.def("prm_loss_forward(Tensor logits, Tensor step_labels, float? normalizer=None) -> Tensor");
  m.def("prm_loss_backward(Tensor grad_losses, Tensor logits, Tensor step_labels) -> Tensor");
  m.def("orm_loss_forward(Tensor logits, Tensor cu_steps, Tensor outcome, float? normalizer=None) -> Tensor");
  m.def("orm_loss_backward(Tensor grad_losses, Tensor logits, Tensor cu_steps, Tensor outcome) -> Tensor");
  m.def(
      "pqm_loss_forward(Tensor logits, Tensor cu_steps, Tensor first_error, float margin, float? normalizer=None) "
      "-> Tensor");
  m.def(
      "pqm_loss_backward(Tensor grad_losses, Tensor logits, Tensor cu_steps, Tensor first_error, float margin) "
      "-> Tensor");
  // One-pass scans behind crm_kernels.segment and crm_kernels.rl (CPU; elsewhere the torch path).
  m.def("segment_linear_scan(Tensor values, Tensor offsets, float decay, bool reverse) -> Tensor");
  m.def("segment_reverse_cummin(Tensor values, Tensor offsets) -> Tensor");
  m.def("segment_sum(Tensor values, Tensor offsets) -> Tensor");
  m.def("segment_to_rows(Tensor values, Tensor offsets, Tensor columns, int seq_len) -> Tensor");
  m.def("segment_to_rows_out(Tensor values, Tensor offsets, Tensor columns, Tensor(a!) rows) -> ()");
  m.def("masked_gae(Tensor rewards, Tensor values, Tensor mask, float gamma, float lam) -> (Tensor, Tensor)");
  m.def(
      "masked_gae_out(Tensor rewards, Tensor values, Tensor mask, float gamma, float lam, Tensor(a!) advantages, "
      "Tensor(b!) returns) -> ()");
}

// `import crm_kernels._C` loads this library and so runs the registrations above; the module
// itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
