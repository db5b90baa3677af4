"""The CRM ops, one file each, readable top to bottom: the formula (with its SPEC section), the
private torch.library ops `torch.ops.crm_kernels._<op>` and `_<op>_backward` with their fakes and
autograd, then the documented public function that validates its arguments, asks the registry
(`crm_kernels._backends`) which implementation runs, and calls it.

How a private op is registered (`_library.define`): a schema string, the implementation every
backend shares, and a fake for tracing, with torch.library; the Autograd kernels are C++
(csrc/autograd.cpp), the backward itself another private op. This passes all four opcheck tests
and torch.compile(fullgraph=True) with aot_eager and inductor, a Triton kernel launched inside.
torch's `custom_op` did too, but its Python autograd cost about 30 us per forward+backward in
argument plumbing (issue 15); `triton_op` fails opcheck's fake-tensor test under the interpreter,
and an `autograd.Function` launching Triton directly breaks torch.compile (Dynamo cannot trace
`data_ptr`). Value validation (SPEC 5) runs inside the forward op when `validate` is true, so it
happens before any kernel and costs no graph break under torch.compile.
"""

from .crm_loss import CRMLoss, crm_loss
from .log_survival import log_survival
from .orm_loss import orm_loss
from .pqm_loss import pqm_loss
from .prm_loss import prm_loss

__all__ = ["CRMLoss", "crm_loss", "log_survival", "orm_loss", "pqm_loss", "prm_loss"]
