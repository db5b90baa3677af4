"""crm_kernels: fused kernels and torch ops for Conditional Reward Modeling (CRM).

    loss = crm_kernels.crm_loss(logits, cu_steps, outcome, first_error)   # SPEC 3
    log_s = crm_kernels.log_survival(logits, cu_steps)                      # SPEC 1
    crm_kernels.prm_loss / orm_loss / pqm_loss                              # the baselines, SPEC 7

The contract every backend meets is docs/spec.md ("SPEC n" is its section n); `crm_kernels.reference` is its eager form.
On top of the ops: `ConditionalRewardModel` (a transformers wrapper, `modeling`), `data` (PRM
formats -> packed tensors), `scoring` (Best-of-N, aggregations, beam prefix scores) and `segment`
(the segmented primitives they share), `rl` (rewards, returns and advantages in trainers' layouts),
`integrations` (verl, OpenRLHF and TRL adapters) and `distributed` (data-parallel loss scaling).
"""

from . import data, distributed, reference, rl, scoring, segment
from ._backends import available_backends
from .ops import CRMLoss, crm_loss, log_survival, orm_loss, pqm_loss, prm_loss

__version__ = "0.2.0"

__all__ = [
    "CRMLoss",
    "CRMOutput",
    "ConditionalRewardModel",
    "available_backends",
    "crm_loss",
    "data",
    "distributed",
    "log_survival",
    "orm_loss",
    "pqm_loss",
    "prm_loss",
    "reference",
    "rl",
    "scoring",
    "segment",
]


def __getattr__(name):
    # The transformers wrapper is imported on first use: the ops need only torch.
    if name in ("ConditionalRewardModel", "CRMOutput"):
        from . import modeling

        return getattr(modeling, name)
    raise AttributeError(f"module 'crm_kernels' has no attribute {name!r}")
