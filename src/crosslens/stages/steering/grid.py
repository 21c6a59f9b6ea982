"""Adding gamma * v to a block's output, and the cached grid that makes a sweep cheap.

Because only the last position changes (the paper's steering), a prompt minus its last token is
encoded once, its KV cache kept, and every (layer, gamma) setting is a one-token forward from that
cache: a grid of G settings costs about one prompt pass plus G one-token passes. Steering at every
position (``all``) needs full forwards, under the same hook.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from crosslens.models.anatomy import Anatomy, _block_output
from crosslens.models.loading import LoadedModel
from crosslens.models.passes import (
    MAX_PADDING,
    PromptPass,
    extend_pass,
    length_batches,
    prompt_pass,
    tree_pass,
)
from crosslens.scoring.choices import score_prompts
from crosslens.scoring.options import EvalOptions

__all__ = ["add_at_positions", "steered_full_forward", "steer_grid", "full_scores", "Scored"]


@contextlib.contextmanager
def add_at_positions(
    anatomy: Anatomy, layer: int, delta: torch.Tensor, index: torch.Tensor | None
) -> Iterator[None]:
    """Add ``delta[b]`` to the output of block ``layer`` at position ``index[b]`` of each row b, or,
    with ``index=None``, ``delta`` (one vector) at every position of every forward pass run inside
    the block (``--positions all``: what lm-evaluation-harness's steered model and repeng do).

    Every other position is untouched. An all-zero ``delta`` registers no hook at all, so gamma = 0
    reproduces unsteered results bit for bit. The hook is registered inside ``try`` and removed in
    ``finally``, also when the forward pass raises.
    """
    if not 1 <= layer <= anatomy.n_layers:
        raise ValueError(f"steering layer {layer} out of range 1..{anatomy.n_layers}")
    if not torch.any(delta != 0):
        yield
        return

    def hook(_m: torch.nn.Module, _a: tuple, output: object) -> object:
        h = _block_output(output)
        d = delta.to(device=h.device, dtype=h.dtype)
        if index is None:
            h = h + d
        else:
            rows = torch.arange(h.shape[0], device=h.device)
            h = h.clone()
            h[rows, index.reshape(-1).to(h.device)] += d
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = None
    try:
        # prepend: the edit happens before any recording hook reads this block's output.
        handle = anatomy.blocks[layer - 1].register_forward_hook(hook, prepend=True)
        yield
    finally:
        if handle is not None:
            handle.remove()


def steered_full_forward(
    lm: LoadedModel,
    prompt_ids: Sequence[Sequence[int]],
    layer: int,
    delta: torch.Tensor,
    label_ids: Sequence[Sequence[int]],
    padding_side: str = "left",
) -> list[np.ndarray]:
    """Reference path: a full forward per prompt batch with the hook at the last real token."""
    final = lm.anatomy.n_layers

    def steer(last_index: torch.Tensor) -> contextlib.AbstractContextManager:
        return add_at_positions(lm.anatomy, layer, delta, last_index)

    pp = prompt_pass(lm, prompt_ids, [final], padding_side, use_cache=False, steer=steer)
    return [
        lm.anatomy.token_logprobs(pp.last[final][b : b + 1], final, torch.as_tensor([label_ids[b]]))[
            0
        ].numpy()
        for b in range(len(prompt_ids))
    ]


#: Per prompt: the label log-probs, and (with continuations) each choice's token log-probs.
Scored = tuple[np.ndarray, list[np.ndarray] | None]


def steer_grid(
    lm: LoadedModel,
    prompt_ids: Sequence[Sequence[int]],
    label_ids: Sequence[Sequence[int]],
    deltas: Sequence[tuple[int, torch.Tensor]],
    continuations: Sequence[Sequence[Sequence[int]]] | None = None,
    batch_size: int = 8,
    max_rows: int = 256,
) -> list[list[Scored]]:
    """Scores of every prompt under every setting ``(layer, delta)`` (delta = gamma * v, added at
    the last prompt token), the cached way: ``result[setting][prompt]``.

    Per batch: one pass over the prompts minus their last token (cache kept); then, for a group of
    settings at once, the last prompt token of every (setting, prompt) as one-token rows, each
    carrying its own delta at its own layer — its state predicts the labels and every choice's
    first token; then, from that extended cache (the steered token's keys and values included),
    the answer choices' further tokens, unsteered, as in a full forward with the hook (a row's
    choices as one token tree: :func:`_tails`).
    """
    final = lm.anatomy.n_layers
    result: list[list[Scored]] = [[(np.empty(0), None)] * len(prompt_ids) for _ in deltas]
    for batch in length_batches([len(p) for p in prompt_ids], batch_size):
        if any(len(prompt_ids[i]) < 2 for i in batch):
            raise ValueError("steering needs prompts of at least two tokens")
        pp = prompt_pass(lm, [prompt_ids[i][:-1] for i in batch], [final], "left", use_cache=True)
        choices = [[list(c) for c in continuations[i]] if continuations is not None else [] for i in batch]
        group = max(1, max_rows // len(batch))
        for start in range(0, len(deltas), group):
            chunk = list(deltas[start : start + group])
            owner = [b for _ in chunk for b in range(len(batch))]
            with contextlib.ExitStack() as stack:
                for layer in sorted({s_layer for s_layer, _ in chunk}):
                    delta = torch.stack(
                        [
                            d if s_layer == layer else torch.zeros_like(d)
                            for s_layer, d in chunk
                            for _ in batch
                        ]
                    )
                    stack.enter_context(
                        add_at_positions(lm.anatomy, layer, delta, torch.zeros(len(owner), dtype=torch.long))
                    )
                last, steered = extend_pass(
                    lm, pp, owner, [[prompt_ids[i][-1]] for _ in chunk for i in batch], [final]
                )
            # The choices' further tokens follow the steered last token (not steered themselves).
            rest = [(r, c) for r, b in enumerate(owner) for c in choices[b] if len(c) > 1]
            tails = _tails(lm, steered, rest)
            _read_grid(lm, result, start, chunk, batch, choices, label_ids, last[final], rest, tails)
    return result


def _tails(lm: LoadedModel, steered: PromptPass, rest: list[tuple[int, list[int]]]) -> list[torch.Tensor]:
    """The final layer's states at the further tokens of each choice ``rest[j] = (row, choice)`` after
    its steered row: a row's choices are sibling segments of one tree row (no padding between
    choices of different lengths), rows of similar sizes fed together."""
    final = lm.anatomy.n_layers
    by_row: dict[int, list[int]] = {}
    for j, (r, _) in enumerate(rest):
        by_row.setdefault(r, []).append(j)
    rows = list(by_row)
    sizes = [sum(len(rest[j][1]) - 1 for j in by_row[r]) for r in rows]
    out: list[torch.Tensor] = [torch.empty(0)] * len(rest)
    for batch in length_batches(sizes, len(rows), max_padding=MAX_PADDING):
        trees = [[(rest[j][1][:-1], -1) for j in by_row[rows[b]]] for b in batch]
        keep = [range(sizes[b]) for b in batch]
        states = tree_pass(lm, trees, [final], keep, steered, [rows[b] for b in batch])[final]
        for b, state in zip(batch, states):
            at = 0
            for j in by_row[rows[b]]:
                out[j], at = state[at : at + len(rest[j][1]) - 1], at + len(rest[j][1]) - 1
    return out


def _read_grid(
    lm: LoadedModel,
    result: list[list[Scored]],
    start: int,
    chunk: list[tuple[int, torch.Tensor]],
    batch: list[int],
    choices: list[list[list[int]]],
    label_ids: Sequence[Sequence[int]],
    last: list[torch.Tensor],
    rest: list[tuple[int, list[int]]],
    tails: list[torch.Tensor],
) -> None:
    """One projection for every read position of a group (a one-row projection reads the whole
    unembedding for a single state and runs far below the machine's matmul peak): each steered
    last token (its labels and every choice's first token), then the choices' further tokens."""
    final = lm.anatomy.n_layers
    owner = [b for _ in chunk for b in range(len(batch))]
    firsts = [list(label_ids[batch[b]]) + [c[0] for c in choices[b]] for b in owner]
    width = max(len(f) for f in firsts)
    further = [t for _, c in rest for t in c[1:]]
    targets = torch.zeros((len(firsts) + len(further), width), dtype=torch.long)
    for r, f in enumerate(firsts):
        targets[r, : len(f)] = torch.tensor(f)
    if further:
        targets[len(firsts) :, 0] = torch.tensor(further)
    lp = lm.anatomy.token_logprobs(torch.cat([*(s[-1:] for s in last), *tails]), final, targets).cpu().numpy()
    tail_at = dict(
        zip(((r, id(c)) for r, c in rest), len(firsts) + np.cumsum([0] + [len(c) - 1 for _, c in rest]))
    )
    for r, b in enumerate(owner):
        n_lab = len(label_ids[batch[b]])
        texts = None
        if choices[b]:
            texts = []
            for j, c in enumerate(choices[b]):
                at = tail_at.get((r, id(c)))
                more = lp[at : at + len(c) - 1, 0] if at is not None else np.empty(0, dtype=lp.dtype)
                texts.append(np.concatenate([lp[r, n_lab + j : n_lab + j + 1], more]))
        result[start + r // len(batch)][batch[b]] = (lp[r, :n_lab], texts)


def full_scores(
    lm: LoadedModel,
    prompt_ids: Sequence[Sequence[int]],
    label_ids: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[Sequence[int]]] | None,
    opts: EvalOptions,
) -> list[Scored]:
    """Scores of full forward passes (under whatever hooks the caller holds), in input order."""
    final = lm.anatomy.n_layers
    out: list[Scored] = [(np.empty(0), None)] * len(prompt_ids)
    for i, sc in score_prompts(
        lm,
        prompt_ids,
        [final],
        label_ids,
        continuations,
        opts.batch_size,
        opts.padding_side,
        opts.max_elements,
    ):
        out[i] = (sc.label_logprobs[final], sc.text_logprobs[final] if continuations is not None else None)
    return out
