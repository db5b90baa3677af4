"""crm_kernels.trainer: the examples' training loop, and its arguments."""

import collections

import pytest

from crm_kernels.trainer import batches, train


def test_batches_are_shuffled_passes():
    examples = list(range(10))
    drawn = list(batches(examples, batch_size=4, steps=5, seed=3))
    assert [len(batch) for batch in drawn] == [4] * 5
    counts = collections.Counter(x for batch in drawn for x in batch)
    assert set(counts) == set(examples) and max(counts.values()) - min(counts.values()) <= 1  # passes, not draws
    assert drawn == list(batches(examples, batch_size=4, steps=5, seed=3))  # seeded
    assert drawn != list(batches(examples, batch_size=4, steps=5, seed=4))


def test_batch_larger_than_the_examples():
    (batch,) = batches([1, 2, 3], batch_size=7, steps=1, seed=0)
    assert len(batch) == 7 and set(batch) == {1, 2, 3}


@pytest.mark.parametrize("kwargs, match", [(dict(steps=0), "steps"), (dict(lr=0.0), "lr"),
                                           (dict(batch_size=0), "batch_size")])  # fmt: skip
def test_bad_arguments_are_named(kwargs, match):
    import torch

    model = torch.nn.Linear(1, 1)
    arguments = dict(steps=2, batch_size=2, lr=1e-3) | kwargs
    with pytest.raises(ValueError, match=match):
        train(model, lambda records: {}, [1, 2, 3], **arguments, progress=False)


def test_no_examples():
    with pytest.raises(ValueError, match="examples"):
        next(batches([], batch_size=2, steps=1, seed=0))
