"""CRMTrainer: `transformers.Trainer` for a ConditionalRewardModel under any of its objectives.
Reached as `crm_kernels.trainer.CRMTrainer` (that module stays importable without transformers).

The loss of an optimizer step is the objective's mean over every unit of the step (trajectories;
steps for PRM), wherever they sit: each micro-batch's summed loss is divided by the number of units
in all micro-batches of the step and on all data-parallel ranks (gathered once per step, as
transformers gathers token counts), times the world size that DDP's gradient averaging divides by.
A mean of micro-batch means would weigh a short micro-batch's trajectories more.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import transformers

from .modeling import ConditionalRewardModel


@dataclass
class CRMTrainingArguments(transformers.TrainingArguments):
    """`transformers.TrainingArguments` with what a reward model's batches need: the collator's
    records must reach it whole (remove_unused_columns=False), and the loss's own keyword
    arguments (e.g. {"weights": (1, 1, 1)} for CRM, {"margin": 4.0} for PQM)."""

    remove_unused_columns: bool = field(default=False, metadata={"help": "keep the PRM records whole"})
    loss_kwargs: dict = field(default_factory=dict, metadata={"help": "keyword arguments of the objective's loss"})


class CRMTrainer(transformers.Trainer):
    """Trains a ConditionalRewardModel (any objective) on `data.PRMCollator` batches, padded or
    padding-free (`PRMCollator(..., padding_free=True)`), with the loss normalized over the
    whole optimizer step (module docstring). `save_model` writes `ConditionalRewardModel`'s own
    format (`ConditionalRewardModel.from_pretrained` reads it)."""

    loss_is_scaled_for_ga = True  # compute_loss divides by the whole step's count

    def __init__(self, model=None, args=None, **kwargs):
        if not isinstance(model, ConditionalRewardModel):
            raise TypeError(f"model must be a ConditionalRewardModel, got {type(model).__name__}")
        if args is not None and args.remove_unused_columns:
            raise ValueError("remove_unused_columns must be False: the collator needs the PRM records whole "
                             "(CRMTrainingArguments defaults to it)")  # fmt: skip
        super().__init__(model=model, args=args, **kwargs)

    @staticmethod
    def units(objective: str, batch: dict) -> int:
        """What the objective's mean counts in a batch: its steps for PRM, else its trajectories."""
        return int(batch["cu_steps"][-1]) if objective == "prm" else int(batch["outcome"].numel())

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples = []
        for _ in range(num_batches):
            try:
                batch_samples.append(next(epoch_iterator))
            except StopIteration:
                break
        objective = self.accelerator.unwrap_model(self.model).objective
        count = torch.tensor(sum(self.units(objective, batch) for batch in batch_samples), device=device)
        if self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return batch_samples, count

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        crm = self.accelerator.unwrap_model(model)
        if "cu_seq_lens" in inputs:
            output = model(inputs["input_ids"], cu_seq_lens=inputs["cu_seq_lens"])
        else:
            output = model(inputs["input_ids"], inputs["attention_mask"])
        count = num_items_in_batch if num_items_in_batch is not None else self.units(crm.objective, inputs)
        # DDP averages the ranks' gradients: each rank's share of the global mean is its sum over
        # (global count / world size). At least one unit, so that a step without any gives 0.
        normalizer = torch.clamp(torch.as_tensor(count, dtype=torch.float64), min=1) / self.args.world_size
        loss = crm.loss(output, inputs["outcome"], inputs["first_error"], reduction="sum", normalizer=normalizer,
                        **self.args.loss_kwargs)  # fmt: skip
        return (loss, output) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        self.accelerator.unwrap_model(self.model).save_pretrained(output_dir)
        torch.save(self.args, f"{output_dir}/training_args.bin")
