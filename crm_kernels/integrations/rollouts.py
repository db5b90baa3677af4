"""Scoring rollouts with a CRM: what every trainer adapter shares.

A trainer hands over (prompt, response) pairs, as text (TRL, OpenRLHF's reward functions) or as
the policy's token ids (verl, OpenRLHF's experience maker). The CRM reads text with its own
tokenizer and step tag, so a response is split into steps at a separator ("\\n\\n" by default),
each step is written followed by the CRM's tag (`crm_kernels.data.encode`), and the model scores
the batch. For token-level rewards the same split is made on the policy's tokens (`step_end_mask`:
a step ends at its last token before a separator, the last step at the response's last token),
so step k of the CRM's input is exactly the policy tokens ending at `step_token_index[k]`
(the splitting itself is in `steps.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from .. import rl, scoring, segment
from ..data import PRMExample, collate, encode
from .steps import separator_tokens, split_steps, step_end_mask, token_texts

if TYPE_CHECKING:  # annotations only: the scorer takes any tokenizer-like object
    from transformers import PreTrainedTokenizerBase

    from ..modeling import ConditionalRewardModel

#: What a trajectory score can be: the CRM's own log S(T) or S(T); "min_reward", the lowest step
#: reward min_t log(1 - h_t) (PURE's min-form return of the first step, 0 without steps); or a
#: PRM aggregation of the step scores 1 - h(t) (`crm_kernels.scoring.aggregate`), where "min" is
#: min_t (1 - h_t), the exponential of "min_reward".
SCORE_KINDS = ("log_survival", "survival", "min_reward", *(a for a in scoring.AGGREGATIONS if a != "log_survival"))


@dataclass
class ScoredBatch:
    """A batch of scored trajectories, packed: step k of trajectory b is cu_steps[b] + k."""

    hazard_logits: Tensor  # [N] float32
    cu_steps: Tensor  # [B + 1] int64
    step_rewards: Tensor  # [N] r_t = log(1 - h(t)) (SPEC 6)
    log_survival_total: Tensor  # [B] log S(T), 0 for a trajectory without steps (per step: rl.step_rewards)

    @property
    def num_steps(self) -> Tensor:
        return self.cu_steps.diff()

    def score(self, kind: str = "log_survival") -> Tensor:
        """[B] one number per trajectory (see SCORE_KINDS)."""
        if kind not in SCORE_KINDS:
            raise ValueError(f"score kind must be one of {SCORE_KINDS}, got {kind!r}")
        if kind == "log_survival":
            return self.log_survival_total
        if kind == "survival":
            return self.log_survival_total.exp()
        if kind == "min_reward":
            return segment.segment_min(self.step_rewards, self.cu_steps, empty=0.0, validate=False)
        return scoring.aggregate(scoring.step_scores(self.hazard_logits), self.cu_steps, kind, validate=False)


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
        objective = getattr(model, "objective", "crm")
        if objective != "crm":
            # Its rewards are log(1 - h(t)) of hazard logits: another objective's logits mean something else.
            raise ValueError(f"CRMScorer turns a CRM's hazards into rewards, and this model was trained with "
                             f"objective={objective!r}: rank its outputs with model.ranking_score")  # fmt: skip
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
