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

from . import evaluation
from .modeling import ConditionalRewardModel
from .segment import segment_sum
from .step_tags import cu_steps_from_lengths
from .trainer import forward


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
        output = forward(model, inputs)
        count = num_items_in_batch if num_items_in_batch is not None else self.units(crm.objective, inputs)
        # DDP averages the ranks' gradients: each rank's share of the global mean is its sum over
        # (global count / world size). At least one unit, so that a step without any gives 0.
        normalizer = torch.clamp(torch.as_tensor(count, dtype=torch.float64), min=1) / self.args.world_size
        loss = crm.loss(output, inputs["outcome"], inputs["first_error"], reduction="sum", normalizer=normalizer,
                        **self.args.loss_kwargs)  # fmt: skip
        return (loss, output) if return_outputs else loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """The held-out loss (the objective's mean over the units of the whole evaluation set),
        first-error localization over the flawed trajectories whose first wrong step is known, and,
        when the records carry a `group` (a prompt's sampled candidates), Best-of-N over the groups:
        `crm_kernels.evaluation`'s metrics, named `{metric_key_prefix}_...`. Data-parallel ranks
        evaluate their shares and the metrics are over all of them."""
        dataloader = self.get_eval_dataloader(eval_dataset)
        crm = self.accelerator.unwrap_model(self.model)
        crm.eval()
        gathered: dict[str, list] = {}
        with torch.no_grad():
            for batch in dataloader:
                batch = self._prepare_inputs(batch)
                predictions, output = evaluation.batch_predictions(crm, batch)
                loss = crm.loss(output, batch["outcome"], batch["first_error"], reduction="none", **self.args.loss_kwargs)
                if crm.objective == "prm":  # per step: each trajectory's sum, and its steps as its units
                    loss = segment_sum(loss, output.cu_steps, validate=False)
                columns = {"loss": loss.double(), "units": predictions.step_counts if crm.objective == "prm" else
                           torch.ones_like(predictions.step_counts), **vars(predictions)}  # fmt: skip
                if "group" in batch:
                    columns["group"] = batch["group"]
                for name, column in self.accelerator.gather_for_metrics(columns).items():
                    gathered.setdefault(name, []).append(column.cpu())
        columns = {name: torch.cat(parts) for name, parts in gathered.items()}
        metrics = {"loss": (columns["loss"].sum() / columns["units"].sum().clamp(min=1)).item()}
        metrics.update(evaluation.localization(columns["first_error_predicted"], columns["first_error"],
                                               columns["step_counts"]))  # fmt: skip
        if "group" in columns:
            order = torch.sort(columns["group"], stable=True).indices
            cu_groups = cu_steps_from_lengths(torch.unique_consecutive(columns["group"][order], return_counts=True)[1])
            best = evaluation.best_of_n(columns["ranking_score"][order], columns["outcome"][order], cu_groups)
            metrics.update({f"best_of_n_{key}": value for key, value in best.items()})
        metrics = {f"{metric_key_prefix}_{name}": value for name, value in metrics.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        self.accelerator.unwrap_model(self.model).save_pretrained(output_dir)
        torch.save(self.args, f"{output_dir}/training_args.bin")
