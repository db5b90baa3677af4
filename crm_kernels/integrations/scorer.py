"""Scoring rollouts with a CRM: what every trainer adapter shares.

A trainer hands over (prompt, response) pairs, as text (TRL, OpenRLHF's reward functions) or as
the policy's token ids (verl, OpenRLHF's experience maker). The CRM reads text with its own
tokenizer and step tag, so a response is split into steps at a separator ("\\n\\n" by default),
each step is written followed by the CRM's tag (`crm_kernels.data.encode`), and the model scores
the batch. For token-level rewards the same split is made on the policy's tokens (`step_end_mask`:
a step ends at its last token before a separator, the last step at the response's last token),
so step k of the CRM's input is exactly the policy tokens ending at `step_token_index[k]`.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from .. import rl, scoring, segment
from ..data import PRMExample, collate, encode

if TYPE_CHECKING:  # annotations only: the scorer takes any tokenizer-like object
    from transformers import PreTrainedTokenizerBase

    from ..modeling import ConditionalRewardModel

#: What a trajectory score can be: the CRM's own log S(T) or S(T); "min_reward", the lowest step
#: reward min_t log(1 - h_t) (PURE's min-form return of the first step, 0 without steps); or a
#: PRM aggregation of the step scores 1 - h(t) (`crm_kernels.scoring.aggregate`), where "min" is
#: min_t (1 - h_t), the exponential of "min_reward".
SCORE_KINDS = ("log_survival", "survival", "min_reward", "min", "last", "mean", "product")


@dataclass
class ScoredBatch:
    """A batch of scored trajectories, packed: step k of trajectory b is cu_steps[b] + k."""

    hazard_logits: Tensor  # [N] float32
    cu_steps: Tensor  # [B + 1] int64
    step_rewards: Tensor  # [N] r_t = log(1 - h(t)) (SPEC 6)
    log_survival: Tensor  # [B] log S(T), 0 for a trajectory without steps

    @property
    def num_steps(self) -> Tensor:
        return self.cu_steps.diff()

    def score(self, kind: str = "log_survival") -> Tensor:
        """[B] one number per trajectory (see SCORE_KINDS)."""
        if kind not in SCORE_KINDS:
            raise ValueError(f"score kind must be one of {SCORE_KINDS}, got {kind!r}")
        if kind == "log_survival":
            return self.log_survival
        if kind == "survival":
            return self.log_survival.exp()
        if kind == "min_reward":
            return segment.segment_min(self.step_rewards, self.cu_steps, empty=0.0, validate=False)
        return scoring.aggregate(scoring.step_scores(self.hazard_logits), self.cu_steps, kind, validate=False)


def split_steps(response: str, separator: str) -> list[str]:
    """The steps of a response: the non-blank pieces between separators, stripped."""
    return [piece.strip() for piece in response.split(separator) if piece.strip()]


def token_texts(tokenizer) -> list[str]:
    """The text every token of a tokenizer's vocabulary adds after another token: what step
    boundaries are found in (one pass, cached by `CRMScorer`).

    A token is decoded after a fixed ordinary token and that token's own text is cut off, so the
    space a decoder puts between words (word-level tokenizers) or restores from a "▁" marker
    (SentencePiece, which drops it at the start of a text) is part of the token's text."""
    special = set(tokenizer.all_special_ids)
    anchor = next(token for token in range(len(tokenizer))
                  if token not in special and tokenizer.decode([token]).strip())  # fmt: skip
    prefix = tokenizer.decode([anchor])
    texts = tokenizer.batch_decode([[anchor, token] for token in range(len(tokenizer))], skip_special_tokens=False)
    alone = None
    pieces = []
    for token, text in enumerate(texts):
        if text.startswith(prefix):
            pieces.append(text[len(prefix):])
        else:  # a decoder that rewrote the anchor: fall back to the token alone
            alone = alone or tokenizer.batch_decode([[t] for t in range(len(tokenizer))], skip_special_tokens=False)
            pieces.append(alone[token])
    return pieces


# What a token's own text holds of a separator (`separator_tokens`): some of its characters, an
# occurrence at its start (which closes the step before the token), one after its start (which
# closes the step at the token).
HOLDS_CHARACTER, OPENS_WITH_SEPARATOR, HOLDS_SEPARATOR = 1, 2, 4


def separator_tokens(texts: Sequence[str], separator: str) -> Tensor:
    """[V] int8 flags per token of what its text holds of the separator (the constants above).
    Every token a separator's occurrence overlaps holds one of its characters, so occurrences lie
    within runs of such tokens, and a run of one token is read from its flags alone."""
    characters = set(separator)
    flags = []
    for text in texts:
        flag = 0 if characters.isdisjoint(text) else HOLDS_CHARACTER
        found = text.find(separator)
        while found >= 0:
            flag |= OPENS_WITH_SEPARATOR if found == 0 else HOLDS_SEPARATOR
            found = text.find(separator, found + len(separator))
        flags.append(flag)
    return torch.tensor(flags, dtype=torch.int8)


def step_end_mask(response_ids: Tensor, response_mask: Tensor, texts: Sequence[str], separator: str,
                  flags: Tensor | None = None) -> Tensor:  # fmt: skip
    """[B, L] bool: the response tokens that end a step, each step's last token before a separator
    and the response's last token (the final step needs no separator). Responses are right-padded.

    A tokenizer may write "\\n\\n" as one token, two, merged after punctuation (".\\n\\n") or before
    a word ("\\n\\nThen"): the step ends at the token holding the separator's first character, or
    at the token before it when the separator starts that token (it then opens the next step).
    `flags` is `separator_tokens(texts, separator)`, computed when not given."""
    response_ids, response_mask = response_ids.cpu(), response_mask.cpu().bool()
    if flags is None:
        flags = separator_tokens(texts, separator)
    length = response_mask.sum(1)
    ends = torch.zeros(response_ids.shape, dtype=torch.bool)
    rows = torch.nonzero(length > 0).squeeze(1)
    ends[rows, length[rows] - 1] = True
    token_flags = torch.where(response_mask, flags[response_ids.clamp(0, flags.numel() - 1)].long(), 0)
    hit_rows, hit_columns = (token_flags != 0).nonzero(as_tuple=True)
    if hit_rows.numel() == 0:
        return ends
    # Runs of consecutive tokens holding separator characters; a run of one is read from flags.
    continues = (hit_rows[1:] == hit_rows[:-1]) & (hit_columns[1:] == hit_columns[:-1] + 1)
    alone = torch.ones_like(hit_rows, dtype=torch.bool)
    alone[1:] &= ~continues
    alone[:-1] &= ~continues
    single_flags = token_flags[hit_rows[alone], hit_columns[alone]]
    inside = (single_flags & HOLDS_SEPARATOR) != 0
    ends[hit_rows[alone][inside], hit_columns[alone][inside]] = True
    opening = ((single_flags & OPENS_WITH_SEPARATOR) != 0) & (hit_columns[alone] > 0)
    ends[hit_rows[alone][opening], hit_columns[alone][opening] - 1] = True
    # Longer runs (a separator split over tokens): their text, one Python pass each.
    run_begins = torch.nonzero(torch.cat([torch.ones(1, dtype=torch.bool), ~continues])).squeeze(1)
    run_lengths = torch.diff(run_begins, append=torch.tensor([hit_rows.numel()]))
    long_runs = run_lengths > 1
    if not bool(long_runs.any()):
        return ends
    ids = response_ids.tolist()
    end_rows, end_columns = [], []
    for row, column, count in zip(hit_rows[run_begins[long_runs]].tolist(), hit_columns[run_begins[long_runs]].tolist(),
                                  run_lengths[long_runs].tolist()):  # fmt: skip
        pieces = [texts[token] for token in ids[row][column: column + count]]
        piece_ends = list(itertools.accumulate(len(piece) for piece in pieces))
        joined = "".join(pieces)
        found = joined.find(separator)
        while found >= 0:
            token = bisect.bisect_right(piece_ends, found)
            if found == piece_ends[token] - len(pieces[token]):  # the separator opens this token
                token -= 1
            if column + token >= 0:
                end_rows.append(row)
                end_columns.append(column + token)
            found = joined.find(separator, found + len(separator))
    ends[end_rows, end_columns] = True
    return ends


class CRMScorer:
    """Scores (prompt, steps) with a `ConditionalRewardModel` in batches, without gradients.

    Args:
        model: a ConditionalRewardModel.
        tokenizer: the CRM's tokenizer (may differ from the policy's).
        step_tag: the CRM's step tag text (one token of `tokenizer`).
        step_separator: what separates steps in a response's text.
        batch_size: trajectories per forward pass.
    """

    def __init__(self, model: ConditionalRewardModel, tokenizer: PreTrainedTokenizerBase, step_tag: str, step_separator: str = "\n\n", batch_size: int = 32):
        if not isinstance(step_separator, str) or not step_separator:
            raise ValueError(f"step_separator must be a non-empty string, got {step_separator!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if tokenizer.pad_token_id is None:
            raise ValueError("the CRM tokenizer needs a pad token (set tokenizer.pad_token)")
        self.model = model
        self.tokenizer = tokenizer
        self.step_tag = step_tag
        self.step_separator = step_separator
        self.batch_size = batch_size
        self._token_texts: dict[int, tuple[list[str], Tensor]] = {}

    @classmethod
    def from_pretrained(cls, path: str, step_separator: str = "\n\n", batch_size: int = 32, device=None,
                        **model_kwargs) -> "CRMScorer":  # fmt: skip
        """A CRM saved by `ConditionalRewardModel.save_pretrained` with its tokenizer."""
        from transformers import AutoTokenizer

        from ..modeling import ConditionalRewardModel

        model = ConditionalRewardModel.from_pretrained(path, **model_kwargs)
        if device is not None:
            model.to(device)
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        step_tag = tokenizer.convert_ids_to_tokens(model.step_token_ids[0])
        return cls(model, tokenizer, step_tag, step_separator, batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def score_steps(self, prompts: Sequence[str], steps: Sequence[Sequence[str]]) -> ScoredBatch:
        """Each prompt with its list of step texts -> the packed CRM scores."""
        if len(prompts) != len(steps):
            raise ValueError(f"{len(prompts)} prompts for {len(steps)} step lists")
        # encode() needs an outcome to build an example; it plays no part in the input ids.
        encoded = [encode(PRMExample(prompt, list(trajectory), outcome=True), self.tokenizer, self.step_tag)
                   for prompt, trajectory in zip(prompts, steps)]  # fmt: skip
        hazard_logits, counts = [], []
        for start in range(0, len(encoded), self.batch_size):
            batch = collate(encoded[start: start + self.batch_size], self.tokenizer.pad_token_id,
                            self.model.step_token_ids)  # fmt: skip
            output = self.model(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))
            hazard_logits.append(output.hazard_logits.float())
            counts.append(output.cu_steps.diff())
        device = self.device
        hazard_logits = torch.cat(hazard_logits) if hazard_logits else torch.zeros(0, device=device)
        counts = torch.cat(counts) if counts else torch.zeros(0, dtype=torch.long, device=device)
        expected = torch.tensor([len(trajectory) for trajectory in steps], device=counts.device)
        if not torch.equal(counts, expected):
            bad = int((counts != expected).nonzero()[0, 0])
            raise ValueError(f"trajectory {bad}: the CRM found {int(counts[bad])} steps for {int(expected[bad])} "
                             "written (does a step's text tokenize into the step tag?)")  # fmt: skip
        cu_steps = torch.zeros(len(steps) + 1, dtype=torch.long, device=device)
        torch.cumsum(counts, 0, out=cu_steps[1:])
        step_rewards, log_survival = rl.step_rewards(hazard_logits, cu_steps, validate=False)
        return ScoredBatch(hazard_logits, cu_steps, step_rewards, log_survival)

    def score_responses(self, prompts: Sequence[str], responses: Sequence[str]) -> ScoredBatch:
        """Text responses, split into steps at the separator."""
        return self.score_steps(prompts, [split_steps(response, self.step_separator) for response in responses])

    def score_tokens(self, prompts: Sequence[str], response_ids: Tensor, response_mask: Tensor,
                     policy_tokenizer) -> tuple[ScoredBatch, Tensor]:  # fmt: skip
        """Responses as the policy's right-padded token ids [B, L] -> (scores, step_token_index
        [N]): the response column of each step's last token, for `crm_kernels.rl.to_token_level`.

        The steps are cut in the policy's token space (`step_end_mask`) and each span is decoded,
        so that rewards land on the policy tokens that wrote the step."""
        if response_ids.dim() != 2 or response_mask.shape != response_ids.shape:
            raise ValueError(f"response_ids and response_mask must be [B, L] of one shape, got "
                             f"{tuple(response_ids.shape)} and {tuple(response_mask.shape)}")  # fmt: skip
        if len(prompts) != response_ids.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {response_ids.shape[0]} responses")
        key = id(policy_tokenizer)
        if key not in self._token_texts:
            texts = token_texts(policy_tokenizer)
            self._token_texts[key] = (texts, separator_tokens(texts, self.step_separator))
        texts, flags = self._token_texts[key]
        ends = step_end_mask(response_ids, response_mask, texts, self.step_separator, flags)
        rows, columns = ends.nonzero(as_tuple=True)
        starts = torch.zeros_like(columns)
        follows = rows[1:] == rows[:-1]
        starts[1:][follows] = columns[:-1][follows] + 1
        ids = response_ids.cpu().tolist()
        # Decoding is per step: text is the CRM's input, and tokenizers offer no batched slicing.
        spans = [ids[row][start: end + 1] for row, start, end in zip(rows.tolist(), starts.tolist(), columns.tolist())]
        step_texts = policy_tokenizer.batch_decode(spans, skip_special_tokens=True)
        steps = [[] for _ in range(len(prompts))]
        keep = []
        for index, (row, text) in enumerate(zip(rows.tolist(), step_texts)):
            text = text.replace(self.step_separator, " ").strip()
            if text:
                steps[row].append(text)
                keep.append(index)
        # A span that decodes to nothing (a bare separator, an EOS) is not a step: the CRM never
        # sees it and it gets no reward.
        scored = self.score_steps(prompts, steps)
        return scored, columns[keep].to(scored.cu_steps.device)


def token_rewards(scored: ScoredBatch, step_token_index: Tensor, response_length: int) -> Tensor:
    """[B, L] the CRM step rewards at their steps' last tokens, zero elsewhere (verl's
    `token_level_scores`, OpenRLHF's per-token rewards): they sum over a row to log S(T)."""
    return rl.to_token_level(scored.step_rewards, scored.cu_steps, step_token_index, response_length, validate=False)
