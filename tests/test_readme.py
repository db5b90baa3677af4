"""Every Python block of the README runs, in order, in one namespace, as a reader runs them.

A block that starts with `# given: a, b (...), c` takes those names from the reader's own code;
GIVEN below provides each (a block naming one it does not know fails). SUBSTITUTION, the only one:
the README loads "Qwen/Qwen2.5-0.5B" from the Hub, which cannot be reached here, so
`from_pretrained` of that name returns a tiny Llama built from a config and a byte-level tokenizer
trained in the test; every other `from_pretrained` (the README's own saved "my_crm") is real.
The bash recipes of the trainers are run by tests/test_verl.py and tests/test_openrlhf.py.
"""

import re
import types
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from adapter_fixtures import build_tokenizer  # noqa: E402

README = Path(__file__).resolve().parent.parent / "README.md"
HUB_MODEL = "Qwen/Qwen2.5-0.5B"


def readme_blocks():
    text = README.read_text()
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in re.finditer(r"```python\n(.*?)```", text, re.S)]


def given_names(code: str) -> list[str]:
    first = code.splitlines()[0]
    if not first.startswith("# given:"):
        return []
    parts = re.sub(r"\([^)]*\)", "", first.removeprefix("# given:")).split(";")[0].split(",")
    return [re.match(r"\s*([A-Za-z_]\w*)", part).group(1) for part in parts if part.strip()]


def _packed_batch(namespace):
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([3, 0, 5, 1, 4])
    namespace["cu_steps"] = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    namespace["logits"] = torch.randn(int(lengths.sum()), generator=generator).requires_grad_()
    namespace["outcome"] = torch.tensor([True, True, False, True, False])
    namespace["first_error"] = torch.tensor([-1, -1, 2, -1, -1])


def _experience(namespace):
    """An OpenRLHF Experience's fields for one rollout: prompt then response tokens, action_mask
    after the prompt and shifted by one (OpenRLHF's layout)."""
    tokenizer = namespace["tokenizer"]
    prompt, response = "2 + 3 * 4 = ?", "3 * 4 = 12\n\n2 + 12 = 14"
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    sequences = torch.tensor([prompt_ids + response_ids])
    action_mask = torch.zeros_like(sequences)
    action_mask[:, len(prompt_ids):] = 1
    action_mask = action_mask[:, 1:]
    namespace["experience"] = types.SimpleNamespace(prompts=[prompt], sequences=sequences, action_mask=action_mask,
                                                    kl=torch.rand(action_mask.shape) * action_mask)  # fmt: skip


GIVEN = {
    "logits": _packed_batch, "cu_steps": _packed_batch, "outcome": _packed_batch, "first_error": _packed_batch,
    "scores": lambda ns: ns.update(scores=torch.tensor([-1.2, -0.3, -2.0, -0.1, -0.7, -0.4])),
    "correct": lambda ns: ns.update(correct=torch.tensor([False, True, False, True, True, False])),
    "cu_groups": lambda ns: ns.update(cu_groups=torch.tensor([0, 3, 6])),
    "values": lambda ns: ns.update(values=torch.zeros(ns["batch"]["input_ids"].shape)),
    "verifier": lambda ns: ns.update(verifier=lambda prompts, completions, **kwargs: [float("14" in c) for c in completions]),
    "experience": _experience,
    "kl_coef": lambda ns: ns.update(kl_coef=0.05),
}  # fmt: skip


@pytest.fixture
def hub_substitution(monkeypatch):
    """SUBSTITUTION: HUB_MODEL is a tiny Llama from a config and a tokenizer trained here."""
    real_model, real_tokenizer = transformers.AutoModel.from_pretrained, transformers.AutoTokenizer.from_pretrained
    tokenizer = build_tokenizer()

    def model(name, *args, **kwargs):
        if name != HUB_MODEL:
            return real_model(name, *args, **kwargs)
        torch.manual_seed(0)
        config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
        return transformers.LlamaModel(config)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda name, *a, **k: tokenizer if name == HUB_MODEL else real_tokenizer(name, *a, **k))  # fmt: skip


def test_every_python_block_runs_in_order(hub_substitution, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the README saves "my_crm" in the working directory
    blocks = readme_blocks()
    assert len(blocks) >= 9
    namespace = {"__name__": "readme"}
    for line, code in blocks:
        for name in given_names(code):
            assert name in GIVEN, f"README.md:{line} says it is given {name!r}, which this test does not provide"
            if name not in namespace:
                GIVEN[name](namespace)
        try:
            exec(compile(code, f"README.md:{line}", "exec"), namespace)
        except Exception as error:
            pytest.fail(f"the README's Python block at line {line} raised {type(error).__name__}: {error}")
    # What the blocks promise, checked on what they computed.
    assert namespace["loss"].ndim == 0 and torch.isfinite(namespace["loss"])
    assert torch.isfinite(namespace["step_loss"])
    metrics = namespace["metrics"]  # CRMTrainer.evaluate over 20 groups of 8 candidates
    assert metrics["eval_flawed_with_known_first_error"] > 0 and metrics["eval_loss"] > 0
    assert 0 <= metrics["eval_best_of_n_random"] <= metrics["eval_best_of_n_oracle"] <= 1
    assert 0 <= metrics["eval_localization_accuracy"] <= 1
    expected = namespace["scorer"].score_responses(namespace["experience"].prompts, ["3 * 4 = 12\n\n2 + 12 = 14"])
    torch.testing.assert_close(namespace["rewards"].sum(), expected.log_survival_total.sum(), rtol=1e-5, atol=1e-6)
