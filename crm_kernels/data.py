"""PRM data -> packed CRM tensors.

A trajectory is a question and a list of steps; a step tag token follows every step, and the CRM
reads its hazard logit at that tag (SPEC 1). Per-step labels give the outcome (every step right)
and the first wrong step z (SPEC 3). Two formats that PRM data comes in are read here:

- TRL's stepwise-supervision format: {"prompt": str, "completions": [str, ...], "labels": [bool, ...]}
- Math-Shepherd: {"input": question and steps, each followed by a tag ("ки"),
                  "label": the same text with each tag replaced by "+" or "-"}

Finding the tags in token tensors (`find_step_ends`, `find_step_ends_packed`) is
`crm_kernels.step_tags`; its functions are also reachable from here, where collation uses them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch

from .step_tags import (  # noqa: F401  (re-exported: crm_kernels.data.find_step_ends is public)
    cu_steps_from_cu_seq_lens,
    cu_steps_from_lengths,
    find_step_ends,
    find_step_ends_packed,
)

MATH_SHEPHERD_TAG = "ки"


# ---------------------------------------------------------------------------------------------
# Examples and the two PRM formats


@dataclass
class PRMExample:
    """One trajectory. `labels[t]` says whether step t is right; None when only the outcome is
    known (a flawed trajectory whose first wrong step is hidden, or unlabeled data)."""

    prompt: str
    steps: list[str]
    labels: list[bool] | None = None
    outcome: bool | None = None
    group: int | None = None  # candidates sampled for one prompt share it (Best-of-N evaluation)

    def __post_init__(self):
        if self.group is not None and (not isinstance(self.group, int) or isinstance(self.group, bool)
                                       or self.group < 0):  # fmt: skip
            raise ValueError(f"group must be None or a non-negative int, got {self.group!r}")
        if self.labels is not None:
            if len(self.labels) != len(self.steps):
                raise ValueError(f"labels has {len(self.labels)} entries for {len(self.steps)} steps")
            all_right = all(self.labels)
            if self.outcome is not None and bool(self.outcome) != all_right:
                raise ValueError(f"outcome={self.outcome} contradicts labels={self.labels}: the outcome is "
                                 "correct exactly when every step is")  # fmt: skip
            self.outcome = all_right
        if self.outcome is None:
            raise ValueError("a PRMExample needs labels or an outcome")
        if not self.outcome and not self.steps:
            raise ValueError("a flawed trajectory (outcome False) must have at least one step (SPEC 5)")

    @property
    def first_error(self) -> int:
        """0-based first wrong step, -1 on a correct trajectory or when unknown."""
        if self.labels is None or self.outcome:
            return -1
        return self.labels.index(False)


def from_trl(record: dict) -> PRMExample:
    """TRL's stepwise-supervision record: prompt, completions (the steps), labels."""
    missing = {"prompt", "completions"} - set(record)
    if missing:
        raise ValueError(f"a TRL PRM record needs 'prompt' and 'completions' (and 'labels'); missing {sorted(missing)}")
    labels = record.get("labels")
    return PRMExample(
        prompt=record["prompt"],
        steps=list(record["completions"]),
        labels=None if labels is None else [bool(label) for label in labels],
        outcome=record.get("outcome"),
        group=record.get("group"),
    )


def from_math_shepherd(record: dict, step_tag: str = MATH_SHEPHERD_TAG) -> PRMExample:
    """Math-Shepherd record: `input` with a tag after each step, `label` with '+'/'-' in place of
    each tag. The question is the text before "Step 1:" (all of it goes to the first step when
    there is no such marker)."""
    text, label_text = record["input"], record["label"]
    pieces = text.split(step_tag)
    steps, labels, cursor = [], [], 0
    for piece in pieces[:-1]:
        mark = label_text[cursor + len(piece): cursor + len(piece) + 1]
        if label_text[cursor: cursor + len(piece)] != piece or mark not in ("+", "-"):
            raise ValueError(f"Math-Shepherd 'label' does not match 'input' with '+'/'-' in place of "
                             f"{step_tag!r} at step {len(steps)}")  # fmt: skip
        steps.append(piece)
        labels.append(mark == "+")
        cursor += len(piece) + 1
    prompt = ""
    if steps:
        marker = re.search(r"Step 1\s*:", steps[0])
        if marker:
            prompt, steps[0] = steps[0][: marker.start()], steps[0][marker.start():]
    return PRMExample(prompt=prompt, steps=[s.strip() for s in steps], labels=labels)


def to_example(record) -> PRMExample:
    """Any supported record (or a PRMExample) -> PRMExample."""
    if isinstance(record, PRMExample):
        return record
    if "completions" in record:
        return from_trl(record)
    if "input" in record and "label" in record:
        return from_math_shepherd(record)
    raise ValueError(f"unknown PRM record with keys {sorted(record)}: expected TRL's "
                     "(prompt, completions, labels) or Math-Shepherd's (input, label)")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Tokenizing and collating


def step_token_id(tokenizer, step_tag: str) -> int:
    """The id of `step_tag`, which must be one token of `tokenizer`."""
    token_id = tokenizer.convert_tokens_to_ids(step_tag)
    if token_id is None or (token_id == tokenizer.unk_token_id and step_tag != tokenizer.unk_token):
        raise ValueError(f"step_tag {step_tag!r} is not a token of this tokenizer: add it with "
                         f"tokenizer.add_special_tokens({{'additional_special_tokens': [{step_tag!r}]}}) and "
                         "resize the model's embeddings (model.resize_token_embeddings(len(tokenizer)))")  # fmt: skip
    return token_id


def encode(example, tokenizer, step_tag: str) -> dict:
    """A record or PRMExample -> {"input_ids": [int], "outcome": bool, "first_error": int}: the
    prompt (with the tokenizer's special tokens), then each step followed by the tag's id. Each
    piece is tokenized alone so that a tag never merges with the text around it."""
    example = to_example(example)
    tag_id = step_token_id(tokenizer, step_tag)
    input_ids = list(tokenizer(example.prompt, add_special_tokens=True)["input_ids"])
    if tag_id in input_ids:
        raise ValueError(f"the prompt contains the step tag {step_tag!r}: {example.prompt!r}")
    for index, step in enumerate(example.steps):
        step_ids = tokenizer(step, add_special_tokens=False)["input_ids"]
        if tag_id in step_ids:
            raise ValueError(f"step {index} contains the step tag {step_tag!r} itself: {step!r}")
        input_ids += [*step_ids, tag_id]
    return {"input_ids": input_ids, "outcome": bool(example.outcome), "first_error": example.first_error,
            "group": example.group}  # fmt: skip


def collate(encoded: Sequence[dict], pad_token_id: int, step_token_ids, padding_side: str = "right") -> dict:
    """Encoded examples -> a padded batch with packed CRM labels:
    input_ids, attention_mask [B, L]; cu_steps [B + 1]; step_positions [N]; outcome [B] bool;
    first_error [B] int64."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    rows = [torch.tensor(item["input_ids"], dtype=torch.long) for item in encoded]
    input_ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad_token_id,
                                                padding_side=padding_side)  # fmt: skip
    attention_mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in rows], batch_first=True,
                                                     padding_side=padding_side)  # fmt: skip
    cu_steps, step_positions = find_step_ends(input_ids, attention_mask, step_token_ids)
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            **_packed_labels(encoded, cu_steps, step_positions)}  # fmt: skip


def _packed_labels(encoded: Sequence[dict], cu_steps: torch.Tensor, step_positions: torch.Tensor) -> dict:
    """The packed CRM labels every collated batch carries beside its tokens, and `group` [B] when
    its examples carry one."""
    labels = {
        "cu_steps": cu_steps,
        "step_positions": step_positions,
        "outcome": torch.tensor([item["outcome"] for item in encoded], dtype=torch.bool),
        "first_error": torch.tensor([item["first_error"] for item in encoded], dtype=torch.long),
    }
    groups = [item.get("group") for item in encoded]
    if any(group is not None for group in groups):
        if any(group is None for group in groups):
            raise ValueError("group: either every example of a batch carries one (Best-of-N evaluation) or none does")
        labels["group"] = torch.tensor(groups, dtype=torch.long)
    return labels


def collate_packed(encoded: Sequence[dict], step_token_ids) -> dict:
    """Encoded examples -> one padding-free row (the layout of HF's `DataCollatorWithFlattening`):
    input_ids [1, T] with the sequences back to back, position_ids [1, T] restarting at each,
    cu_seq_lens [B + 1]; with the packed CRM labels of `collate` (step_positions index the T
    tokens). `ConditionalRewardModel(input_ids, cu_seq_lens=...)` reads it."""
    rows = [torch.tensor(item["input_ids"], dtype=torch.long) for item in encoded]
    lengths = torch.tensor([row.numel() for row in rows], dtype=torch.long)
    cu_seq_lens = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    input_ids = torch.cat(rows)[None] if rows else torch.zeros(1, 0, dtype=torch.long)
    position_ids = torch.cat([torch.arange(n) for n in lengths.tolist()])[None] if rows else input_ids.clone()
    cu_steps, step_positions = find_step_ends_packed(input_ids, cu_seq_lens, step_token_ids)
    return {"input_ids": input_ids, "position_ids": position_ids, "cu_seq_lens": cu_seq_lens,
            **_packed_labels(encoded, cu_steps, step_positions)}  # fmt: skip


def hard_step_labels(cu_steps: torch.Tensor, outcome: torch.Tensor, first_error: torch.Tensor) -> torch.Tensor:
    """[N] float32 PRM labels from the packed CRM labels: 1 for the steps before a trajectory's first
    wrong step z, 0 from z on; every step of a correct trajectory 1. A flawed trajectory whose z is
    unknown (first_error -1) has no per-step labels: ValueError."""
    from .segment import segment_ids

    if not all(isinstance(t, torch.Tensor) for t in (cu_steps, outcome, first_error)):
        raise TypeError("cu_steps, outcome and first_error must be tensors")
    if outcome.shape != first_error.shape or outcome.shape != (cu_steps.numel() - 1,):
        raise ValueError(f"outcome and first_error must be [B] = [{cu_steps.numel() - 1}], got "
                         f"{tuple(outcome.shape)} and {tuple(first_error.shape)}")  # fmt: skip
    unknown = ~outcome.bool() & (first_error < 0)
    if bool(unknown.any()):
        raise ValueError(f"trajectory {int(unknown.nonzero()[0, 0])} is flawed (outcome 0) and its first wrong step "
                         "is unknown (first_error -1): PRM needs per-step labels")  # fmt: skip
    num_steps = int(cu_steps[-1])
    owner = segment_ids(cu_steps, num_steps)
    index = torch.arange(num_steps, device=cu_steps.device) - cu_steps[:-1].long()[owner]
    lengths = (cu_steps[1:] - cu_steps[:-1]).long()
    first_wrong = torch.where(outcome.bool(), lengths, first_error.long())
    return (index < first_wrong[owner]).float()


class PRMCollator:
    """DataLoader collate_fn: records (TRL or Math-Shepherd) or PRMExamples -> `collate`'s padded
    batch, or with padding_free=True `collate_packed`'s single row."""

    def __init__(self, tokenizer, step_tag: str, padding_side: str = "right", *, padding_free: bool = False):
        self.padding_free = bool(padding_free)
        self.tokenizer = tokenizer
        self.step_tag = step_tag
        self.step_token_id = step_token_id(tokenizer, step_tag)
        self.padding_side = padding_side
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else tokenizer.eos_token_id
        if self.pad_token_id is None:
            raise ValueError("the tokenizer has neither a pad_token nor an eos_token to pad with")

    def __call__(self, records) -> dict:
        encoded = [encode(record, self.tokenizer, self.step_tag) for record in records]
        if self.padding_free:
            return collate_packed(encoded, self.step_token_id)
        return collate(encoded, self.pad_token_id, self.step_token_id, self.padding_side)
