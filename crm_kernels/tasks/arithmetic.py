"""A synthetic multi-step arithmetic task with errors at a known step, and a tokenizer built in code.

A problem is a start digit and a chain of operations mod 10 ("Q 3 +4 -2 +7"). A trajectory
writes one step per operation, "3+4=7", each followed by the step tag. A sampled trajectory
may get one step wrong (the first wrong step z); every later step is computed correctly from the
wrong value it was given, so the final answer is wrong and z is known. Problems differ in how
error-prone they are, so wrong answers cluster and a majority vote is not trivially right on hard
problems.

Three kinds of mistake (MISTAKES), all of which make the final answer wrong:
- "arithmetic": the step's sum is off, mostly by one ("3+4=8"). The written equation alone gives it
  away, so a small model learns it from the 1,800 step words (the default, and nearly saturated).
- "copy": the step starts from another value than the previous step's result (or the question's
  start digit); its own sum is right. Seeing it takes comparing two steps.
- "misread": the step applies another operand than the question's operation at that place; its
  own sum is right. Seeing it takes finding the question's matching operation.
`HARD` mixes all three (python/compare_objectives.py --task hard). `small_model` learns the
arithmetic slips within a minute but not the other two: at 600 to 2,000 steps, and with 4 layers
of width 128, it locates them no better than the prior (step 0) does.

Nothing here is downloaded: the vocabulary is ~1,850 words and the tokenizer is a word-level
`tokenizers` model wrapped as a transformers `PreTrainedTokenizerFast`; `small_model` is a 2-layer
Llama-style CRM built from a config, and `trained_scorer` trains one for a few CPU seconds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..data import PRMExample

STEP_TAG = "<step>"
SPECIAL = ["[PAD]", "[UNK]", "[BOS]", STEP_TAG]
DIGITS = [str(d) for d in range(10)]
OPERATIONS = [f"{op}{b}" for op in "+-" for b in range(1, 10)]
# A step is one word, "3+4=7": a model of this size learns which of the 1,800 written equations
# are wrong within a minute on a CPU, while relations between separate tokens take it far longer.
EQUATIONS = [f"{a}{op}={c}" for a in range(10) for op in OPERATIONS for c in range(10)]
WORDS = ["Q"] + DIGITS + OPERATIONS + EQUATIONS
MISTAKES = ("arithmetic", "copy", "misread")
HARD = MISTAKES


def build_tokenizer():
    """A word-level tokenizer over the task's vocabulary: BOS first, the step tag one token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: index for index, word in enumerate(SPECIAL + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", vocab["[BOS]"])])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="[BOS]", pad_token="[PAD]", unk_token="[UNK]",
                                   additional_special_tokens=[STEP_TAG])  # fmt: skip


@dataclass
class Problem:
    start: int
    operations: list[tuple[str, int]]
    error_rate: float  # per-step chance that a sampled trajectory makes its (one) mistake here

    @property
    def question(self) -> str:
        return "Q " + " ".join([str(self.start)] + [f"{op}{operand}" for op, operand in self.operations])

    @property
    def answer(self) -> int:
        value = self.start
        for op, operand in self.operations:
            value = _apply(value, op, operand)
        return value


@dataclass
class Sample:
    example: PRMExample
    answer: int  # the final answer written
    first_error: int  # -1 when every step is right (kept even when the example hides it)


def _apply(value: int, op: str, operand: int) -> int:
    return (value + operand) % 10 if op == "+" else (value - operand) % 10


def make_problem(rng: random.Random, min_ops: int = 3, max_ops: int = 6) -> Problem:
    operations = [(rng.choice("+-"), rng.randrange(1, 10)) for _ in range(rng.randint(min_ops, max_ops))]
    return Problem(rng.randrange(10), operations, error_rate=rng.choice([0.04, 0.1, 0.2, 0.35]))


def _check_mistakes(mistakes) -> tuple[str, ...]:
    mistakes = tuple(mistakes) if isinstance(mistakes, (list, tuple)) else mistakes
    if not isinstance(mistakes, tuple) or not mistakes or any(kind not in MISTAKES for kind in mistakes):
        raise ValueError(f"mistakes must be a non-empty sequence of {MISTAKES}, got {mistakes!r}")
    return mistakes


def write_step(problem: Problem, index: int, value: int, rng: random.Random, may_err: bool,
               mistakes: tuple[str, ...] = ("arithmetic",)) -> tuple[str, int, bool]:  # fmt: skip
    """Step `index` of a trajectory that reached `value`: its text, the value it writes, and
    whether it is wrong (only if `may_err`, at the problem's error rate, of a kind in `mistakes`)."""
    op, operand = problem.operations[index]
    wrong = may_err and rng.random() < problem.error_rate
    # One kind draws nothing, so the default keeps the random stream (and every figure) it had.
    kind = None if not wrong else mistakes[0] if len(mistakes) == 1 else rng.choice(mistakes)
    written_value, written_operand = value, operand
    if kind == "copy":
        written_value = (value + rng.choice([1, 9, 2, 8, 5])) % 10
    elif kind == "misread":
        written_operand = rng.choice([b for b in range(1, 10) if b != operand])
    result = _apply(written_value, op, written_operand)
    if kind == "arithmetic":
        result = (result + rng.choice([1, 9, 1, 9, 2, 8, 5])) % 10  # mostly off by one
    return f"{written_value}{op}{written_operand}={result}", result, wrong


def sample(problem: Problem, rng: random.Random, hide_first_error: bool = False,
           mistakes: tuple[str, ...] = ("arithmetic",)) -> Sample:  # fmt: skip
    """One trajectory: at most one wrong step (of a kind drawn from `mistakes`), later steps
    consistent with the wrong value."""
    mistakes = _check_mistakes(mistakes)
    steps, labels, value, first_error = [], [], problem.start, -1
    for index in range(len(problem.operations)):
        step, value, wrong = write_step(problem, index, value, rng, first_error < 0, mistakes)
        if wrong:
            first_error = index
        steps.append(step)
        labels.append(first_error < 0)
    outcome = first_error < 0
    example = PRMExample(problem.question, steps, labels=None if (hide_first_error and not outcome) else labels,
                         outcome=outcome)  # fmt: skip
    return Sample(example, value, first_error)


def make_dataset(count: int, seed: int, hidden_fraction: float = 0.0,
                 mistakes: tuple[str, ...] = ("arithmetic",)) -> list[Sample]:  # fmt: skip
    """`count` trajectories of fresh problems; a `hidden_fraction` of the flawed ones hide z."""
    rng = random.Random(seed)
    return [sample(make_problem(rng), rng, hide_first_error=rng.random() < hidden_fraction, mistakes=mistakes)
            for _ in range(count)]  # fmt: skip


def make_groups(problems: int, per_problem: int, seed: int,
                mistakes: tuple[str, ...] = ("arithmetic",)) -> tuple[list[Problem], list[list[Sample]]]:  # fmt: skip
    """For Best-of-N: `per_problem` sampled trajectories for each of `problems` problems (each
    example's `group` is its problem's index)."""
    rng = random.Random(seed)
    chosen = [make_problem(rng) for _ in range(problems)]
    groups = [[sample(problem, rng, mistakes=mistakes) for _ in range(per_problem)] for problem in chosen]
    for index, group in enumerate(groups):
        for candidate in group:
            candidate.example.group = index
    return chosen, groups


# ---- a model for the task ----------------------------------------------------------------------


def small_model(tokenizer, seed: int, objective: str = "crm"):
    """A ConditionalRewardModel over a 2-layer Llama-style decoder with random weights, built from
    a config (nothing downloaded), trained under `objective`."""
    import torch
    from transformers import AutoModel, LlamaConfig

    from .. import data
    from ..modeling import ConditionalRewardModel

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)  # fmt: skip
    backbone = AutoModel.from_config(config, attn_implementation="sdpa")
    return ConditionalRewardModel(backbone, data.step_token_id(tokenizer, STEP_TAG), objective=objective)


def trained_model(steps: int = 200, seed: int = 0, objective: str = "crm", progress: bool = False,
                  batch_size: int = 64):  # fmt: skip
    """`small_model` under `objective`, trained for `steps` batches of this task's trajectories
    (every first wrong step given; about 20 s on a 2-core CPU at 200 steps) with the examples'
    loop (`crm_kernels.trainer.train`); the model in eval mode and its tokenizer."""
    from ..data import PRMCollator
    from ..trainer import train

    tokenizer = build_tokenizer()
    model = small_model(tokenizer, seed, objective)
    examples = [s.example for s in make_dataset(steps * batch_size, seed)]
    train(model, PRMCollator(tokenizer, STEP_TAG), examples, steps=steps, batch_size=batch_size, lr=2e-3, seed=seed,
          device="cpu", progress=progress)  # fmt: skip
    return model.eval(), tokenizer


def trained_scorer(steps: int = 200, seed: int = 0, progress: bool = False, batch_size: int = 64):
    """A CRMScorer over `trained_model`'s CRM. Responses are scored one word per step, so the
    step separator is a space."""
    from ..integrations import CRMScorer

    model, tokenizer = trained_model(steps, seed, "crm", progress, batch_size)
    return CRMScorer(model, tokenizer, STEP_TAG, step_separator=" ")
