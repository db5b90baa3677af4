"""Evaluating a reward model under any objective: first-error localization and Best-of-N.

`CRMTrainer.evaluate`, python/train_crm.py and python/compare_objectives.py share these. Each
objective ranks trajectories by its own score (`ConditionalRewardModel.ranking_score`: log S(T)
for CRM, the product, last or minimum step probability for PRM, ORM, PQM) and places the first
wrong step its own way (`ConditionalRewardModel.first_error`).

- Localization: on flawed trajectories whose first wrong step z is known, how often the predicted
  step is z, beside the chance of a uniform guess (the mean of 1 / steps).
- Best-of-N: among a prompt's N sampled candidates, how often the one ranked first is right,
  beside a random pick (the mean correctness) and the oracle (any of them right).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from . import scoring
from ._validate import check_segments
from .segment import segment_sum
from .trainer import forward, to_device


@dataclass
class Predictions:
    """[B] per-trajectory predictions of a model over a list of examples, in their order."""

    ranking_score: Tensor  # float32, higher ranks first
    first_error_predicted: Tensor  # int64 0-based step, -1 without steps
    step_counts: Tensor  # int64
    outcome: Tensor  # bool labels
    first_error: Tensor  # int64 labels, -1 when correct or unknown


def batch_predictions(model, batch: dict) -> tuple[Predictions, object]:
    """The model's predictions on one collated batch (padded or padding-free), and its output."""
    output = forward(model, batch)
    predictions = Predictions(model.ranking_score(output).float(), model.first_error(output), output.cu_steps.diff(),
                              batch["outcome"].bool(), batch["first_error"].long())  # fmt: skip
    return predictions, output


@torch.no_grad()
def predict(model, collator, examples: Sequence, *, batch_size: int = 256, device="cpu") -> Predictions:
    """Runs `model` (a ConditionalRewardModel, put in eval mode) over `examples` (records or
    PRMExamples) in batches of `collator` (`data.PRMCollator`); the predictions on the CPU."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    model.eval()
    parts = []
    for start in range(0, len(examples), batch_size):
        batch = to_device(collator(examples[start: start + batch_size]), device)
        parts.append(batch_predictions(model, batch)[0])
    fields = Predictions.__dataclass_fields__
    return Predictions(**{name: torch.cat([getattr(p, name).cpu() for p in parts]) for name in fields})


def localization(predicted: Tensor, first_error: Tensor, step_counts: Tensor) -> dict:
    """First-error localization over the trajectories with a known first wrong step
    (first_error >= 0): accuracy, the chance of a uniform guess, and their count (accuracy and
    chance are NaN when there are none)."""
    _check_same_shape(predicted=predicted, first_error=first_error, step_counts=step_counts)
    known = first_error >= 0
    hits = (predicted == first_error)[known].double()
    return {
        "localization_accuracy": hits.mean().item() if hits.numel() else float("nan"),
        "localization_chance": (1.0 / step_counts[known].double()).mean().item() if hits.numel() else float("nan"),
        "flawed_with_known_first_error": int(known.sum()),
    }


def best_of_n(scores: Tensor, correct: Tensor, cu_groups: Tensor) -> dict:
    """Best-of-N over groups of candidates (packed by cu_groups [G + 1], every group non-empty):
    the share of groups whose best-scored candidate is right ("best_of_n"; ties to the earlier
    candidate, NaN last), of right candidates averaged per group ("random") and of groups with
    any right candidate ("oracle")."""
    _check_same_shape(scores=scores, correct=correct)
    check_segments(scores, cu_groups, True, values_name="scores", offsets_name="cu_groups")
    sizes = cu_groups.diff()
    if bool((sizes == 0).any()):
        raise ValueError(f"cu_groups must hold non-empty groups, group {int((sizes == 0).nonzero()[0, 0])} is empty")
    correct = correct.double()
    per_group = segment_sum(correct, cu_groups, validate=False)
    chosen = scoring.best_of_n(scores, cu_groups, validate=False)
    return {"best_of_n": correct[chosen].mean().item(), "random": (per_group / sizes).mean().item(),
            "oracle": (per_group > 0).double().mean().item()}  # fmt: skip


def best_of_n_curve(scores: Tensor, correct: Tensor, sizes: Sequence[int], answers: Tensor | None = None) -> dict:
    """`best_of_n` for N in `sizes` over P prompts with M candidates each (scores, correct
    [P, M]), N taking each prompt's first N candidates; with `answers` [P, M] (integer final
    answers) also a majority vote ("majority_vote": the most common answer, ties to the smallest,
    counted right when its first candidate is)."""
    _check_same_shape(scores=scores, correct=correct, **({} if answers is None else {"answers": answers}))
    if scores.ndim != 2:
        raise ValueError(f"scores must be [P, M] (prompts, candidates), got {tuple(scores.shape)}")
    prompts, candidates = scores.shape
    if any(not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= candidates for n in sizes):
        raise ValueError(f"sizes must be ints in [1, {candidates}] (candidates per prompt), got {list(sizes)}")
    curve = {}
    for n in sizes:
        cu_groups = torch.arange(prompts + 1, device=scores.device) * n
        curve[n] = best_of_n(scores[:, :n].reshape(-1), correct[:, :n].reshape(-1), cu_groups)
        if answers is not None:
            chosen = answers[:, :n].long()
            values = torch.unique(chosen)
            votes = (chosen[:, :, None] == values).sum(1)  # [P, distinct answers]
            majority = values[votes.argmax(1)]  # argmax takes the first: the smallest answer
            first_of_majority = (chosen == majority[:, None]).double().argmax(1)
            rows = torch.arange(prompts, device=scores.device)
            curve[n]["majority_vote"] = correct[rows, first_of_majority].double().mean().item()
    return curve


def _check_same_shape(**tensors: Tensor) -> None:
    shape = None
    for name, value in tensors.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
        if shape is None:
            shape, first = value.shape, name
        elif value.shape != shape:
            raise ValueError(f"{name} must have the shape of {first}, {tuple(shape)}, got {tuple(value.shape)}")
