"""Whether a backbone is causal: h(t) must depend only on the question and the steps up to t
(SPEC 1; beam search scores prefixes), so ConditionalRewardModel refuses a backbone whose hidden
states see later tokens unless told otherwise."""

from __future__ import annotations

import torch


def text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def sees_later_tokens(backbone) -> bool:
    """Whether the backbone's hidden state at a position depends on tokens after it.

    Decided by running it: change the last token of a short random input and see whether any
    earlier hidden state moves. That holds for any architecture, including decoders configured
    as encoders (BERT with is_decoder=False) and the reverse.
    """
    config = text_config(backbone.config)
    if getattr(backbone.config, "is_encoder_decoder", False):
        return True
    parameter = next(backbone.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    if device.type == "meta":
        raise ValueError("cannot tell whether a backbone on the meta device is causal: load its weights first, "
                         "or pass allow_bidirectional=True to skip the check")  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    probe = torch.randint(0, config.vocab_size, (1, 8), generator=generator).to(device)
    altered = probe.clone()
    altered[0, -1] = (probe[0, -1] + 1) % config.vocab_size
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            base = backbone.base_model
            before = base(input_ids=probe).last_hidden_state[0, :-1].float()
            after = base(input_ids=altered).last_hidden_state[0, :-1].float()
    finally:
        backbone.train(was_training)
    return not torch.allclose(before, after, rtol=1e-3, atol=1e-4)
