"""ConditionalRewardModel: a CRM head over any Hugging Face transformers backbone.

The backbone reads the question and steps; at each step tag the head gives the hazard logit x_t,
h(t) = sigmoid(x_t) (SPEC 1). Two heads:

- "value": a float32 Linear(hidden, 1) on the tag's last hidden state.
- "tokens": for PRMs that score a step with two vocabulary tokens (Math-Shepherd's '+'/'-', PQM,
  Qwen-style two-class heads), x_t = logit(bad) - logit(good) at the tag, so that
  h(t) = softmax over {good, bad} of bad. Only those two rows of the LM head are used, never the
  full vocabulary.

Everything per step is packed (SPEC 2): hazard_logits, log_survival and step_positions are [N],
cu_steps is [B + 1]. h(t) must depend only on the question and steps up to t (beam search scores
prefixes), so a backbone whose hidden states see later tokens is refused unless
allow_bidirectional=True.

The same head trains under the paper's baselines too (`objective="prm" | "orm" | "pqm"`, SPEC 7):
`loss` then computes that objective and `ranking_score` ranks by what its logits mean.
"""

from .causal import sees_later_tokens
from .heads import HEADS, TokenHead, ValueHead
from .model import CONFIG_NAME, HEAD_WEIGHTS_NAME, OBJECTIVES, RANKED_BY, ConditionalRewardModel, CRMOutput

__all__ = ["CONFIG_NAME", "HEADS", "HEAD_WEIGHTS_NAME", "OBJECTIVES", "RANKED_BY", "CRMOutput",
           "ConditionalRewardModel", "TokenHead", "ValueHead", "sees_later_tokens"]
