"""What a lens reads at every layer and position of one prompt: the top-k next tokens, their
probabilities, the distribution's entropy, and each top token's language.

One forward pass captures the residual stream at the chosen layers and *every* prompt position
(:func:`residuals`; the project's numbering: 0 = embeddings, l = output of block l, before the final
norm); each lens then maps every state to a vocabulary distribution through the model's own head
(final norm once, unembedding, softcap), a few rows at a time so a 262k vocabulary never fills
memory. The maths on a distribution (:func:`top_cells`) and on the token -> language table
(:func:`token_language`) are pure functions.

A token's text is what the tokenizer decodes it to alone; where that holds no whole character
(a byte of a multi-byte character: U+FFFD) it is the vocabulary piece itself (``<0xE5>``), so two
different tokens never look the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from crosslens.data.token_languages import TokenLanguages
from crosslens.lenses.lens import Lens
from crosslens.models.anatomy import capture_residuals
from crosslens.models.loading import LoadedModel

__all__ = ["COLUMNS", "residuals", "top_cells", "read_layer", "token_language", "token_text", "inspection"]

#: The rows of a reading: one per (lens, layer, position, rank).
COLUMNS = (
    "lens",
    "layer",
    "position",
    "input_token",
    "rank",
    "token_id",
    "token",
    "prob",
    "entropy",
    "token_language",
    "token_language_p",
)
MAX_ELEMENTS = 2**26  # logits projected at once (256 positions of a 262k vocabulary)


def residuals(lm: LoadedModel, ids: Sequence[int], layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """The residual stream of one prompt at ``layers``: layer -> (positions, d), from one forward."""
    layers = lm.anatomy.check_layers(layers)
    batch = torch.as_tensor([list(ids)], dtype=torch.long, device=lm.input_device)
    with torch.inference_mode(), capture_residuals(lm.anatomy, layers) as states:
        lm.model.get_decoder()(input_ids=batch, use_cache=False)
    return {layer: states[layer][0] for layer in layers}


def top_cells(logits: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` token ids (rows, k), their probabilities (rows, k) and the entropy in nats (rows,)
    of the softmax of float32 ``logits`` (rows, vocab); ids in descending probability."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    entropy = torch.special.entr(logp.exp()).sum(-1)
    top = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return top.indices.cpu().numpy(), top.values.exp().cpu().numpy(), entropy.cpu().numpy()


def read_layer(
    lens: Lens, h: torch.Tensor, layer: int, k: int, max_elements: int = MAX_ELEMENTS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`top_cells` of ``lens`` at ``layer`` for the states ``h`` (positions, d)."""
    vocab = lens.anatomy.unembed_weight.shape[0]
    rows = max(1, max_elements // vocab)
    parts = []
    with torch.inference_mode():
        for start in range(0, h.shape[0], rows):
            parts.append(top_cells(lens.logits(h[start : start + rows], layer), k))
    return tuple(np.concatenate(p) for p in zip(*parts))  # type: ignore[return-value]


def token_language(table: TokenLanguages, token_ids: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Each token's most probable language under ``table`` (``P(language | token)``) and that
    probability; languages tied at the top are joined with "/" (a Han-only token with no frequency
    evidence is ``ja/zh``), a token of no identifiable language is ``none``."""
    ids = np.asarray(token_ids)
    rows = np.zeros((ids.size, table.probs.shape[1]), dtype=np.float32)
    inside = ids.ravel() < table.probs.shape[0]  # a head padded past the tokenizer: padding ids are "none"
    rows[inside] = table.probs[ids.ravel()[inside]]
    rows[~inside, -1] = 1.0
    best = rows.max(axis=1)
    names = [
        "/".join(table.columns[j] for j in np.flatnonzero(row >= top - 1e-6)) for row, top in zip(rows, best)
    ]
    return names, best


def token_text(tokenizer: Any, token_id: int) -> str:
    """The text of one token: decoded alone, or its vocabulary piece where decoding gives no whole
    character (see the module docstring)."""
    text = tokenizer.decode([int(token_id)])
    if "\ufffd" in text:
        piece = tokenizer.convert_ids_to_tokens(int(token_id))
        return piece if isinstance(piece, str) and piece else text
    return text


def inspection(
    lm: LoadedModel,
    ids: Sequence[int],
    lenses: Sequence[Lens],
    layers: Sequence[int],
    k: int,
    table: TokenLanguages,
) -> pd.DataFrame:
    """The reading of one prompt (token ``ids``) through each of ``lenses`` at ``layers``: one row per
    (lens, layer, position, rank) with the columns of :data:`COLUMNS`."""
    states = residuals(lm, ids, layers)
    texts: dict[int, str] = {}

    def text(i: int) -> str:
        if i not in texts:
            texts[i] = token_text(lm.tokenizer, i)
        return texts[i]

    inputs = [text(i) for i in ids]
    n = len(ids)
    frames = []
    for lens in lenses:
        for layer, h in states.items():
            top, probs, entropy = read_layer(lens, h, layer, k)
            kk = top.shape[1]
            languages, shares = token_language(table, top)
            frames.append(
                pd.DataFrame(
                    {
                        "lens": lens.name,
                        "layer": layer,
                        "position": np.repeat(np.arange(n), kk),
                        "input_token": np.repeat(inputs, kk),
                        "rank": np.tile(np.arange(1, kk + 1), n),
                        "token_id": top.ravel(),
                        "token": [text(int(i)) for i in top.ravel()],
                        "prob": probs.ravel().astype(np.float64),
                        "entropy": np.repeat(entropy, kk).astype(np.float64),
                        "token_language": languages,
                        "token_language_p": shares.astype(np.float64),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)[list(COLUMNS)]
