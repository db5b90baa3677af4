"""Trainer adapters: the shared CRMScorer, verl (reward manager, min-form estimator, registration),
OpenRLHF (reward_func, per-token reward) and TRL (reward_funcs), against manual computations.

verl and OpenRLHF are not installed: their call shapes are reproduced by stand-ins that follow
their documented signatures (verl's DataProto fields and registries, OpenRLHF's reward_func and
compute_reward). A byte-level BPE tokenizer trained here splits "\\n\\n" in different ways, as
real ones do.
"""

import importlib
import sys
import types

import pytest
import torch

transformers = pytest.importorskip("transformers")

from crm_kernels import ConditionalRewardModel, reference, rl  # noqa: E402
from crm_kernels.data import PRMExample, collate, encode  # noqa: E402
from crm_kernels.integrations import CRMScorer, split_steps, step_end_mask, token_rewards, token_texts  # noqa: E402
from crm_kernels.integrations.openrlhf import compute_process_reward, make_reward_func  # noqa: E402
from crm_kernels.integrations.trl import make_grpo_reward_func  # noqa: E402

SEP, TAG = "\n\n", "<step>"
WORDS = ["Add 3 and 4.", "Then subtract 2", "so x = 5", "The answer is 5.", "check: 5 - 2 = 3", "ok"]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<eos>", TAG],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    backend.train_from_iterator([SEP.join(WORDS) + SEP + " ".join(WORDS)] * 20, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                                additional_special_tokens=[TAG])  # fmt: skip


@pytest.fixture(scope="module")
def word_tokenizer():
    """A word-level tokenizer whose decoder puts the spaces between tokens (no token holds one)."""
    import synthetic_arithmetic

    return synthetic_arithmetic.build_tokenizer()


@pytest.fixture(scope="module")
def scorer(tokenizer):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=256)  # fmt: skip
    model = ConditionalRewardModel(transformers.LlamaModel(config).eval(), tokenizer.convert_tokens_to_ids(TAG))
    torch.nn.init.normal_(model.value_head.weight, std=1.0)  # hazards spread over (0, 1)
    return CRMScorer(model.eval(), tokenizer, TAG, SEP, batch_size=3)


def random_trajectories(seed, count=7):
    """Prompts and step lists: one without steps, one with a single step, the rest 2-6 steps."""
    generator = torch.Generator().manual_seed(seed)
    prompts, steps = [], []
    for index in range(count):
        n = 0 if index == 0 else 1 if index == 1 else int(torch.randint(2, 7, (1,), generator=generator))
        picks = torch.randint(len(WORDS), (n + 1,), generator=generator).tolist()
        prompts.append(f"Question {index}: {WORDS[picks[0]]}")
        steps.append([WORDS[p] for p in picks[1:]])
    return prompts, steps


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
    torch.testing.assert_close(scored.log_survival.double(), log_survival, rtol=1e-5, atol=1e-5)
    assert scored.num_steps.tolist() == [len(s) for s in steps]
    torch.testing.assert_close(scored.step_rewards, -torch.nn.functional.softplus(scored.hazard_logits))
    assert scored.log_survival[0] == 0  # no steps: nothing failed
    torch.testing.assert_close(scored.score("survival"), scored.log_survival.exp())
    minimum = [min(torch.sigmoid(-x).item() for x in chunk) if len(chunk) else 1.0
               for chunk in scored.hazard_logits.split(scored.num_steps.tolist())]  # fmt: skip
    torch.testing.assert_close(scored.score("min"), torch.tensor(minimum))


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
    torch.testing.assert_close(rewards.sum(1), scored.log_survival, rtol=1e-5, atol=1e-6)
    for row, trajectory in enumerate(steps):
        # Each step's reward sits on the token that finishes its text.
        columns = rewards[row].nonzero().squeeze(1).tolist()
        assert len(columns) == len(trajectory)
        for k, column in enumerate(columns):
            decoded = tokenizer.decode(ids[row, : column + 1])
            assert decoded.rstrip().endswith(trajectory[k].rstrip()), (decoded, trajectory[k])


# ---------------------------------------------------------------------------------------------
# verl, through stand-ins for DataProto and the two registries


class DataProto:
    """verl's DataProto as reward managers read it: tensors in .batch, the rest in .non_tensor_batch."""

    def __init__(self, batch, non_tensor_batch):
        self.batch, self.non_tensor_batch = batch, non_tensor_batch

    def __len__(self):
        return self.batch["responses"].shape[0]


def verl_batch(tokenizer, prompts, steps):
    """Prompts left-padded, responses right-padded, one attention mask over both (verl's layout)."""
    rows = [torch.tensor(tokenizer(p, add_special_tokens=False)["input_ids"], dtype=torch.long) for p in prompts]
    prompt_ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=tokenizer.pad_token_id,
                                                 padding_side="left")  # fmt: skip
    prompt_mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in rows], batch_first=True,
                                                  padding_side="left")  # fmt: skip
    texts, response_ids, response_mask = responses_as_policy_tokens(tokenizer, steps, [SEP] * len(steps))
    batch = {"prompts": prompt_ids, "responses": response_ids,
             "attention_mask": torch.cat([prompt_mask, response_mask], 1)}  # fmt: skip
    non_tensor = {"data_source": ["toy"] * len(prompts),
                  "reward_model": [{"ground_truth": "5"} for _ in prompts]}  # fmt: skip
    return DataProto(batch, non_tensor), texts, response_mask


def test_verl_reward_manager(scorer, tokenizer):
    from crm_kernels.integrations.verl import CRMRewardManager

    prompts, steps = random_trajectories(5)
    data, texts, response_mask = verl_batch(tokenizer, prompts, steps)
    calls = []

    def compute_score(data_source, solution_str, ground_truth, extra_info=None):
        calls.append((data_source, solution_str, ground_truth))
        return {"score": float(ground_truth in solution_str)}

    manager = CRMRewardManager(tokenizer, 0, compute_score, "data_source", scorer=scorer, outcome_weight=2.0)
    result = manager(data, return_dict=True)
    reward_tensor, extra = result["reward_tensor"], result["reward_extra_info"]
    assert reward_tensor.shape == data.batch["responses"].shape
    expected = scorer.score_steps(prompts, steps)
    outcome = torch.tensor([float("5" in t) for t in texts])
    torch.testing.assert_close(reward_tensor.sum(1), expected.log_survival + 2.0 * outcome, rtol=1e-5, atol=1e-6)
    assert [c[1] for c in calls] == texts and extra["outcome_score"] == outcome.tolist()
    assert extra["crm_num_steps"] == [len(s) for s in steps] and len(extra["crm_log_survival"]) == len(steps)
    assert not reward_tensor[~response_mask.bool()].any()  # nothing on padding
    assert not reward_tensor[0].any()  # the empty response
    torch.testing.assert_close(manager(data), reward_tensor)  # return_dict=False: the tensor alone


def test_verl_reward_manager_arguments(scorer, tokenizer):
    from crm_kernels.integrations.verl import CRMRewardManager

    with pytest.raises(ValueError, match="exactly one"):
        CRMRewardManager(tokenizer, 0)
    with pytest.raises(TypeError, match="unknown reward_kwargs"):
        CRMRewardManager(tokenizer, 0, scorer=scorer, crm_pth="x")


def loop_min_form(token_level_rewards, response_mask, temperature=None):
    """PURE min-form per row with Python loops: steps are the nonzero rewards."""
    returns = torch.zeros_like(token_level_rewards)
    for row in range(token_level_rewards.shape[0]):
        ends = [t for t in range(token_level_rewards.shape[1])
                if response_mask[row, t] and token_level_rewards[row, t] != 0]  # fmt: skip
        values = [float(token_level_rewards[row, t]) for t in ends]
        if temperature is not None and values:
            weights = torch.softmax(-torch.tensor(values, dtype=torch.float64) / temperature, 0).tolist()
            values = [w * v for w, v in zip(weights, values)]
        start = 0
        for k, end in enumerate(ends):
            rest = values[k:]
            step_return = min(rest) if temperature is None else sum(rest)
            for t in range(start, end + 1):
                returns[row, t] = step_return if response_mask[row, t] else 0.0
            start = end + 1
    return returns


@pytest.mark.parametrize("temperature", [None, 0.5])
def test_verl_min_form_estimator(temperature):
    from crm_kernels.integrations.verl import min_form_advantage

    generator = torch.Generator().manual_seed(7)
    rewards = -torch.rand(6, 30, generator=generator).double()
    rewards[torch.rand(6, 30, generator=generator) < 0.75] = 0.0  # step ends are sparse
    mask = (torch.arange(30) < torch.tensor([0, 1, 30, 12, 25, 7])[:, None]).long()
    rewards[1] = 0.0  # a response whose one token carries no step
    config = {} if temperature is None else {"crm_temperature": temperature}
    advantages, returns = min_form_advantage(rewards * mask, mask, index=None, config=config)
    expected = loop_min_form(rewards * mask, mask, temperature)
    torch.testing.assert_close(returns, expected)
    torch.testing.assert_close(advantages, returns)


@pytest.fixture
def fake_verl(monkeypatch):
    """verl's two registries as its modules define them (register / register_adv_est)."""
    # Imported before verl "exists", so that the test's reload is the only registration (a first
    # import there followed by the reload would register two different class objects).
    importlib.import_module("crm_kernels.integrations.verl")
    reward_managers, estimators = {}, {}

    def registering_into(registry):
        """verl's decorator factories: a second, different entry under one name is an error."""

        def register(name):
            def decorator(entry):
                if name in registry and registry[name] != entry:
                    raise ValueError(f"{name} has already been registered")
                registry[name] = entry
                return entry

            return decorator

        return register

    register, register_adv_est = registering_into(reward_managers), registering_into(estimators)

    modules = {
        "verl": {}, "verl.trainer": {}, "verl.trainer.ppo": {}, "verl.workers": {},
        "verl.trainer.ppo.core_algos": {"ADV_ESTIMATOR_REGISTRY": estimators, "register_adv_est": register_adv_est},
        "verl.workers.reward_manager": {"register": register},
        "verl.workers.reward_manager.registry": {"REWARD_MANAGER_REGISTRY": reward_managers},
    }  # fmt: skip
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
    yield reward_managers, estimators
    monkeypatch.undo()
    importlib.reload(importlib.import_module("crm_kernels.integrations.verl"))


def test_verl_registration_on_import(fake_verl, scorer, tokenizer):
    reward_managers, estimators = fake_verl
    module = importlib.reload(importlib.import_module("crm_kernels.integrations.verl"))
    assert reward_managers["crm"] is module.CRMRewardManager
    assert estimators["crm_min_form"] is module.min_form_advantage
    assert module.register()  # importing twice (each verl worker does) is not a conflict
    # verl's own call of a registered estimator (ray_trainer.compute_advantage).
    prompts, steps = random_trajectories(6)
    data, _, response_mask = verl_batch(tokenizer, prompts, steps)
    rewards = reward_managers["crm"](tokenizer, 0, None, "data_source", scorer=scorer)(data)
    advantages, returns = estimators["crm_min_form"](token_level_rewards=rewards, response_mask=response_mask,
                                                     config={}, index=["uid"] * len(prompts))  # fmt: skip
    torch.testing.assert_close(returns, loop_min_form(rewards, response_mask))


# ---------------------------------------------------------------------------------------------
# OpenRLHF and TRL


def test_openrlhf_reward_func(scorer):
    prompts, steps = random_trajectories(8)
    queries = [p + "\n" + SEP.join(s) for p, s in zip(prompts, steps)]
    reward_func = make_reward_func(scorer)
    result = reward_func(queries=queries, prompts=prompts, labels=["5"] * len(prompts))
    expected = scorer.score_steps(prompts, steps)
    assert set(result) == {"rewards", "scores", "extra_logs"}
    torch.testing.assert_close(result["rewards"], expected.log_survival)
    torch.testing.assert_close(result["scores"], expected.log_survival.exp())
    assert result["extra_logs"]["crm_num_steps"].tolist() == [len(s) for s in steps]
    with pytest.raises(ValueError, match="does not start with"):
        reward_func(queries=["other text"], prompts=["prompt"], labels=None)
    with pytest.raises(ValueError, match="score must be"):
        make_reward_func(scorer, "median")


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
    torch.testing.assert_close(torch.tensor(rewards), expected.log_survival)
    assert metrics["crm/num_steps"] == pytest.approx(sum(map(len, steps)) / len(steps))
    assert reward_func.__name__ == "crm_log_survival"
    # Conversational: lists of messages, the assistant's content is the completion.
    chat_prompts = [[{"role": "system", "content": "be brief"}, {"role": "user", "content": p}] for p in prompts]
    chat_completions = [[{"role": "assistant", "content": c}] for c in completions]
    assert reward_func(prompts=chat_prompts, completions=chat_completions) == pytest.approx(rewards, abs=1e-6)
    penalized = make_grpo_reward_func(scorer, "survival", empty_score=-1.0)(prompts=prompts, completions=completions)
    assert penalized[0] == -1.0 and penalized[1:] == pytest.approx(expected.log_survival.exp()[1:].tolist(), abs=1e-6)
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
    """python/rl_rewards_demo.py on the word-level task: verl's token rewards, read back per row,
    are the log S(T) that TRL's and OpenRLHF's reward functions return for the same texts."""
    import rl_rewards_demo

    out = rl_rewards_demo.main(["--crm-steps", "20", "--problems", "3", "--samples", "3"])
    torch.testing.assert_close(out["reward_tensor"].sum(1), torch.tensor(out["trl"]), rtol=1e-5, atol=1e-5)
    assert (out["reward_tensor"] != 0).sum(1).tolist() == [len(s) for s in out["steps"]]


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
    torch.testing.assert_close(result["rewards"], expected.log_survival)
