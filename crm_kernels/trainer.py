"""Training a ConditionalRewardModel: a plain PyTorch loop over PRM examples, and `CRMTrainer`
(`transformers.Trainer` for any objective, padded or padding-free batches, the loss normalized
over the whole optimizer step; crm_kernels/_hf_trainer.py), loaded on first use.

`train` is the loop of the task helper `crm_kernels.tasks.arithmetic.trained_model` (which
python/grpo_crm.py and python/rl_rewards_demo.py use): AdamW with a one-cycle schedule, gradient
clipping at 1, shuffled passes over the examples. It needs nothing beyond torch and a collator (`crm_kernels.data`).
"""

from __future__ import annotations

import random
from typing import Iterator, Sequence

from ._validate import check_positive


def batches(examples: Sequence, batch_size: int, steps: int, seed: int) -> Iterator[list]:
    """Shuffled passes over the examples, `steps` batches of `batch_size` in all."""
    if not examples:
        raise ValueError("examples is empty: nothing to train on")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch_size:
            order += rng.sample(range(len(examples)), len(examples))
        chosen, order = order[:batch_size], order[batch_size:]
        yield [examples[i] for i in chosen]


def to_device(batch: dict, device) -> dict:
    """A collated batch (a dict of tensors) on `device`."""
    return {key: value.to(device) for key, value in batch.items()}


def forward(model, batch: dict):
    """The model's output on a collated batch: padded (input_ids, attention_mask) or padding-free
    (input_ids [1, T], cu_seq_lens; `data.PRMCollator(..., padding_free=True)`)."""
    if "cu_seq_lens" in batch:
        return model(batch["input_ids"], cu_seq_lens=batch["cu_seq_lens"])
    return model(batch["input_ids"], batch["attention_mask"])


def train(model, collator, examples: Sequence, *, steps: int, batch_size: int, lr: float, seed: int = 0,
          device="cpu", progress: bool = True) -> list[float]:  # fmt: skip
    """Trains `model` (a ConditionalRewardModel) on `examples` in place; returns the loss of every
    step. `collator` turns a list of examples into the model's batch (`data.PRMCollator`)."""
    import torch
    from tqdm.auto import tqdm

    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    check_positive(lr, "lr")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses: list[float] = []
    bar = tqdm(batches(examples, batch_size, steps, seed), total=steps, desc="training", disable=not progress,
               mininterval=1.0)  # fmt: skip
    for records in bar:
        batch = to_device(collator(records), device)
        output = forward(model, batch)
        loss = model.loss(output, batch["outcome"], batch["first_error"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / 20:.3f}")
    return losses


def __getattr__(name):
    # The transformers Trainer subclass loads on first use: this module's loop needs only torch.
    if name in ("CRMTrainer", "CRMTrainingArguments"):
        from . import _hf_trainer

        return getattr(_hf_trainer, name)
    raise AttributeError(f"module 'crm_kernels.trainer' has no attribute {name!r}")
