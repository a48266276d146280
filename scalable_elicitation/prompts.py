"""Few-shot prompts (docs/design.md#kshot_sft, #icl), built at the token level.

A shot renders as `{text}\\n{0|1}`, shots are joined by blank lines, then the input `{text}`
and `\\n`. The model's special tokens wrap the whole prompt exactly as they wrap a plain input
(BOS first for the Llama family; [CLS] ... [SEP] for BERT), so every method is tokenised alike.
Each shot's text and the input are truncated separately (keep the start), so a long input never
cuts a shot away. Weak shots show the weak label hardened at 0.5, never ground
truth (the study's code leaked ground truth here).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from scalable_elicitation.batching import Encoded, special_tokens

_ORDER_SALT = 0x6F726472


@dataclasses.dataclass(frozen=True)
class Shot:
    id: str
    text: str
    label: int  # the label the prompt shows


def make_shots(ids, texts, shown_labels) -> list[Shot]:
    """Shots from parallel arrays; `shown_labels` are probabilities or 0/1, hardened at 0.5."""
    shown = (np.asarray(shown_labels, dtype=np.float64) > 0.5).astype(int)
    return [Shot(str(i), str(t), int(y)) for i, t, y in zip(ids, texts, shown)]


def _tokens(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def label_token_ids(tokenizer) -> tuple[int, int]:
    """Token ids of "0" and "1" as the tokenizer produces them after a newline; a clear error if
    either label is not a single token there."""
    newline = _tokens(tokenizer, "\n")
    out = []
    for label in ("0", "1"):
        toks = _tokens(tokenizer, "\n" + label)
        if toks[:len(newline)] != newline or len(toks) != len(newline) + 1:
            raise ValueError(f"the tokenizer does not produce label {label!r} as one token after "
                             f"a newline (got {toks} for '\\n{label}'); in-context scoring needs "
                             "single-token labels")
        out.append(toks[-1])
    return out[0], out[1]


class PromptBuilder:
    """Token-level k-shot prompts for one run's fixed shots."""

    def __init__(self, tokenizer, shots: Sequence[Shot], *, shot_max_length: int,
                 input_max_length: int, seed: int):
        self.tokenizer = tokenizer
        self.shots = list(shots)
        self.seed = seed
        self.input_max_length = input_max_length
        self._shot_tokens = []
        for s in self.shots:
            body = _tokens(tokenizer, s.text)
            cut = len(body) > shot_max_length
            self._shot_tokens.append((body[:shot_max_length]
                                      + _tokens(tokenizer, f"\n{s.label}\n\n"), cut))
        self._newline = _tokens(tokenizer, "\n")
        self._before, self._after = special_tokens(tokenizer)
        self.shot_truncations = sum(cut for _, cut in self._shot_tokens)

    def signature(self) -> tuple:
        """What a prompt depends on besides its input: the shots' tokens in drawn order, the
        input's length limit and the order seed. Equal signatures give equal prompts for
        every input, so whatever is computed from them (features, statistics) is shared."""
        return (tuple(self.prefix()), self.input_max_length, self.seed)

    def order(self, example_id: str) -> np.ndarray:
        """The shots' order for one input: reshuffled per input, seeded by (seed, id)."""
        rng = np.random.default_rng([self.seed, _ORDER_SALT, int(str(example_id)[:15], 16)])
        return rng.permutation(len(self.shots))

    def prefix(self, order: Sequence[int] | None = None) -> list[int]:
        """The leading special tokens and the shots' tokens in a given order (default: as
        drawn): the part of a prompt shared by every input."""
        order = range(len(self.shots)) if order is None else order
        return list(self._before) + [t for i in order for t in self._shot_tokens[i][0]]

    def suffix(self, text: str) -> tuple[list[int], bool]:
        """The input's own tokens: its text (truncated), a newline, the trailing special
        tokens; and whether the text was truncated."""
        body = _tokens(self.tokenizer, text)
        return (body[:self.input_max_length] + self._newline + list(self._after),
                len(body) > self.input_max_length)

    def encode(self, ids, texts, *, shuffle: bool = True) -> Encoded:
        """Full prompts (shots + input + newline) for each example."""
        tokens, truncated, starts = [], [], []
        for i, t in zip(ids, texts):
            suffix, cut = self.suffix(t)
            prefix = self.prefix(self.order(i) if shuffle else None)
            tokens.append(np.asarray(prefix + suffix, dtype=np.int32))
            truncated.append(cut)
            starts.append(len(prefix))  # a probe pools over the input's own tokens only
        return Encoded(tokens, np.asarray(truncated, dtype=bool), np.asarray(starts))

    def render_text(self, example_id: str, text: str) -> str:
        """The prompt as text (for inspection and tests)."""
        parts = [f"{self.shots[i].text}\n{self.shots[i].label}" for i in self.order(example_id)]
        return "\n\n".join(parts + [text]) + "\n"
