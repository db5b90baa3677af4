"""crm_kernels: fused kernels and torch ops for Conditional Reward Modeling (CRM).

    loss = crm_kernels.crm_loss(logits, cu_steps, outcome, first_error)   # SPEC 3
    log_s = crm_kernels.log_survival(logits, cu_steps)                      # SPEC 1

The contract every backend meets is SPEC.md; `crm_kernels.reference` is its eager form.
"""

from . import reference
from ._backends import available_backends
from .ops import CRMLoss, crm_loss, log_survival

__version__ = "0.1.0"

__all__ = ["CRMLoss", "available_backends", "crm_loss", "log_survival", "reference"]
