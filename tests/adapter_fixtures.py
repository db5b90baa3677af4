"""What the trainer-adapter tests share: a byte-level BPE tokenizer trained here (it splits "\\n\\n"
in different ways, as real ones do), a tiny random CRM over it, and random trajectories."""

import pytest
import torch
import transformers

from crm_kernels import ConditionalRewardModel
from crm_kernels.integrations import CRMScorer

SEP, TAG = "\n\n", "<step>"
WORDS = ["Add 3 and 4.", "Then subtract 2", "so x = 5", "The answer is 5.", "check: 5 - 2 = 3", "ok"]


def build_tokenizer():
    """A byte-level BPE tokenizer (any text encodes) with pad, eos and the step tag."""
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
def tokenizer():
    return build_tokenizer()


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


@pytest.fixture(scope="module")
def crm_folder(scorer, tokenizer, tmp_path_factory):
    """The CRM saved as users save one, with its tokenizer (the trainers' tests load it by path;
    its tokenizer also serves as their policy's)."""
    folder = tmp_path_factory.mktemp("crm")
    scorer.model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
