"""An OpenRLHF reward-function file for a CRM: pass its path to OpenRLHF.

    CRM_PATH=/path/to/crm CRM_STEP_SEPARATOR=$'\\n\\n' \\
        python -m openrlhf.cli.train_ppo_ray ... --remote_rm_url python/openrlhf_crm_reward.py

OpenRLHF imports this file and calls `reward_func(queries, prompts, labels)`; the CRM (saved by
`ConditionalRewardModel.save_pretrained`, with its tokenizer) is loaded on the first call.
CRM_SCORE picks the reward: log_survival (default), survival, min, last, mean, product.
"""

import functools
import os

from crm_kernels.integrations import CRMScorer
from crm_kernels.integrations.openrlhf import make_reward_func


@functools.cache
def _reward_func():
    scorer = CRMScorer.from_pretrained(os.environ["CRM_PATH"], step_separator=os.environ.get("CRM_STEP_SEPARATOR", "\n\n"),
                                       device=os.environ.get("CRM_DEVICE"))  # fmt: skip
    return make_reward_func(scorer, os.environ.get("CRM_SCORE", "log_survival"))


def reward_func(queries, prompts, labels=None, **kwargs):
    return _reward_func()(queries, prompts, labels, **kwargs)
