"""CRM rewards inside RL trainers: verl, OpenRLHF and TRL adapters over one `CRMScorer`.

None of the trainers is imported here; each adapter module imports only what it registers with.
"""

from .rollouts import SCORE_KINDS, CRMScorer, ScoredBatch, token_rewards
from .steps import split_steps, step_end_mask, token_texts

__all__ = ["SCORE_KINDS", "CRMScorer", "ScoredBatch", "token_texts", "split_steps", "step_end_mask",
           "token_rewards"]
