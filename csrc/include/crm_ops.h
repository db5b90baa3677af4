// Tensor plumbing shared by the CPU and CUDA op registrations (not by the kernels themselves).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/constant_pad_nd.h>

#include <algorithm>
#include <optional>
#include <vector>

// Runs the lambda with scalar_t = the logits' dtype (half, bfloat16, float, double) and index_t =
// the offsets' (int32, int64): the one dispatch of every CPU and CUDA op wrapper.
#define CRM_DISPATCH_LOGITS_AND_OFFSETS(logits, offsets, name, ...)                                 \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, (logits).scalar_type(), name, [&] { \
    AT_DISPATCH_INDEX_TYPES((offsets).scalar_type(), name, __VA_ARGS__);                         \
  })

namespace crm {

// Scans and losses accumulate in float32, or float64 for float64 logits (SPEC 4).
inline at::ScalarType accumulate_type(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline int64_t num_trajectories(const at::Tensor& cu_steps) { return std::max<int64_t>(cu_steps.numel() - 1, 0); }

// The losses' reduction (SPEC 4, crm_kernels/_numerics.py): the losses when normalizer is None,
// else their sum over normalizer. The sum runs in float64 by blocks of kSumBlock values, each left
// to right, then the block sums left to right (_numerics.ordered_sum, the same bits): up to one
// block the plain left-to-right sum, past it parallel over blocks, the same bits for any number of
// threads. On the host the sum is a loop: the tensor ops of the device path cost more than the
// kernels of a small batch, and give the same bits.
constexpr int64_t kSumBlock = 8192;

inline at::Tensor reduce_losses(const at::Tensor& losses, std::optional<double> normalizer) {
  if (!normalizer) return losses;
  if (losses.is_cpu()) {
    return AT_DISPATCH_FLOATING_TYPES(losses.scalar_type(), "reduce_losses", [&] {
      const scalar_t* values = losses.const_data_ptr<scalar_t>();
      const int64_t n = losses.numel(), blocks = (n + kSumBlock - 1) / kSumBlock;
      std::vector<double> block_sums(blocks);
      auto sum_blocks = [&](int64_t first, int64_t last) {
        for (int64_t block = first; block < last; ++block) {
          double sum = 0.0;
          for (int64_t i = block * kSumBlock; i < std::min(n, (block + 1) * kSumBlock); ++i) {
            sum += static_cast<double>(values[i]);
          }
          block_sums[block] = sum;
        }
      };
      if (blocks > 1) {
        at::parallel_for(0, blocks, 1, sum_blocks);
      } else {
        sum_blocks(0, blocks);  // a small batch: no thread wake-up
      }
      double total = 0.0;
      for (const double sum : block_sums) total += sum;
      at::Tensor loss = at::empty({}, losses.options());
      // Rounded to the losses' dtype, then divided there, as torch divides by a Python float.
      *loss.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(total) / static_cast<scalar_t>(*normalizer);
      return loss;
    });
  }
  if (!losses.numel()) return losses.sum().div(*normalizer);
  at::Tensor values = losses.to(at::kDouble);
  if (values.numel() > kSumBlock) {
    const int64_t padding = (kSumBlock - values.numel() % kSumBlock) % kSumBlock;  // zeros change no sum
    values = at::constant_pad_nd(values, {0, padding}).view({-1, kSumBlock}).cumsum(1).select(1, -1);
  }
  return values.cumsum(0)[-1].to(losses.scalar_type()).div(*normalizer);
}

// The per-trajectory labels as the kernels read them, bool and int64, whatever integer type they
// came in (a no-op when they already are).
struct LabelTensors {
  at::Tensor correct, first_error;
  LabelTensors(const std::optional<at::Tensor>& outcome, const std::optional<at::Tensor>& first_error_in)
      : correct(outcome ? outcome->to(at::kBool).contiguous() : at::Tensor()),
        first_error(first_error_in ? first_error_in->to(at::kLong).contiguous() : at::Tensor()) {}
  // nullptr without an outcome (pqm_loss has none).
  const bool* correct_ptr() const { return correct.defined() ? correct.const_data_ptr<bool>() : nullptr; }
  // nullptr: the first wrong step is unknown for every trajectory.
  const int64_t* first_error_ptr() const {
    return first_error.defined() ? first_error.const_data_ptr<int64_t>() : nullptr;
  }
  bool cover(int64_t batch) const {
    return (!correct.defined() || correct.numel() >= batch) && (!first_error.defined() || first_error.numel() >= batch);
  }
};

// A loss's inputs as every backend's kernels read them (crm_loss, and the baselines' per-trajectory
// ones): contiguous, labels converted, and the per-trajectory inputs of the backward in the
// accumulation dtype, each checked against the batch.
struct LossInputs {
  at::Tensor logits, cu_steps;
  LabelTensors labels;
  int64_t batch;
  LossInputs(const at::Tensor& logits_in, const at::Tensor& cu_steps_in, const std::optional<at::Tensor>& outcome,
             const std::optional<at::Tensor>& first_error)
      : logits(logits_in.contiguous()),
        cu_steps(cu_steps_in.contiguous()),
        labels(outcome, first_error),
        batch(num_trajectories(cu_steps)) {
    TORCH_CHECK(labels.cover(batch), "outcome and first_error need one entry per trajectory");
  }
  at::TensorOptions accumulate_options() const { return logits.options().dtype(accumulate_type(logits)); }
  at::Tensor per_trajectory(const at::Tensor& values, const char* name) const {
    at::Tensor converted = values.to(accumulate_type(logits)).contiguous();
    TORCH_CHECK(converted.numel() >= batch, "crm_loss_backward: ", name, " has fewer entries than trajectories");
    return converted;
  }
};

// crm_loss_backward's inputs: the forward's, plus the upstream gradient and the saved log S(T).
struct LossBackwardInputs : LossInputs {
  at::Tensor grad_losses, log_survival_total;
  LossBackwardInputs(const at::Tensor& grad_losses_in, const at::Tensor& logits_in, const at::Tensor& cu_steps_in,
                     const at::Tensor& outcome, const std::optional<at::Tensor>& first_error,
                     const at::Tensor& log_survival_total_in)
      : LossInputs(logits_in, cu_steps_in, outcome, first_error),
        grad_losses(per_trajectory(grad_losses_in, "grad_losses")),
        log_survival_total(per_trajectory(log_survival_total_in, "log_survival_total")) {}
};

}  // namespace crm
