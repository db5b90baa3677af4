"""crm_kernels.data: step tags -> cu_steps, the PRM formats, tokenizing and collating."""

import pytest
import torch

from crm_kernels import data

TAG = 9  # the step tag's id in the hand-written batches below
PAD = 0


def test_find_step_ends_right_and_left_padding():
    right = torch.tensor([[5, 6, TAG, 7, TAG, PAD], [5, TAG, PAD, PAD, PAD, PAD], [5, 6, 7, PAD, PAD, PAD]])
    mask = (right != PAD).long()
    cu_steps, positions = data.find_step_ends(right, mask, TAG)
    assert cu_steps.tolist() == [0, 2, 3, 3]
    assert positions.tolist() == [2, 4, 1]

    lengths = mask.sum(1)
    left = torch.stack([row.roll(int(6 - n)) for row, n in zip(right, lengths)])
    left_mask = torch.stack([m.roll(int(6 - n)) for m, n in zip(mask, lengths)])
    cu_left, positions_left = data.find_step_ends(left, left_mask, TAG)
    assert cu_left.tolist() == [0, 2, 3, 3]
    assert positions_left.tolist() == [3, 5, 5]


def test_find_step_ends_ignores_padding_and_takes_several_tags():
    input_ids = torch.tensor([[TAG, 3, 8, TAG], [8, TAG, TAG, TAG]])  # 8 is a second tag
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    cu_steps, positions = data.find_step_ends(input_ids, mask, [TAG, 8])
    assert cu_steps.tolist() == [0, 3, 5]
    assert positions.tolist() == [0, 2, 3, 0, 1]
    assert data.find_step_ends(input_ids, None, TAG)[0].tolist() == [0, 2, 5]


def test_packed_sequences_match_the_padded_batch():
    rows = [[5, 6, TAG, 7, TAG], [5, TAG], [5, 6, 7], [TAG]]
    packed = torch.tensor([[token for row in rows for token in row]])
    cu_seq_lens = data.cu_steps_from_lengths([len(row) for row in rows], dtype=torch.int32)
    cu_steps, positions = data.find_step_ends_packed(packed, cu_seq_lens, TAG)
    assert cu_steps.tolist() == [0, 2, 3, 3, 4]
    assert positions.tolist() == [2, 4, 6, 10]
    padded = torch.nn.utils.rnn.pad_sequence([torch.tensor(r) for r in rows], batch_first=True, padding_value=PAD)
    assert cu_steps.tolist() == data.find_step_ends(padded, padded != PAD, TAG)[0].tolist()


def test_cu_steps_from_lengths():
    assert data.cu_steps_from_lengths([3, 0, 1]).tolist() == [0, 3, 3, 4]
    assert data.cu_steps_from_lengths(torch.tensor([], dtype=torch.long)).tolist() == [0]
    with pytest.raises(ValueError, match="lengths must be >= 0"):
        data.cu_steps_from_lengths([2, -1])


def test_bad_inputs_are_named():
    with pytest.raises(TypeError, match="input_ids must hold integer token ids"):
        data.find_step_ends(torch.ones(2, 3), None, TAG)
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, seq_len\]"):
        data.find_step_ends(torch.ones(3, dtype=torch.long), None, TAG)
    with pytest.raises(ValueError, match="attention_mask must be a tensor shaped like input_ids"):
        data.find_step_ends(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 4), TAG)
    with pytest.raises(TypeError, match="step_token_ids must be an int or a non-empty list"):
        data.find_step_ends(torch.ones(2, 3, dtype=torch.long), None, [])
    with pytest.raises(ValueError, match=r"cu_seq_lens\[-1\] must equal the number of packed tokens = 3"):
        data.find_step_ends_packed(torch.ones(3, dtype=torch.long), torch.tensor([0, 2]), TAG)


# ---------------------------------------------------------------------------------------------


def test_example_labels_give_outcome_and_first_error():
    assert data.PRMExample("q", ["a", "b", "c"], [True, True, True]).first_error == -1
    flawed = data.PRMExample("q", ["a", "b", "c"], [True, False, False])
    assert (flawed.outcome, flawed.first_error) == (False, 1)
    hidden = data.PRMExample("q", ["a", "b"], labels=None, outcome=False)
    assert (hidden.outcome, hidden.first_error) == (False, -1)
    with pytest.raises(ValueError, match="contradicts labels"):
        data.PRMExample("q", ["a"], [True], outcome=False)
    with pytest.raises(ValueError, match="labels has 1 entries for 2 steps"):
        data.PRMExample("q", ["a", "b"], [True])
    with pytest.raises(ValueError, match="must have at least one step"):
        data.PRMExample("q", [], labels=None, outcome=False)


def test_trl_record():
    record = {"prompt": "Which is larger, 9.8 or 9.11?", "completions": ["Compare 0.8 and 0.11.", "9.11 is larger."],
              "labels": [True, False]}  # fmt: skip
    example = data.from_trl(record)
    assert example.steps == record["completions"]
    assert (example.outcome, example.first_error) == (False, 1)
    assert data.to_example(record) == example


def test_math_shepherd_record():
    record = {
        "input": "Janet has 3 apples and buys 2. How many? Step 1: 3 + 2 = 5. ки\nStep 2: She has 6 apples. ки",
        "label": "Janet has 3 apples and buys 2. How many? Step 1: 3 + 2 = 5. +\nStep 2: She has 6 apples. -",
    }
    example = data.from_math_shepherd(record)
    assert example.prompt == "Janet has 3 apples and buys 2. How many? "
    assert example.steps == ["Step 1: 3 + 2 = 5.", "Step 2: She has 6 apples."]
    assert example.labels == [True, False]
    assert example.first_error == 1
    with pytest.raises(ValueError, match="does not match 'input'"):
        data.from_math_shepherd({"input": record["input"], "label": record["label"].replace("+", "?")})
    with pytest.raises(ValueError, match="unknown PRM record"):
        data.to_example({"text": "x"})


@pytest.fixture(scope="module")
def tokenizer():
    from crm_kernels.tasks import arithmetic

    return arithmetic.build_tokenizer()


def test_encode_puts_a_tag_after_every_step(tokenizer):
    example = data.PRMExample("Q 3 +4", ["3+4=7", "7-2=5"], [True, False])
    encoded = data.encode(example, tokenizer, "<step>")
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert tokens == ["[BOS]", "Q", "3", "+4", "3+4=7", "<step>", "7-2=5", "<step>"]
    assert (encoded["outcome"], encoded["first_error"]) == (False, 1)
    with pytest.raises(ValueError, match="is not a token of this tokenizer"):
        data.encode(example, tokenizer, "<no such tag>")
    with pytest.raises(ValueError, match="step 0 contains the step tag"):
        data.encode(data.PRMExample("Q", ["3 <step>"], [True]), tokenizer, "<step>")


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_collate(tokenizer, padding_side):
    examples = [
        data.PRMExample("Q 1", ["1+1=2", "2+1=3", "3+1=4"], [True, True, True]),
        data.PRMExample("Q 2", [], outcome=True),
        data.PRMExample("Q 5 +2", ["5+2=8"], [False]),
        {"prompt": "Q 4", "completions": ["4-1=3", "3-1=1"], "labels": None, "outcome": False},
    ]
    batch = data.PRMCollator(tokenizer, "<step>", padding_side)(examples)
    assert batch["cu_steps"].tolist() == [0, 3, 3, 4, 6]
    assert batch["outcome"].tolist() == [True, True, False, False]
    assert batch["first_error"].tolist() == [-1, -1, 0, -1]
    tags = batch["input_ids"][torch.repeat_interleave(torch.arange(4), batch["cu_steps"].diff()), batch["step_positions"]]
    assert (tags == tokenizer.convert_tokens_to_ids("<step>")).all()
    real = batch["attention_mask"].bool()
    assert (batch["input_ids"][~real] == tokenizer.pad_token_id).all()
    assert (real[:, 0] if padding_side == "right" else real[:, -1]).all()


def test_arithmetic_task_default_stream_is_pinned():
    """The default task draws what it drew before the mistake kinds were added: the README's
    figures and benchmarks/results/reward_hacking.json were measured on it."""
    from crm_kernels.tasks import arithmetic

    samples = arithmetic.make_dataset(4, 11, 0.5)
    assert [s.example.steps for s in samples] == [
        ["0-8=2", "2+3=5", "5-3=3", "3+8=1", "1-3=8", "8+9=7"],
        ["5+1=5", "5+4=9", "9+8=7"],
        ["8-1=7", "7+8=6", "6-7=9", "9+5=4", "4-4=0"],
        ["6-2=4", "4+1=5", "5+4=9", "9+8=7", "7-7=9"],
    ]
    assert [s.first_error for s in samples] == [2, 0, 1, 4]
    assert samples[2].example.labels is None  # hidden


@pytest.mark.parametrize("kind", ["arithmetic", "copy", "misread"])
def test_arithmetic_task_mistakes_are_of_their_kind(kind):
    """Before the first wrong step z every step is right; step z is wrong the named way (its own
    sum off; a right sum from the wrong value; a right sum with another operand than the
    question's); later steps are right sums from the value written before; and the answer is
    wrong exactly when there is a z."""
    import random

    from crm_kernels.tasks import arithmetic

    rng = random.Random(7)
    flawed = 0
    for _ in range(400):
        problem = arithmetic.make_problem(rng)
        sample = arithmetic.sample(problem, rng, mistakes=(kind,))
        value = problem.start
        for index, (step, (op, operand)) in enumerate(zip(sample.example.steps, problem.operations)):
            written_value, written_op, written_operand, result = int(step[0]), step[1], int(step[2]), int(step[4])
            assert written_op == op
            own_sum_right = arithmetic._apply(written_value, op, written_operand) == result
            if index != sample.first_error:
                assert own_sum_right and written_value == value and written_operand == operand, (index, sample)
            elif kind == "arithmetic":
                assert not own_sum_right and written_value == value and written_operand == operand
            elif kind == "copy":
                assert own_sum_right and written_value != value and written_operand == operand
            else:
                assert own_sum_right and written_value == value and written_operand != operand
            value = result
        assert sample.example.labels == [sample.first_error < 0 or t < sample.first_error
                                         for t in range(len(problem.operations))]  # fmt: skip
        assert (sample.answer == problem.answer) == (sample.first_error < 0) == sample.example.outcome
        flawed += sample.first_error >= 0
    assert 40 < flawed < 300
    with pytest.raises(ValueError, match="mistakes must be a non-empty sequence of"):
        arithmetic.make_dataset(3, 0, mistakes=("typo",))
    with pytest.raises(ValueError, match="mistakes must be a non-empty sequence of"):
        arithmetic.make_groups(3, 2, 0, mistakes=())


def test_groups_travel_with_the_batch(tokenizer):
    """A prompt's candidates share a `group` (Best-of-N evaluation); every example of a batch
    carries one or none."""
    from crm_kernels.tasks import arithmetic

    _, groups = arithmetic.make_groups(3, 2, seed=1)
    examples = [s.example for group in groups for s in group]
    for collator in (data.PRMCollator(tokenizer, "<step>"), data.PRMCollator(tokenizer, "<step>", padding_free=True)):
        assert collator(examples)["group"].tolist() == [0, 0, 1, 1, 2, 2]
        assert "group" not in collator([data.PRMExample("Q 1", ["1+1=2"], [True])])
        with pytest.raises(ValueError, match="group: either every example of a batch carries one"):
            collator(examples + [data.PRMExample("Q 1", ["1+1=2"], [True])])
    record = {"prompt": "Q 1", "completions": ["1+1=2"], "labels": [True], "group": 4}
    assert data.to_example(record).group == 4
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="group must be None or a non-negative int"):
            data.PRMExample("Q 1", ["1+1=2"], [True], group=bad)
