"""Data-parallel training: the normalizer that makes each rank's summed CRM loss add up to the
single-process mean over the global batch (SPEC 3, reductions)."""

from __future__ import annotations

import torch


def loss_normalizer(local_count: int, group=None, *, gradients_averaged: bool = True) -> float:
    """The `normalizer` for `crm_loss(..., reduction="sum", normalizer=...)` on this rank.

    Ranks hold ragged shares of the batch, so each rank's own mean would weigh trajectories
    unequally; dividing every rank's sum by the global trajectory count does not. One all-reduce.

    local_count: the trajectories on this rank.
    gradients_averaged: DistributedDataParallel averages gradients over the world (divides their
        sum by its size), so the normalizer is global_count / world_size. Pass False where the
        gradients are summed (a SUM all-reduce of your own): it is then global_count.
    """
    import torch.distributed as dist

    if not isinstance(local_count, int) or local_count < 0:
        raise ValueError(f"local_count must be a non-negative int, got {local_count!r}")
    if not (dist.is_available() and dist.is_initialized()):
        return float(max(local_count, 1))
    backend = dist.get_backend(group)
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    count = torch.tensor([local_count], dtype=torch.float64, device=device)
    dist.all_reduce(count, group=group)
    total = max(float(count.item()), 1.0)
    return total / dist.get_world_size(group) if gradients_averaged else total
