"""SPEC 5: "a kernel must never read or write out of bounds, whatever it is given".

Run by `make asan` against an AddressSanitizer build of the C++ extension: thousands of calls
with garbage offsets (unsorted, negative, past the end), labels and first errors, validation off,
forward and backward, then large valid batches on the threaded path. Any stray read or write
aborts the run. Not collected by pytest (it needs the sanitized build).
"""

import os

import torch

import crm_kernels

C = torch.ops.crm_kernels_C
g = torch.Generator().manual_seed(int(os.environ.get("CRM_TEST_SEED", "0")))
runs = 0
for trial in range(400):
    n = int(torch.randint(0, 300, (1,), generator=g))
    b = int(torch.randint(0, 40, (1,), generator=g))
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        x = (torch.randn(n, generator=g) * 10).to(dtype).requires_grad_()
        for idx in (torch.int32, torch.int64):
            kind = trial % 3
            if kind == 0:   # anything at all
                cu = torch.randint(-500, 500, (b + 1,), generator=g).to(idx)
            elif kind == 1:  # sorted but not ending at n, may overshoot
                cu = torch.randint(0, n + 50, (b + 1,), generator=g).sort().values.to(idx)
            else:           # valid offsets, garbage labels
                cu = torch.zeros(b + 1, dtype=torch.long); cu[1:] = torch.randint(0, n + 1, (b,), generator=g).sort().values; cu[-1] = n; cu = cu.to(idx)
            outcome = torch.randint(-2, 3, (b,), generator=g)
            z = torch.randint(-5, 60, (b,), generator=g)
            # the SPEC 7 baselines, labels as garbage as the offsets
            step_labels = torch.randn(n, generator=g)
            crm_kernels.prm_loss(x, cu, step_labels, reduction="none", validate=False, backend="cpu").sum().backward()
            crm_kernels.orm_loss(x, cu, outcome, reduction="none", validate=False, backend="cpu").nansum().backward()
            crm_kernels.pqm_loss(x, cu, z, reduction="none", validate=False, backend="cpu").nansum().backward()
            runs += 3
            for first_error in (z, None):
                losses = crm_kernels.crm_loss(x, cu, outcome, first_error, reduction="none", validate=False, backend="cpu")
                losses.sum().backward()
                crm_kernels.log_survival(x, cu, validate=False, backend="cpu").sum().backward()
                C.inputs_are_valid(x, cu, outcome, first_error)
                runs += 1
            if dtype != torch.bfloat16:  # the scans take float32 / float64 (crm_kernels.segment)
                values = x.detach().contiguous()
                C.segment_linear_scan(values, cu.long(), 0.9, trial % 2 == 0)
                C.segment_reverse_cummin(values, cu.long())
                columns = torch.randint(-5, 20, (n,), generator=g)
                C.segment_to_rows(values, cu.long(), columns, 15)
                C.segment_to_rows_out(values, cu.long(), columns, torch.empty(b, 15, dtype=values.dtype))
                C.segment_sum(values, cu.long())
                runs += 5
# and large valid batches that take the threaded path
for seed in range(3):
    lengths = torch.poisson(torch.full((20000,), 16.0), generator=g).long()
    cu = torch.zeros(20001, dtype=torch.long); cu[1:] = lengths.cumsum(0)
    x = torch.randn(int(cu[-1]), generator=g).requires_grad_()
    outcome = (torch.rand(20000, generator=g) < 0.5) | (lengths == 0)
    crm_kernels.crm_loss(x, cu, outcome, None, backend="cpu").backward()
    crm_kernels.log_survival(x, cu, backend="cpu").sum().backward()
# GAE rows: any mask, including empty rows and rows of one token; float32 rows go four at a time
# through 4x4 tiles, so every rows % 4 and length % 4, and the out= form
for rows, length in ((0, 5), (7, 0), (9, 1), (64, 700), (4, 4), (5, 6), (6, 7), (11, 289), (8, 3)):
    for dtype in (torch.float32, torch.float64):
        rewards = torch.randn(rows, length, generator=g, dtype=dtype)
        values = torch.randn(rows, length, generator=g, dtype=dtype)
        mask = torch.rand(rows, length, generator=g) < 0.7
        C.masked_gae(rewards, values, mask, 0.99, 0.95)
        C.masked_gae_out(rewards, values, mask, 0.99, 0.95, torch.empty_like(rewards), torch.empty_like(rewards))
        runs += 2
print(f"no out-of-bounds access in {runs} calls on invalid input (seed {g.initial_seed()})")
