"""Splitting a response into steps, as text and on the policy's tokens.

A step ends at its last token before a separator ("\\n\\n" by default), the last step at the
response's last token; `step_end_mask` finds those tokens from the tokenizer's own token texts in
context, so that step k of the CRM's input is exactly the policy tokens ending at
`step_token_index[k]`.
"""

from __future__ import annotations

import bisect
import itertools
from typing import Sequence

import torch
from torch import Tensor


def split_steps(response: str, separator: str) -> list[str]:
    """The steps of a response: the non-blank pieces between separators, stripped."""
    return [piece.strip() for piece in response.split(separator) if piece.strip()]


def token_texts(tokenizer) -> list[str]:
    """The text every token of a tokenizer's vocabulary adds after another token: what step
    boundaries are found in (one pass, cached by `CRMScorer`).

    A token is decoded after a fixed ordinary token and that token's own text is cut off, so the
    space a decoder puts between words (word-level tokenizers) or restores from a "▁" marker
    (SentencePiece, which drops it at the start of a text) is part of the token's text."""
    special = set(tokenizer.all_special_ids)
    anchor = next(token for token in range(len(tokenizer))
                  if token not in special and tokenizer.decode([token]).strip())  # fmt: skip
    prefix = tokenizer.decode([anchor])
    texts = tokenizer.batch_decode([[anchor, token] for token in range(len(tokenizer))], skip_special_tokens=False)
    alone = None
    pieces = []
    for token, text in enumerate(texts):
        if text.startswith(prefix):
            pieces.append(text[len(prefix):])
        else:  # a decoder that rewrote the anchor: fall back to the token alone
            alone = alone or tokenizer.batch_decode([[t] for t in range(len(tokenizer))], skip_special_tokens=False)
            pieces.append(alone[token])
    return pieces


# What a token's own text holds of a separator (`separator_tokens`): some of its characters, an
# occurrence at its start (which closes the step before the token), one after its start (which
# closes the step at the token).
HOLDS_CHARACTER, OPENS_WITH_SEPARATOR, HOLDS_SEPARATOR = 1, 2, 4


def separator_tokens(texts: Sequence[str], separator: str) -> Tensor:
    """[V] int8 flags per token of what its text holds of the separator (the constants above).
    Every token a separator's occurrence overlaps holds one of its characters, so occurrences lie
    within runs of such tokens, and a run of one token is read from its flags alone."""
    characters = set(separator)
    flags = []
    for text in texts:
        flag = 0 if characters.isdisjoint(text) else HOLDS_CHARACTER
        found = text.find(separator)
        while found >= 0:
            flag |= OPENS_WITH_SEPARATOR if found == 0 else HOLDS_SEPARATOR
            found = text.find(separator, found + len(separator))
        flags.append(flag)
    return torch.tensor(flags, dtype=torch.int8)


def step_end_mask(response_ids: Tensor, response_mask: Tensor, texts: Sequence[str], separator: str,
                  flags: Tensor | None = None) -> Tensor:  # fmt: skip
    """[B, L] bool: the response tokens that end a step, each step's last token before a separator
    and the response's last token (the final step needs no separator). Responses are right-padded.

    A tokenizer may write "\\n\\n" as one token, two, merged after punctuation (".\\n\\n") or before
    a word ("\\n\\nThen"): the step ends at the token holding the separator's first character, or
    at the token before it when the separator starts that token (it then opens the next step).
    `flags` is `separator_tokens(texts, separator)`, computed when not given."""
    response_ids, response_mask = response_ids.cpu(), response_mask.cpu().bool()
    if flags is None:
        flags = separator_tokens(texts, separator)
    length = response_mask.sum(1)
    ends = torch.zeros(response_ids.shape, dtype=torch.bool)
    rows = torch.nonzero(length > 0).squeeze(1)
    ends[rows, length[rows] - 1] = True
    token_flags = torch.where(response_mask, flags[response_ids.clamp(0, flags.numel() - 1)].long(), 0)
    hit_rows, hit_columns = (token_flags != 0).nonzero(as_tuple=True)
    if hit_rows.numel() == 0:
        return ends
    # Runs of consecutive tokens holding separator characters; a run of one is read from flags.
    continues = (hit_rows[1:] == hit_rows[:-1]) & (hit_columns[1:] == hit_columns[:-1] + 1)
    alone = torch.ones_like(hit_rows, dtype=torch.bool)
    alone[1:] &= ~continues
    alone[:-1] &= ~continues
    single_flags = token_flags[hit_rows[alone], hit_columns[alone]]
    inside = (single_flags & HOLDS_SEPARATOR) != 0
    ends[hit_rows[alone][inside], hit_columns[alone][inside]] = True
    opening = ((single_flags & OPENS_WITH_SEPARATOR) != 0) & (hit_columns[alone] > 0)
    ends[hit_rows[alone][opening], hit_columns[alone][opening] - 1] = True
    # Longer runs (a separator split over tokens): their text, one Python pass each.
    run_begins = torch.nonzero(torch.cat([torch.ones(1, dtype=torch.bool), ~continues])).squeeze(1)
    run_lengths = torch.diff(run_begins, append=torch.tensor([hit_rows.numel()]))
    long_runs = run_lengths > 1
    if not bool(long_runs.any()):
        return ends
    ids = response_ids.tolist()
    end_rows, end_columns = [], []
    for row, column, count in zip(hit_rows[run_begins[long_runs]].tolist(), hit_columns[run_begins[long_runs]].tolist(),
                                  run_lengths[long_runs].tolist()):  # fmt: skip
        pieces = [texts[token] for token in ids[row][column: column + count]]
        piece_ends = list(itertools.accumulate(len(piece) for piece in pieces))
        joined = "".join(pieces)
        found = joined.find(separator)
        while found >= 0:
            token = bisect.bisect_right(piece_ends, found)
            if found == piece_ends[token] - len(pieces[token]):  # the separator opens this token
                token -= 1
            if column + token >= 0:
                end_rows.append(row)
                end_columns.append(column + token)
            found = joined.find(separator, found + len(separator))
    ends[end_rows, end_columns] = True
    return ends
