"""Trainer adapters: the shared CRMScorer, the adapters' own rules (OpenRLHF's reward_func and
per-token reward: bad input, clipping; TRL's reward_funcs), against manual computations. The
adapters inside the trainers themselves: tests/test_verl.py and tests/test_openrlhf.py (the
installed verl and OpenRLHF); TRL's GRPOTrainer: tests/test_grpo_crm.py.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

import crm_kernels  # noqa: E402
from crm_kernels import ConditionalRewardModel, reference, rl  # noqa: E402
from crm_kernels.integrations import SCORE_KINDS  # noqa: E402
from crm_kernels.data import PRMExample, collate, encode  # noqa: E402
from crm_kernels.integrations import CRMScorer, split_steps, step_end_mask, token_rewards, token_texts  # noqa: E402
from crm_kernels.integrations.openrlhf import compute_process_reward, make_reward_func  # noqa: E402
from crm_kernels.integrations.trl import make_grpo_reward_func  # noqa: E402

from adapter_fixtures import SEP, TAG, WORDS, random_trajectories, scorer, tokenizer  # noqa: E402,F401


@pytest.fixture(scope="module")
def word_tokenizer():
    """A word-level tokenizer whose decoder puts the spaces between tokens (no token holds one)."""
    from crm_kernels.tasks import arithmetic

    return arithmetic.build_tokenizer()


def manual_scores(scorer, prompts, steps):
    """One trajectory at a time, through the model and the fp64 reference."""
    hazard_logits, log_survival = [], []
    for prompt, trajectory in zip(prompts, steps):
        batch = collate([encode(PRMExample(prompt, trajectory, outcome=True), scorer.tokenizer, TAG)],
                        scorer.tokenizer.pad_token_id, scorer.model.step_token_ids)  # fmt: skip
        with torch.no_grad():
            logits = scorer.model(batch["input_ids"], batch["attention_mask"]).hazard_logits
        assert logits.numel() == len(trajectory)
        hazard_logits.append(logits)
        log_survival.append(float(-reference.softplus(logits.double()).sum()))
    return torch.cat(hazard_logits), torch.tensor(log_survival, dtype=torch.float64)


def responses_as_policy_tokens(tokenizer, steps, separators):
    """Each step list written as a response with the given separators, right-padded ids + mask."""
    texts = [sep.join(trajectory) for trajectory, sep in zip(steps, separators)]
    rows = [torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"] or [], dtype=torch.long) for text in texts]
    ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=tokenizer.pad_token_id)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in rows], batch_first=True)
    return texts, ids, mask


# ---------------------------------------------------------------------------------------------
# CRMScorer


def test_split_steps():
    assert split_steps("a\n\n b \n\n\n\nc\n\n", SEP) == ["a", "b", "c"]
    assert split_steps("  \n\n ", SEP) == []
    assert split_steps("one step", SEP) == ["one step"]


@pytest.mark.parametrize("seed", [0, 1])
def test_score_steps_matches_one_at_a_time(scorer, seed):
    prompts, steps = random_trajectories(seed)
    scored = scorer.score_steps(prompts, steps)
    hazard_logits, log_survival = manual_scores(scorer, prompts, steps)
    torch.testing.assert_close(scored.hazard_logits, hazard_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scored.log_survival_total.double(), log_survival, rtol=1e-5, atol=1e-5)
    assert scored.num_steps.tolist() == [len(s) for s in steps]
    torch.testing.assert_close(scored.step_rewards, -torch.nn.functional.softplus(scored.hazard_logits))
    assert scored.log_survival_total[0] == 0  # no steps: nothing failed
    torch.testing.assert_close(scored.score("survival"), scored.log_survival_total.exp())
    minimum = [min(torch.sigmoid(-x).item() for x in chunk) if len(chunk) else 1.0
               for chunk in scored.hazard_logits.split(scored.num_steps.tolist())]  # fmt: skip
    torch.testing.assert_close(scored.score("min"), torch.tensor(minimum))
    # PURE's min-form return of the first step: the lowest log(1 - h_t), 0 without steps; exp of "min".
    lowest = [min(-torch.nn.functional.softplus(x).item() for x in chunk) if len(chunk) else 0.0
              for chunk in scored.hazard_logits.double().split(scored.num_steps.tolist())]  # fmt: skip
    torch.testing.assert_close(scored.score("min_reward").double(), torch.tensor(lowest, dtype=torch.float64),
                               rtol=1e-6, atol=1e-7)  # fmt: skip
    torch.testing.assert_close(scored.score("min_reward").exp(), scored.score("min"), rtol=1e-5, atol=1e-7)


def test_score_responses_splits_text(scorer):
    prompts, steps = random_trajectories(3)
    scored = scorer.score_responses(prompts, ["\n\n" + SEP.join(s) + "\n\n" for s in steps])
    torch.testing.assert_close(scored.hazard_logits, scorer.score_steps(prompts, steps).hazard_logits)


def test_scorer_rejects_bad_input(scorer, tokenizer):
    with pytest.raises(ValueError, match="prompts for"):
        scorer.score_steps(["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="step tag"):
        scorer.score_steps(["a"], [[f"x {TAG} y"]])
    with pytest.raises(ValueError, match="step_separator"):
        CRMScorer(scorer.model, tokenizer, TAG, "")
    with pytest.raises(ValueError, match="batch_size"):
        CRMScorer(scorer.model, tokenizer, TAG, SEP, batch_size=0)
    scorer.model.objective = "prm"  # a model trained as a PRM: its logits are not hazards
    try:
        with pytest.raises(ValueError, match="trained with objective='prm'"):
            CRMScorer(scorer.model, tokenizer, TAG, SEP)
    finally:
        scorer.model.objective = "crm"


def reference_step_ends(tokenizer, token_ids, separator):
    """Character offsets of each token from decoding growing prefixes; a step ends at the token
    holding a separator's first character, or the one before when the separator starts it."""
    starts = [len(tokenizer.decode(token_ids[:k])) for k in range(len(token_ids) + 1)]
    text = tokenizer.decode(token_ids)
    ends = [False] * len(token_ids)
    found = text.find(separator)
    while found >= 0:
        token = max(k for k in range(len(token_ids)) if starts[k] <= found)
        if starts[token] == found:
            token -= 1
        if token >= 0:
            ends[token] = True
        found = text.find(separator, found + len(separator))
    if token_ids:
        ends[-1] = True
    return ends


@pytest.mark.parametrize("which", ["bpe", "word_level"])
def test_step_end_mask_finds_separators_however_tokenized(tokenizer, word_tokenizer, which):
    if which == "bpe":
        policy, separator = tokenizer, SEP
        texts = ["Add 3.\n\nThen 4\n\n so", "x\n\n\n\ny", "", "no separator", "ends\n\n", "\n\nstarts"]
    else:  # words joined by the decoder's spaces, each word a step
        policy, separator = word_tokenizer, " "
        texts = ["3+4=7 7-2=5 5+1=6", "Q", "", "1+1=2 [UNK] 2+2=4"]
    rows = [policy(t, add_special_tokens=False)["input_ids"] for t in texts]
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(r, dtype=torch.long) for r in rows], batch_first=True)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(r), dtype=torch.long) for r in rows], batch_first=True)
    ends = step_end_mask(ids, mask, token_texts(policy), separator)
    for row, token_ids in enumerate(rows):
        assert ends[row, : len(token_ids)].tolist() == reference_step_ends(policy, token_ids, separator), texts[row]
        assert not ends[row, len(token_ids):].any()
    if which == "word_level":
        assert ends[0, :3].tolist() == [True, True, True]


def test_step_end_mask_on_a_hand_made_vocabulary(seed):
    """Tokens holding the separator inside, at their start, twice, split over two tokens, or
    a lone character of it, in random sequences; against the rule applied to the joined text."""
    texts = ["a", "b c", ".\n\n", "\n\n", "\n", "x\n", "\ny", "\n\nThe", "\n\n\n\n", "q\n\nr", "<eos>"]
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(texts), (16, 40), generator=generator)
    mask = torch.arange(40)[None, :] < torch.randint(0, 41, (16, 1), generator=generator)
    ends = step_end_mask(ids, mask, texts, SEP)
    for row in range(16):
        tokens = ids[row][mask[row]].tolist()
        starts = [sum(len(texts[t]) for t in tokens[:k]) for k in range(len(tokens))]
        text = "".join(texts[t] for t in tokens)
        expected = [False] * len(tokens)
        found = text.find(SEP)
        while found >= 0:
            token = max(k for k in range(len(tokens)) if starts[k] <= found)
            token -= starts[token] == found
            if token >= 0:
                expected[token] = True
            found = text.find(SEP, found + len(SEP))
        if tokens:
            expected[-1] = True
        assert ends[row].tolist() == expected + [False] * (40 - len(tokens))


def test_score_tokens_places_rewards_on_step_ends(scorer, tokenizer):
    prompts, steps = random_trajectories(4, count=9)
    # Different separator spellings: "\n\n" alone, merged with a space, and repeated.
    separators = [SEP, SEP + " ", SEP + SEP] * 3
    texts, ids, mask = responses_as_policy_tokens(tokenizer, steps, separators)
    scored, step_token_index = scorer.score_tokens(prompts, ids, mask, tokenizer)
    expected = scorer.score_steps(prompts, steps)
    torch.testing.assert_close(scored.hazard_logits, expected.hazard_logits)
    assert torch.equal(scored.cu_steps, expected.cu_steps)
    rewards = token_rewards(scored, step_token_index, ids.shape[1])
    torch.testing.assert_close(rewards.sum(1), scored.log_survival_total, rtol=1e-5, atol=1e-6)
    for row, trajectory in enumerate(steps):
        # Each step's reward sits on the token that finishes its text.
        columns = rewards[row].nonzero().squeeze(1).tolist()
        assert len(columns) == len(trajectory)
        for k, column in enumerate(columns):
            decoded = tokenizer.decode(ids[row, : column + 1])
            assert decoded.rstrip().endswith(trajectory[k].rstrip()), (decoded, trajectory[k])


def test_scoring_checks_no_values_inside(scorer, tokenizer, monkeypatch):
    """Validation happens once, at the public boundary: the scorer builds cu_steps itself, so no
    inner call re-checks them (each value check is a device sync on a GPU). Every value rule of
    crm_kernels._validate ends in _raise_first_failure or the C++ pass; both are counted."""
    from crm_kernels import _validate

    calls = []
    for name in ("_raise_first_failure", "_compiled_check_passes"):
        checked = getattr(_validate, name)
        monkeypatch.setattr(_validate, name, lambda *args, _checked=checked, _name=name: calls.append(_name) or _checked(*args))
    prompts, steps = random_trajectories(5, count=6)
    texts, ids, mask = responses_as_policy_tokens(tokenizer, steps, [SEP] * 6)
    scored, step_token_index = scorer.score_tokens(prompts, ids, mask, tokenizer)
    token_rewards(scored, step_token_index, ids.shape[1])
    for kind in SCORE_KINDS:
        scored.score(kind)
    assert calls == []
    crm_kernels.segment.segment_sum(scored.step_rewards, scored.cu_steps)  # the public boundary does check
    assert calls == ["_raise_first_failure"]


# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# OpenRLHF and TRL


def test_openrlhf_reward_func(scorer):
    prompts, steps = random_trajectories(8)
    queries = [p + "\n" + SEP.join(s) for p, s in zip(prompts, steps)]
    reward_func = make_reward_func(scorer)
    result = reward_func(queries=queries, prompts=prompts, labels=["5"] * len(prompts))
    expected = scorer.score_steps(prompts, steps)
    assert set(result) == {"rewards", "scores", "extra_logs"}
    torch.testing.assert_close(result["rewards"], expected.log_survival_total)
    torch.testing.assert_close(result["scores"], expected.log_survival_total.exp())
    assert result["extra_logs"]["crm_num_steps"].tolist() == [len(s) for s in steps]
    with pytest.raises(ValueError, match="does not start with"):
        reward_func(queries=["other text"], prompts=["prompt"], labels=None)
    with pytest.raises(ValueError, match="score must be"):
        make_reward_func(scorer, "median")
    with pytest.raises(TypeError, match="special_tokens"):
        make_reward_func(scorer, special_tokens="<eos>")
    # Special-token texts (OpenRLHF decodes queries with them) are dropped from the responses.
    with_eos = make_reward_func(scorer, special_tokens=["<eos>", "<pad>"])(
        queries=[q + "<eos><pad>" for q in queries], prompts=prompts)  # fmt: skip
    torch.testing.assert_close(with_eos["rewards"], expected.log_survival_total)


def test_openrlhf_process_reward():
    generator = torch.Generator().manual_seed(9)
    token_rewards, kl = -torch.rand(4, 10, generator=generator), torch.randn(4, 10, generator=generator)
    action_mask = torch.rand(4, 10, generator=generator) < 0.8
    reward = compute_process_reward(token_rewards * 3, 0.1, kl, action_mask, reward_clip_range=(-1.0, 1.0))
    for b in range(4):
        for t in range(10):
            value = max(-1.0, min(1.0, 3 * float(token_rewards[b, t]))) - 0.1 * float(kl[b, t])
            assert float(reward[b, t]) == pytest.approx(value if action_mask[b, t] else 0.0, abs=1e-6)
    torch.testing.assert_close(compute_process_reward(token_rewards, -1.0, kl, action_mask),
                               torch.where(action_mask, token_rewards, 0.0))  # fmt: skip
    with pytest.raises(ValueError, match="shape"):
        compute_process_reward(token_rewards[:, :5], 0.1, kl, action_mask)


def test_trl_reward_func(scorer):
    prompts, steps = random_trajectories(10)
    completions = [SEP.join(s) for s in steps]
    metrics = {}
    reward_func = make_grpo_reward_func(scorer)
    rewards = reward_func(prompts=prompts, completions=completions, completion_ids=None,
                          log_metric=lambda name, value: metrics.setdefault(name, value))  # fmt: skip
    expected = scorer.score_steps(prompts, steps)
    assert isinstance(rewards, list) and len(rewards) == len(prompts)
    torch.testing.assert_close(torch.tensor(rewards), expected.log_survival_total)
    assert metrics["crm/num_steps"] == pytest.approx(sum(map(len, steps)) / len(steps))
    assert reward_func.__name__ == "crm_log_survival"
    # Conversational: lists of messages, the assistant's content is the completion.
    chat_prompts = [[{"role": "system", "content": "be brief"}, {"role": "user", "content": p}] for p in prompts]
    chat_completions = [[{"role": "assistant", "content": c}] for c in completions]
    assert reward_func(prompts=chat_prompts, completions=chat_completions) == pytest.approx(rewards, abs=1e-6)
    penalized = make_grpo_reward_func(scorer, "survival", empty_score=-1.0)(prompts=prompts, completions=completions)
    assert penalized[0] == -1.0 and penalized[1:] == pytest.approx(expected.log_survival_total.exp()[1:].tolist(), abs=1e-6)
    with pytest.raises(TypeError, match="list of messages"):
        reward_func(prompts=[3], completions=["x"])


def test_to_token_spans_against_loop():
    generator = torch.Generator().manual_seed(11)
    counts = [0, 1, 4, 3]
    cu_steps = torch.tensor([0, 0, 1, 5, 8])
    ends = [[], [5], [0, 2, 3, 9], [1, 4, 6]]
    values = torch.randn(8, generator=generator)
    spans = rl.to_token_spans(values, cu_steps, torch.tensor(sum(ends, [])), 12)
    for row, row_ends in enumerate(ends):
        start = 0
        expected = torch.zeros(12)
        for k, end in enumerate(row_ends):
            expected[start: end + 1] = values[int(cu_steps[row]) + k]
            start = end + 1
        torch.testing.assert_close(spans[row], expected)
    assert sum(counts) == values.numel()
    with pytest.raises(ValueError, match="increase"):
        rl.to_token_spans(values[:2], torch.tensor([0, 2]), torch.tensor([3, 3]), 12)


def test_rl_rewards_demo_adapters_agree():
    """python/rl_rewards_demo.py on the word-level task: the per-token step rewards, read back per
    row, are the log S(T) that TRL's and OpenRLHF's reward functions return for the same texts."""
    import rl_rewards_demo

    out = rl_rewards_demo.main(["--crm-steps", "20", "--problems", "3", "--samples", "3"])
    torch.testing.assert_close(out["token_rewards"].sum(1), torch.tensor(out["trl"]), rtol=1e-5, atol=1e-5)
    assert (out["token_rewards"] != 0).sum(1).tolist() == [len(s) for s in out["steps"]]


def test_scorer_from_pretrained_and_openrlhf_reward_file(scorer, tokenizer, tmp_path, monkeypatch):
    """A CRM saved with its tokenizer loads into CRMScorer, and the OpenRLHF reward file serves it."""
    scorer.model.save_pretrained(str(tmp_path))
    tokenizer.save_pretrained(str(tmp_path))
    loaded = CRMScorer.from_pretrained(str(tmp_path), step_separator=SEP)
    assert loaded.step_tag == TAG
    prompts, steps = random_trajectories(12)
    expected = scorer.score_steps(prompts, steps)
    torch.testing.assert_close(loaded.score_steps(prompts, steps).hazard_logits, expected.hazard_logits)
    monkeypatch.setenv("CRM_PATH", str(tmp_path))
    import openrlhf_crm_reward

    result = openrlhf_crm_reward.reward_func([p + SEP.join(s) for p, s in zip(prompts, steps)], prompts)
    torch.testing.assert_close(result["rewards"], expected.log_survival_total)
