"""An OpenRLHF reward-function file for a CRM: pass its path to OpenRLHF (0.11.2).

    CRM_PATH=/path/to/crm CRM_POLICY_PATH=/path/to/policy \\
        python -m openrlhf.cli.train_ppo_ray ... --reward.remote_url python/openrlhf_crm_reward.py

OpenRLHF's agent executor imports this file and calls `reward_func(queries, prompts, labels)`;
the CRM (saved by `ConditionalRewardModel.save_pretrained`, with its tokenizer) is loaded on the
first call. OpenRLHF decodes each query with skip_special_tokens=False: the special-token texts of
the tokenizer at CRM_POLICY_PATH (the policy, OpenRLHF's --pretrain; the CRM's own tokenizer when
unset) are dropped, so that an EOS is not read as part of the last step.
CRM_SCORE picks the reward: log_survival (default), survival, min, last, mean, product.
CRM_STEP_SEPARATOR (default a blank line) and CRM_DEVICE are optional.
"""

import functools
import os

from crm_kernels.integrations import CRMScorer
from crm_kernels.integrations.openrlhf import make_reward_func


@functools.cache
def _reward_func():
    scorer = CRMScorer.from_pretrained(os.environ["CRM_PATH"], step_separator=os.environ.get("CRM_STEP_SEPARATOR", "\n\n"),
                                       device=os.environ.get("CRM_DEVICE"))  # fmt: skip
    special_tokens = scorer.tokenizer.all_special_tokens
    if os.environ.get("CRM_POLICY_PATH"):
        from transformers import AutoTokenizer

        special_tokens = AutoTokenizer.from_pretrained(os.environ["CRM_POLICY_PATH"]).all_special_tokens
    return make_reward_func(scorer, os.environ.get("CRM_SCORE", "log_survival"), special_tokens)


def reward_func(queries, prompts, labels=None, **kwargs):
    return _reward_func()(queries, prompts, labels, **kwargs)
