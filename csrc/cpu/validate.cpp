// The value rules of SPEC 5 in one pass over the offsets and labels of CPU tensors. It only says
// whether every rule holds: crm_kernels/_validate.py runs its own check, which finds and names
// the offending position, when this returns false, so the rules' wording lives in one place.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <optional>

#include "sweep.h"

namespace crm::cpu {
namespace {

template <typename index_t>
bool offsets_valid(const index_t* cu_steps, int64_t num_trajectories, int64_t num_steps) {
  if (cu_steps[0] != 0 || static_cast<int64_t>(cu_steps[num_trajectories]) != num_steps) return false;
  for (int64_t b = 0; b < num_trajectories; ++b) {
    if (cu_steps[b + 1] < cu_steps[b]) return false;
  }
  return true;
}

template <typename index_t>
bool labels_valid(const index_t* cu_steps, int64_t num_trajectories, const int64_t* outcome,
                  const int64_t* first_error) {
  for (int64_t b = 0; b < num_trajectories; ++b) {
    const int64_t steps = static_cast<int64_t>(cu_steps[b + 1]) - static_cast<int64_t>(cu_steps[b]);
    if (outcome[b] != 0 && outcome[b] != 1) return false;
    if (outcome[b] == 0 && steps == 0) return false;
    if (first_error != nullptr) {
      const int64_t z = first_error[b];
      if (z < -1 || z >= steps || (outcome[b] == 1 && z != -1)) return false;
    }
  }
  return true;
}

bool inputs_are_valid(const at::Tensor& logits, const at::Tensor& cu_steps_in,
                      const std::optional<at::Tensor>& outcome_in, const std::optional<at::Tensor>& first_error_in) {
  const at::Tensor cu_steps = cu_steps_in.contiguous();
  const int64_t batch = num_trajectories(cu_steps);
  if (cu_steps.numel() == 0) return false;
  // int64 rather than LabelTensors' bool: an outcome of 2 must stay visible.
  const at::Tensor outcome = outcome_in ? outcome_in->to(at::kLong).contiguous() : at::Tensor();
  const at::Tensor first_error = first_error_in ? first_error_in->to(at::kLong).contiguous() : at::Tensor();
  if ((outcome.defined() && outcome.numel() != batch) || (first_error.defined() && first_error.numel() != batch)) {
    return false;
  }
  bool valid = false;
  AT_DISPATCH_INDEX_TYPES(cu_steps.scalar_type(), "inputs_are_valid", [&] {
    const index_t* offsets = cu_steps.const_data_ptr<index_t>();
    valid = offsets_valid(offsets, batch, logits.numel()) &&
            (!outcome.defined() || labels_valid(offsets, batch, outcome.const_data_ptr<int64_t>(),
                                                first_error.defined() ? first_error.const_data_ptr<int64_t>() : nullptr));
  });
  return valid;
}

}  // namespace

TORCH_LIBRARY_IMPL(crm_kernels_C, CPU, m) { m.impl("inputs_are_valid", &inputs_are_valid); }

}  // namespace crm::cpu
