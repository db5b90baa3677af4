"""The two hazard heads: [N, H] hidden states at the step tags -> [N] float32 hazard logits x_t.

- ValueHead ("value"): a float32 Linear(hidden, 1), kept float32 when the backbone is cast (it is
  small, and the hazard logits it produces are what the losses' numerics are stated for).
- TokenHead ("tokens"): for PRMs that score a step with two vocabulary tokens (Math-Shepherd's
  '+'/'-', PQM, Qwen-style two-class heads), x_t = logit(bad) - logit(good), so that
  h(t) = softmax over {good, bad} of bad. Only those two rows of the LM head are read.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

HEADS = ("value", "tokens")


class ValueHead(nn.Linear):
    def __init__(self, hidden_size: int, device=None):
        super().__init__(hidden_size, 1, dtype=torch.float32, device=device)

    def forward(self, step_hidden: Tensor) -> Tensor:
        return super().forward(step_hidden.float()).squeeze(-1)

    def _apply(self, fn, recurse=True):
        # model.to(torch.bfloat16) casts the backbone; this head casts back to float32.
        super()._apply(fn, recurse)
        return super()._apply(lambda t: t.float() if t.is_floating_point() else t, recurse)


class TokenHead(nn.Module):
    """Reads two rows of the backbone's LM head; it holds no parameters of its own (the LM head
    stays the backbone's: it is kept out of this module's state so it is saved once)."""

    def __init__(self, lm_head: nn.Module, good_token_id: int, bad_token_id: int):
        super().__init__()
        vocab = lm_head.weight.shape[0]
        for name, token in (("good_token_id", good_token_id), ("bad_token_id", bad_token_id)):
            if not isinstance(token, int) or not 0 <= token < vocab:
                raise ValueError(f"{name} = {token} is outside the LM head's {vocab} rows")
        self._lm_head = (lm_head,)  # a tuple: not registered as a submodule
        self.good_token_id, self.bad_token_id = good_token_id, bad_token_id

    def forward(self, step_hidden: Tensor) -> Tensor:
        (lm_head,) = self._lm_head
        rows = lm_head.weight[[self.bad_token_id, self.good_token_id]].float()
        logits = step_hidden.float() @ (rows[0] - rows[1])
        if getattr(lm_head, "bias", None) is not None:
            bias = lm_head.bias[[self.bad_token_id, self.good_token_id]].float()
            logits = logits + (bias[0] - bias[1])
        return logits
