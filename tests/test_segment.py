"""crm_kernels.segment against a per-segment Python loop, on fresh random ragged batches."""

import math

import pytest
import torch
from conftest import make_batch

from crm_kernels import segment

EMPTY = -7.0  # a value no reduction below can produce, to see that empty segments get it


def loop(values, offsets, reduce, empty=EMPTY):
    values = values.double()
    out = []
    for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        piece = values[start:end]
        out.append(reduce(piece) if end > start else empty)
    return torch.tensor(out, dtype=torch.float64)


REDUCTIONS = {
    "sum": (segment.segment_sum, lambda p: p.sum().item(), 0.0),
    "mean": (segment.segment_mean, lambda p: p.mean().item(), EMPTY),
    "min": (segment.segment_min, lambda p: p.min().item(), EMPTY),
    "max": (segment.segment_max, lambda p: p.max().item(), EMPTY),
    "first": (segment.segment_first, lambda p: p[0].item(), EMPTY),
    "last": (segment.segment_last, lambda p: p[-1].item(), EMPTY),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reductions_match_loop(name, dtype, index_dtype, seed):
    batch = make_batch(seed, dtype, index_dtype, batch=40, long_steps=3000)
    function, reduce, empty = REDUCTIONS[name]
    kwargs = {} if name == "sum" else {"empty": EMPTY}
    got = function(batch.logits, batch.cu_steps, **kwargs)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    expected = loop(batch.logits, batch.cu_steps, reduce, empty)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got.double(), expected, **tol)


def test_argmax_ties_nan_and_empty():
    values = torch.tensor([1.0, 3.0, 3.0, float("nan"), 2.0, float("nan"), float("nan"), -1.0])
    offsets = torch.tensor([0, 3, 3, 5, 7, 8])
    # ties -> first; NaN ranks below numbers; all-NaN -> its first; empty -> -1
    assert segment.segment_argmax(values, offsets).tolist() == [1, -1, 4, 5, 7]


def test_argmax_matches_loop(seed):
    batch = make_batch(seed, torch.float32, batch=50)
    rounded = (batch.logits * 2).round()  # many ties
    got = segment.segment_argmax(rounded, batch.cu_steps)
    expected = [
        start + int(torch.argmax(rounded[start:end])) if end > start else -1  # torch.argmax: first maximum
        for start, end in zip(batch.cu_steps[:-1].tolist(), batch.cu_steps[1:].tolist())
    ]
    assert got.tolist() == expected


def test_segment_ids_and_empty_batches():
    offsets = torch.tensor([0, 2, 2, 5])
    assert segment.segment_ids(offsets, 5).tolist() == [0, 0, 2, 2, 2]
    nothing = torch.zeros(0)
    assert segment.segment_sum(nothing, torch.zeros(1, dtype=torch.long)).shape == (0,)
    assert segment.segment_max(nothing, torch.zeros(3, dtype=torch.long)).tolist() == [-math.inf] * 2
    assert segment.segment_argmax(nothing, torch.zeros(3, dtype=torch.long)).tolist() == [-1, -1]


def test_float32_sum_of_a_long_segment_is_accurate():
    # 2^20 values of 0.1 in one segment: a sequential float32 sum drifts by ~1e-3 relative.
    values = torch.full((1 << 20,), 0.1, dtype=torch.bfloat16)
    offsets = torch.tensor([0, 1 << 20])
    expected = (1 << 20) * float(torch.tensor(0.1, dtype=torch.bfloat16))
    assert segment.segment_sum(values, offsets).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "values, offsets, exception, words",
    [
        ([1.0, 2.0], torch.tensor([0, 2]), TypeError, "values must be a torch.Tensor"),
        (torch.ones(2, 2), torch.tensor([0, 2]), ValueError, "values must be 1-D"),
        (torch.ones(3), torch.tensor([0.0, 3.0]), TypeError, "offsets must be int32 or int64"),
        (torch.ones(3), torch.tensor([1, 3]), ValueError, "offsets[0] must be 0"),
        (torch.ones(3), torch.tensor([0, 2, 1, 3]), ValueError, "offsets must be non-decreasing"),
        (torch.ones(3), torch.tensor([0, 4]), ValueError, "offsets[-1] must equal len(values) = 3"),
    ],
)
def test_bad_offsets_are_named(values, offsets, exception, words):
    with pytest.raises(exception, match=words.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        segment.segment_sum(values, offsets)


def test_logsumexp_softmin_softmax_count_match_loop(seed):
    batch = make_batch(seed, torch.float64, batch=40, scale=30.0)
    segments = [batch.logits[s:e] for s, e in zip(batch.cu_steps[:-1].tolist(), batch.cu_steps[1:].tolist())]
    lse = torch.tensor([p.logsumexp(0).item() for p in segments], dtype=torch.float64)
    torch.testing.assert_close(segment.segment_logsumexp(batch.logits, batch.cu_steps), lse, rtol=1e-12, atol=1e-12)
    softmin = torch.tensor([(-0.5 * (p / -0.5).logsumexp(0)).item() for p in segments], dtype=torch.float64)
    torch.testing.assert_close(segment.segment_softmin(batch.logits, batch.cu_steps, 0.5), softmin, rtol=1e-12, atol=1e-12)
    softmax = torch.cat([torch.softmax(p, 0) for p in segments])
    torch.testing.assert_close(segment.segment_softmax(batch.logits, batch.cu_steps), softmax, rtol=1e-12, atol=1e-12)
    assert segment.segment_count(batch.cu_steps).tolist() == batch.lengths.tolist()
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        segment.segment_softmin(batch.logits, batch.cu_steps, 0.0)
