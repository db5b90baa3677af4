"""ConditionalRewardModel and its output (the package docstring says what it computes)."""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers.utils import ModelOutput

from .. import ops, scoring
from ..data import hard_step_labels
from .._numerics import softplus
from ..segment import segment_ids, segment_last, segment_min, segment_sum
from ..step_tags import find_step_ends, find_step_ends_packed
from .causal import sees_later_tokens, text_config
from .heads import HEADS, TokenHead, ValueHead

CONFIG_NAME = "crm_config.json"
HEAD_WEIGHTS_NAME = "crm_head.safetensors"

# The objectives the head trains under (SPEC 3 and 7), and the aggregation of crm_kernels.scoring
# each ranks trajectories by: log S(T) for CRM (the head's logits are hazards); for the baselines
# the head's logit is the objective's own (step correct for PRM, answer correct at the last step
# for ORM, Q-values for PQM), ranked through its sigmoid, which keeps their order: the product
# of step probabilities (PRM), the last step (ORM), the minimum Q-value (PQM).
OBJECTIVES = ("crm", "prm", "orm", "pqm")
RANKED_BY = {"crm": "log_survival", "prm": "product", "orm": "last", "pqm": "min"}


@dataclass
class CRMOutput(ModelOutput):
    """Packed CRM outputs of one batch.

    hazard_logits: [N] float32 x_t of every step, trajectory by trajectory.
    cu_steps: [B + 1] int64 offsets of each row's steps.
    step_positions: [N] int64 token index (column in input_ids) of each step's tag.
    log_survival: [N] log S(t), the prefix score of the trajectory up to and including step t.
    score: [B] log S(T), the outcome score (0 for a row without steps).
    past_key_values: the backbone's cache when use_cache=True, to extend beams incrementally.
    """

    hazard_logits: Tensor | None = None
    cu_steps: Tensor | None = None
    step_positions: Tensor | None = None
    log_survival: Tensor | None = None
    score: Tensor | None = None
    past_key_values: Any = None


class ConditionalRewardModel(nn.Module):
    """A CRM over a transformers backbone (`AutoModel` or `AutoModelForCausalLM`).

    Args:
        backbone: a PreTrainedModel whose base model returns `last_hidden_state`.
        step_token_id: the id of the step tag (or a list of ids, any of which ends a step).
        head: "value" (float32 Linear on the hidden state) or "tokens" (two LM-head rows).
        good_token_id: the "tokens" head's token for a correct step.
        bad_token_id: the "tokens" head's token for a wrong step (the hazard logit is
            bad minus good).
        allow_bidirectional: accept a backbone whose hidden states see later tokens (an encoder);
            its hazards then depend on later steps, which beam search and SPEC 1 do not allow.
        objective: what `loss` trains: "crm" (crm_loss), or the paper's baselines "prm", "orm",
            "pqm" (SPEC 7) on the same head; `ranking_score` ranks by what each objective means.
    """

    def __init__(self, backbone: nn.Module, step_token_id: int | list[int], *, head: str = "value", good_token_id: int | None = None,
                 bad_token_id: int | None = None, allow_bidirectional: bool = False, objective: str = "crm"):  # fmt: skip
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.objective = objective
        if not hasattr(backbone, "config") or not hasattr(backbone, "base_model"):
            raise TypeError(f"backbone must be a transformers PreTrainedModel, got {type(backbone).__name__}")
        self.step_token_ids = [step_token_id] if isinstance(step_token_id, int) else [int(i) for i in step_token_id]
        if not self.step_token_ids:
            raise ValueError("step_token_id must be an id or a non-empty list of ids")
        if not allow_bidirectional and sees_later_tokens(backbone):
            raise ValueError(
                f"{type(backbone).__name__} is bidirectional: its hidden state at a step tag sees later steps, so "
                "h(t) would depend on the future (SPEC 1) and prefix scores for beam search would be wrong. Use a "
                "causal (decoder) backbone, or pass allow_bidirectional=True to accept this."
            )
        self.backbone = backbone
        self._takes_position_ids = "position_ids" in inspect.signature(backbone.base_model.forward).parameters
        self.head = head
        self.allow_bidirectional = allow_bidirectional
        self.good_token_id, self.bad_token_id = good_token_id, bad_token_id
        if head == "value":
            hidden_size = text_config(backbone.config).hidden_size
            self.value_head = ValueHead(hidden_size, device=next(backbone.parameters()).device)
        else:
            if good_token_id is None or bad_token_id is None:
                raise ValueError("head='tokens' needs good_token_id and bad_token_id")
            if backbone.get_output_embeddings() is None:
                raise ValueError(f"head='tokens' needs an LM head; {type(backbone).__name__} has none "
                                 "(load it with AutoModelForCausalLM)")  # fmt: skip
            self.token_head = TokenHead(backbone.get_output_embeddings(), good_token_id, bad_token_id)

    @property
    def score_head(self) -> nn.Module:
        """The hazard head (heads.py): ValueHead or TokenHead."""
        return self.value_head if self.head == "value" else self.token_head

    def hazard_logits(self, step_hidden: Tensor) -> Tensor:
        """[N, H] hidden states at the step tags -> [N] float32 hazard logits."""
        return self.score_head(step_hidden)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, *, past_key_values=None,
                use_cache: bool = False, cu_seq_lens: Tensor | None = None, **backbone_kwargs) -> CRMOutput:  # fmt: skip
        """Scores every step tag of `input_ids` [B, L].

        With `past_key_values`, input_ids holds only the new tokens and attention_mask covers the
        cached ones too (as in transformers); steps and positions then refer to the new tokens.

        Padding-free: `input_ids` [1, T] holds the sequences back to back (HF's
        `DataCollatorWithFlattening` layout, `data.PRMCollator(..., padding_free=True)`) and
        `cu_seq_lens` [B + 1] their offsets; position ids restart at each sequence. A backbone on a
        flash-attention implementation keeps the sequences apart by those position ids; any other
        gets a block-diagonal causal mask of T x T (transformers' sdpa and eager attention read
        position ids as positions only). step_positions then index the T packed tokens.
        """
        if cu_seq_lens is not None:
            return self._forward_packed(input_ids, cu_seq_lens, attention_mask, past_key_values, use_cache,
                                        backbone_kwargs)  # fmt: skip
        if attention_mask is not None and "position_ids" not in backbone_kwargs and self._takes_position_ids:
            # Count positions from each row's first real token, so that a left-padded row is read
            # exactly as the same row right-padded (transformers' generate() does the same).
            positions = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
            backbone_kwargs["position_ids"] = positions[:, -input_ids.shape[1]:]
        outputs = self.backbone.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                           past_key_values=past_key_values, use_cache=use_cache,
                                           **backbone_kwargs)  # fmt: skip
        step_mask = None if attention_mask is None else attention_mask[:, -input_ids.shape[1]:]
        cu_steps, step_positions = find_step_ends(input_ids, step_mask, self.step_token_ids)
        rows = segment_ids(cu_steps, step_positions.numel())
        return self._output(outputs.last_hidden_state[rows, step_positions], cu_steps, step_positions,
                            outputs.past_key_values if use_cache else None)  # fmt: skip

    def _output(self, step_hidden: Tensor, cu_steps: Tensor, step_positions: Tensor, past_key_values) -> CRMOutput:
        hazard_logits = self.hazard_logits(step_hidden)
        # The offsets were built here from a mask or valid sequence offsets: valid by construction.
        log_survival = ops.log_survival(hazard_logits, cu_steps, validate=False)
        return CRMOutput(
            hazard_logits=hazard_logits,
            cu_steps=cu_steps,
            step_positions=step_positions,
            log_survival=log_survival,
            score=segment_last(log_survival, cu_steps, empty=0.0, validate=False),
            past_key_values=past_key_values,
        )

    def _forward_packed(self, input_ids: Tensor, cu_seq_lens: Tensor, attention_mask, past_key_values, use_cache,
                        backbone_kwargs) -> CRMOutput:  # fmt: skip
        if attention_mask is not None or past_key_values is not None or use_cache:
            raise ValueError("cu_seq_lens (padding-free input) takes no attention_mask, past_key_values or use_cache")
        cu_steps, step_positions = find_step_ends_packed(input_ids, cu_seq_lens, self.step_token_ids)
        input_ids = input_ids.reshape(1, -1)
        tokens = input_ids.shape[1]
        sequence = segment_ids(cu_seq_lens, tokens)
        position_ids = torch.arange(tokens, device=input_ids.device) - cu_seq_lens[:-1].long()[sequence]
        backbone_kwargs.setdefault("position_ids", position_ids[None])
        attention = str(getattr(self.backbone.config, "_attn_implementation", "") or "")
        if "flash" not in attention:
            index = torch.arange(tokens, device=input_ids.device)
            allowed = (sequence[:, None] == sequence[None, :]) & (index[None, :] <= index[:, None])
            dtype = next(self.backbone.parameters()).dtype
            backbone_kwargs["attention_mask"] = torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[None, None]
        outputs = self.backbone.base_model(input_ids=input_ids, **backbone_kwargs)
        return self._output(outputs.last_hidden_state[0, step_positions], cu_steps, step_positions, None)

    def loss(self, output: CRMOutput, outcome: Tensor, first_error: Tensor | None = None, *,
             step_labels: Tensor | None = None, **loss_kwargs):  # fmt: skip
        """The model's objective on this output's logits: `crm_loss` (SPEC 3), or `prm_loss`,
        `orm_loss`, `pqm_loss` (SPEC 7). PRM takes `step_labels` (soft labels), else the hard ones
        of `data.hard_step_labels`; PQM needs the first wrong step of every flawed trajectory.
        Keyword arguments go to the loss (reduction, normalizer, ...)."""
        logits, cu_steps = output.hazard_logits, output.cu_steps
        if self.objective == "crm":
            return ops.crm_loss(logits, cu_steps, outcome, first_error, **loss_kwargs)
        if self.objective == "orm":
            return ops.orm_loss(logits, cu_steps, outcome, **loss_kwargs)
        if first_error is None and (self.objective == "pqm" or step_labels is None):
            raise ValueError(f"objective {self.objective!r} needs first_error (or step_labels for 'prm')")
        if self.objective == "prm":
            if step_labels is None:
                step_labels = hard_step_labels(cu_steps, outcome, first_error)
            return ops.prm_loss(logits, cu_steps, step_labels.to(logits.dtype), **loss_kwargs)
        unknown = ~outcome.bool() & (first_error < 0)
        if bool(unknown.any()):
            raise ValueError(f"objective 'pqm' ranks each flawed trajectory's steps around its first wrong step, and "
                             f"trajectory {int(unknown.nonzero()[0, 0])} (outcome 0) has first_error -1")  # fmt: skip
        return ops.pqm_loss(logits, cu_steps, first_error, **loss_kwargs)

    def ranking_score(self, output: CRMOutput) -> Tensor:
        """[B] the score this objective ranks trajectories by (RANKED_BY), higher better: log S(T)
        for CRM, else `crm_kernels.scoring.aggregate` of the sigmoid of the head's logits. Best-of-N
        (`scoring.best_of_n`) and beam selection take it whatever the objective."""
        if self.objective == "crm":
            return output.score
        probabilities = output.hazard_logits.float().sigmoid()
        return scoring.aggregate(probabilities, output.cu_steps, RANKED_BY[self.objective], validate=False)

    def log_outcome_probability(self, output: CRMOutput) -> Tensor:
        """[B] the log of this objective's probability that the trajectory's answer is right (0 for a
        row without steps): log S(T) for CRM; for the baselines the log of `ranking_score`'s
        aggregation of the step sigmoids, taken in log space (log sigmoid(x) = -softplus(-x), finite
        where the sigmoid underflows): the sum over steps for PRM, the last step for ORM, the minimum
        for PQM. It orders trajectories as `ranking_score` does; an RL reward takes it
        (python/grpo_crm.py)."""
        if self.objective == "crm":
            return output.score
        log_sigmoid = -softplus(-output.hazard_logits.float())
        how = RANKED_BY[self.objective]
        if how == "product":
            return segment_sum(log_sigmoid, output.cu_steps, validate=False)
        reduce = segment_last if how == "last" else segment_min
        return reduce(log_sigmoid, output.cu_steps, empty=0.0, validate=False)

    def first_error(self, output: CRMOutput) -> Tensor:
        """[B] int64 the step this objective places each trajectory's first mistake at (0-based,
        -1 for a row without steps): argmax_t p(z = t) for CRM (`scoring.most_likely_first_error`);
        for the baselines, whose sigmoid is a probability that the prefix so far is right (PRM's
        step label, ORM's outcome read at every step, PQM's Q-value), the step where it falls
        most (`scoring.largest_drop`)."""
        if self.objective == "crm":
            return scoring.most_likely_first_error(output.hazard_logits, output.cu_steps, validate=False)
        return scoring.largest_drop(output.hazard_logits.float().sigmoid(), output.cu_steps, validate=False)

    # -----------------------------------------------------------------------------------------
    def _settings(self) -> dict:
        return {
            "step_token_ids": self.step_token_ids,
            "head": self.head,
            "good_token_id": self.good_token_id,
            "bad_token_id": self.bad_token_id,
            "allow_bidirectional": self.allow_bidirectional,
            "objective": self.objective,
            "backbone_class": type(self.backbone).__name__,
        }

    def save_pretrained(self, save_directory: str, **backbone_kwargs) -> None:
        """The backbone as transformers saves it, plus crm_config.json and the value head."""
        from safetensors.torch import save_file

        os.makedirs(save_directory, exist_ok=True)
        self.backbone.save_pretrained(save_directory, **backbone_kwargs)
        with open(os.path.join(save_directory, CONFIG_NAME), "w") as f:
            json.dump(self._settings(), f, indent=2)
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.score_head.state_dict().items()}
        if state:  # the value head's weights; the token head's rows are the backbone's
            save_file(state, os.path.join(save_directory, HEAD_WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, name_or_path: str, step_token_id=None, *, head: str | None = None,
                        good_token_id: int | None = None, bad_token_id: int | None = None,
                        allow_bidirectional: bool | None = None, objective: str | None = None,
                        **backbone_kwargs) -> "ConditionalRewardModel":  # fmt: skip
        """A directory written by `save_pretrained` (settings from it, arguments given here win),
        or any backbone name/path (a new head; step_token_id is then required)."""
        import transformers

        config_path = os.path.join(name_or_path, CONFIG_NAME)
        saved = {}
        if os.path.isfile(config_path):
            with open(config_path) as f:
                saved = json.load(f)
        given = {"step_token_id": step_token_id, "head": head, "good_token_id": good_token_id,
                 "bad_token_id": bad_token_id, "allow_bidirectional": allow_bidirectional, "objective": objective}  # fmt: skip
        settings = {
            "step_token_id": saved.get("step_token_ids"),
            "head": saved.get("head", "value"),
            "good_token_id": saved.get("good_token_id"),
            "bad_token_id": saved.get("bad_token_id"),
            "allow_bidirectional": saved.get("allow_bidirectional", False),
            "objective": saved.get("objective", "crm"),
        }
        settings.update({key: value for key, value in given.items() if value is not None})
        if settings["step_token_id"] is None:
            raise ValueError(f"{name_or_path} has no {CONFIG_NAME}: pass step_token_id")
        default_class = "AutoModelForCausalLM" if settings["head"] == "tokens" else "AutoModel"
        backbone_class = getattr(transformers, saved.get("backbone_class", default_class))
        backbone = backbone_class.from_pretrained(name_or_path, **backbone_kwargs)
        model = cls(backbone, settings.pop("step_token_id"), **settings)
        head_path = os.path.join(name_or_path, HEAD_WEIGHTS_NAME)
        if os.path.isfile(head_path):
            from safetensors.torch import load_file

            device = next(model.backbone.parameters()).device
            model.score_head.load_state_dict(load_file(head_path, device=str(device)))
        return model
