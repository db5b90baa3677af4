"""Triton kernels of the CRM ops. Imported lazily by crm_kernels._backends: on a machine without a
GPU they run only under TRITON_INTERPRET=1, which must be set before this package is imported."""

from .crm_loss import crm_loss_backward, crm_loss_forward
from .log_survival import log_survival_backward, log_survival_forward
from .objectives import (
    orm_loss_backward,
    orm_loss_forward,
    pqm_loss_backward,
    pqm_loss_forward,
    prm_loss_backward,
    prm_loss_forward,
)

__all__ = [
    "crm_loss_backward",
    "crm_loss_forward",
    "log_survival_backward",
    "log_survival_forward",
    "orm_loss_backward",
    "orm_loss_forward",
    "pqm_loss_backward",
    "pqm_loss_forward",
    "prm_loss_backward",
    "prm_loss_forward",
]
