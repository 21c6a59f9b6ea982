"""Batched forward passes that read only what they need.

Every stage of crosslens asks the same question of a model: "what is the residual stream at these
layers, at these positions?" — the last prompt token (labels, activations, steering) or the
positions just before each token of an answer continuation (cloze scoring, logit lens). Two
passes answer it:

* :func:`prompt_pass` runs padded prompts once (left or right padding, explicit position ids),
  keeps the KV cache, and captures states at the last real prompt token only;
* :func:`continuation_pass` extends cached prompts with many continuations at once (the cache rows
  are repeated per continuation, so a prompt is never re-encoded) and captures the states at the
  fed continuation tokens;
* :func:`tree_pass` runs *token trees* without padding inside a row: a passage, the questions that
  follow it, the answer texts that follow each question, laid end to end in one row, each segment
  attending only to itself and its ancestors (a mask built here, per attention layer type, from
  positions, so sliding windows count positions exactly as in a plain forward of each path).

The base decoder is called, never the LM head: vocabulary projections happen later in
:meth:`crosslens.anatomy.Anatomy.token_logprobs` for the few positions that are read.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from crosslens.models.anatomy import capture_residuals
from crosslens.models.loading import LoadedModel

__all__ = [
    "PromptPass",
    "prompt_pass",
    "continuation_pass",
    "extend_pass",
    "tree_pass",
    "Segment",
    "length_batches",
    "MAX_PADDING",
    "prefix_groups",
    "common_prefix",
]


#: Padding a batch of rows may hold (of its real tokens) before :func:`length_batches` starts another:
#: a forward more costs less than 5 % of its tokens computed for nothing.
MAX_PADDING = 0.05


def _pad_id(lm: LoadedModel) -> int:
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return int(pad or 0)  # padded positions are masked out, so any id works


def length_batches(
    lengths: Sequence[int],
    batch_size: int,
    max_tokens: int | None = None,
    max_padding: float | None = None,
    sizes: Sequence[int] | None = None,
) -> list[list[int]]:
    """Group indices into batches of similar length (sorted, stable), so little compute goes to padding.

    A batch holds at most ``batch_size`` prompts (``sizes[i]`` prompts for index i, default 1) and
    at most ``max_tokens`` tokens padded; with ``max_padding`` a batch also stops growing before its
    padding to the longest member exceeds that share of its real tokens (a shorter batch costs a
    forward more, padding costs its tokens). The grouping depends only on the arguments: a resumed
    run rebuilds the same batches.
    """
    size = sizes if sizes is not None else [1] * len(lengths)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    prompts = tokens = 0
    for i in order:
        cur = batches[-1] if batches else None
        fits = cur is not None and prompts + size[i] <= batch_size
        if fits and max_tokens is not None:
            fits = (len(cur) + 1) * lengths[i] <= max_tokens  # type: ignore[arg-type]
        if fits and max_padding is not None:
            fits = (len(cur) + 1) * lengths[i] - tokens - lengths[i] <= max_padding * (tokens + lengths[i])  # type: ignore[arg-type]
        if fits:
            cur.append(i)  # type: ignore[union-attr]
            prompts, tokens = prompts + size[i], tokens + lengths[i]
        else:
            batches.append([i])
            prompts, tokens = size[i], lengths[i]
    return batches


def prefix_groups(prompts: Sequence[Sequence[int]], min_shared: int) -> list[tuple[int, list[int]]]:
    """Group prompts that begin with the same ``min_shared`` or more tokens: ``(prefix length, members)``.

    Several questions about one passage (Belebele asks two about most of its passages) share
    everything up to the question; encoding that prefix once and each question after it saves the
    repeated tokens. Prompts sorted by their tokens sit next to those they share most with; a group
    grows only while a newcomer shares the group's whole prefix, and the prefix always leaves each
    member at least one token of its own (whose state is read). Prompts sharing less than
    ``min_shared`` tokens with every other come back alone, with prefix length 0. Deterministic.
    """
    order = sorted(range(len(prompts)), key=lambda i: (list(prompts[i]), i))
    groups: list[tuple[int, list[int]]] = []
    for i in order:
        if groups:
            shared, members = groups[-1]
            common = common_prefix(prompts[members[-1]], prompts[i])
            k = min(common, len(prompts[i]) - 1, *(len(prompts[m]) - 1 for m in members))
            if k >= min_shared and (len(members) == 1 or k >= shared):
                groups[-1] = (k if len(members) == 1 else shared, [*members, i])
                continue
        groups.append((0, [i]))
    return groups


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class PromptPass:
    """Result of encoding a batch of prompts: states at the last real token and the cache to extend."""

    last: dict[int, torch.Tensor]  # layer -> (batch, d) state at the last real prompt token
    cache: object | None  # transformers Cache holding the prompts (None when use_cache=False)
    attention_mask: torch.Tensor  # (batch, padded_len)
    lengths: torch.Tensor  # (batch,) real prompt lengths
    mean: dict[int, torch.Tensor] | None = None  # layer -> (batch, d) mean over pooled positions


def prompt_pass(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    layers: Sequence[int],
    padding_side: str = "left",
    use_cache: bool = True,
    steer: object | None = None,
    pool_from: Sequence[int] | None = None,
) -> PromptPass:
    """Encode ``prompts`` (token id lists) and capture ``layers`` at each prompt's last token.

    ``steer``: an optional context-manager factory ``steer(last_index)`` (see crosslens.steering)
    entered around the forward pass, so steering hooks know which position is the last one.
    ``pool_from``: also average each prompt's states over its tokens ``pool_from[b]`` .. last
    (``PromptPass.mean``); every position is then captured, so it costs (batch x length x d) memory.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    device = lm.input_device
    lengths = torch.tensor([len(p) for p in prompts])
    width = int(lengths.max())
    ids = torch.full((len(prompts), width), _pad_id(lm), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        sl = slice(width - len(p), width) if padding_side == "left" else slice(0, len(p))
        ids[row, sl] = torch.as_tensor(p)
        mask[row, sl] = 1
    # Explicit positions: a padded prompt is encoded exactly as the same prompt alone.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    last_index = (torch.full_like(lengths, width - 1) if padding_side == "left" else lengths - 1)[:, None]
    base = lm.model.get_decoder()
    keep = None if pool_from is not None else last_index
    with torch.inference_mode(), capture_residuals(lm.anatomy, layers, keep) as states:
        ctx = steer(last_index) if steer is not None else _null()
        with ctx:
            out = base(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                use_cache=use_cache,
            )
    mean = None
    if pool_from is not None:
        rows = torch.arange(len(prompts))
        pooled = mask.clone()
        for row, start in enumerate(pool_from):  # drop the positions before each prompt's pool start
            first = (width - len(prompts[row]) if padding_side == "left" else 0) + int(start)
            pooled[row, :first] = 0
        weights = (pooled / pooled.sum(-1, keepdim=True)).unsqueeze(-1)
        mean = {layer: (h.float() * weights.to(h.device)).sum(1) for layer, h in states.items()}
        states = {layer: h[rows, last_index[:, 0]].unsqueeze(1) for layer, h in states.items()}
    return PromptPass(
        last={layer: h[:, 0] for layer, h in states.items()},
        cache=out.cache if use_cache else None,
        attention_mask=mask,
        lengths=lengths,
        mean=mean,
    )


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def continuation_pass(
    lm: LoadedModel,
    pp: PromptPass,
    owner: Sequence[int],
    feeds: Sequence[Sequence[int]],
    layers: Sequence[int],
) -> dict[int, list[torch.Tensor]]:
    """States at every token of ``feeds``, each fed after the cached prompt ``owner[i]`` of ``pp``.

    Returns, per layer, one (len(feeds[i]), d) tensor per feed. To score a continuation x_1..x_T,
    feed x_1..x_{T-1}: the state predicting x_1 is the prompt's last-token state (``pp.last``),
    shared by every continuation of that prompt, and the state at x_T predicts nothing we read.
    Feeds of different lengths are right-padded; no forward runs when every feed is empty.
    """
    return _continue(lm, pp, owner, feeds, layers)[0]


def extend_pass(
    lm: LoadedModel,
    pp: PromptPass,
    owner: Sequence[int],
    feeds: Sequence[Sequence[int]],
    layers: Sequence[int],
) -> tuple[dict[int, list[torch.Tensor]], PromptPass]:
    """:func:`continuation_pass`, also returning the pass of the extended rows (row i = prompt
    ``owner[i]`` + feed i, its cache kept), so more continuations can follow the fed tokens
    without re-encoding them. Every feed must hold at least one token."""
    if any(len(f) == 0 for f in feeds):
        raise ValueError("extend_pass needs at least one token per feed")
    states, extended = _continue(lm, pp, owner, feeds, layers)
    assert extended is not None
    return states, extended


def _continue(
    lm: LoadedModel,
    pp: PromptPass,
    owner: Sequence[int],
    feeds: Sequence[Sequence[int]],
    layers: Sequence[int],
) -> tuple[dict[int, list[torch.Tensor]], PromptPass | None]:
    """The forward of :func:`continuation_pass` and :func:`extend_pass`."""
    if pp.cache is None:
        raise ValueError("continuation_pass needs a prompt pass run with use_cache=True")
    owner_t = torch.as_tensor(list(owner), dtype=torch.long)
    width = max((len(f) for f in feeds), default=0)
    d = lm.anatomy.d_model
    if width == 0:
        return {layer: [torch.zeros((0, d)) for _ in feeds] for layer in layers}, None
    device = lm.input_device
    n = len(feeds)
    ids = torch.full((n, width), _pad_id(lm), dtype=torch.long)
    cont_mask = torch.zeros((n, width), dtype=torch.long)
    for row, f in enumerate(feeds):
        if f:
            ids[row, : len(f)] = torch.as_tensor(list(f))
            cont_mask[row, : len(f)] = 1
    mask = torch.cat([pp.attention_mask[owner_t], cont_mask], dim=1)
    positions = pp.lengths[owner_t][:, None] + torch.arange(width)[None, :]
    cache = _repeat_rows(pp.cache, owner_t.to(device))
    index = torch.arange(width)[None, :].expand(n, -1)
    base = lm.model.get_decoder()
    with torch.inference_mode(), capture_residuals(lm.anatomy, layers, index) as states:
        base(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            cache=cache,
            use_cache=True,
        )
    out = {layer: [states[layer][row, : len(f)] for row, f in enumerate(feeds)] for layer in layers}
    lengths = pp.lengths[owner_t] + torch.tensor([len(f) for f in feeds])
    return out, PromptPass(last={}, cache=cache, attention_mask=mask, lengths=lengths)


#: One segment of a row of :func:`tree_pass`: its tokens, and the index of the earlier segment of the
#: same row it follows (-1: the row's root, i.e. its cached prompt or the start of the sequence).
Segment = tuple[Sequence[int], int]


def tree_pass(
    lm: LoadedModel,
    rows: Sequence[Sequence[Segment]],
    layers: Sequence[int],
    keep: Sequence[Sequence[int]],
    pp: PromptPass | None = None,
    owner: Sequence[int] | None = None,
) -> dict[int, list[torch.Tensor]]:
    """States at offsets ``keep[r]`` of row r, each row a tree of segments fed in one forward.

    The segments of a row are laid end to end; a segment follows its parent: its tokens attend to
    the parent's tokens and their ancestors' (and to the cached prompt ``owner[r]`` of ``pp``, the
    root of every row when given), never to a sibling, and its positions continue the parent's. So
    a passage, its questions and their answer texts are one row with the readings of separate
    forwards, and rows of different widths are right-padded only at their ends. The attention mask
    is built here for each attention layer type the model has (full, sliding window) from
    *positions*, as the model's own mask counts them in an unpadded sequence: exact with sliding
    windows and soft-capped (eager) attention alike. Returns, per layer, one (len(keep[r]), d)
    tensor per row.
    """
    n = len(rows)
    lengths = [sum(len(t) for t, _ in row) for row in rows]
    width, n_seg = max(lengths), max(len(row) for row in rows)
    rows_of = torch.as_tensor(list(owner or []), dtype=torch.long)  # the cached prompt of each row
    base = pp.lengths[rows_of] if pp else torch.zeros(n, dtype=torch.long)
    ids = torch.full((n, width), _pad_id(lm), dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    segment = torch.full((n, width), -1, dtype=torch.long)
    ancestors = torch.zeros((n, n_seg, n_seg), dtype=torch.bool)  # [r, s, a]: a is s or an ancestor of s
    for r, row in enumerate(rows):
        at, ends = 0, []
        for s, (tokens, parent) in enumerate(row):
            if not -1 <= parent < s:
                raise ValueError(f"segment {s} of row {r} follows segment {parent}, which is not before it")
            start, k = (ends[parent] if parent >= 0 else 0), len(tokens)
            ids[r, at : at + k] = torch.as_tensor(list(tokens), dtype=torch.long)
            positions[r, at : at + k] = int(base[r]) + start + torch.arange(k)
            segment[r, at : at + k] = s
            if parent >= 0:
                ancestors[r, s] = ancestors[r, parent]
            ancestors[r, s, s] = True
            ends.append(start + k)
            at += k
    masks = _tree_masks(lm, pp, rows_of, positions, segment, ancestors)
    cache = _repeat_rows(pp.cache, rows_of.to(lm.input_device)) if pp else None
    k_max = max((len(k) for k in keep), default=0)
    index = torch.zeros((n, max(k_max, 1)), dtype=torch.long)
    for r, offsets in enumerate(keep):
        index[r, : len(offsets)] = torch.as_tensor(list(offsets), dtype=torch.long)
    device = lm.input_device
    with torch.inference_mode(), capture_residuals(lm.anatomy, layers, index) as states:
        lm.model.get_decoder()(
            input_ids=ids.to(device),
            attention_mask=masks,
            position_ids=positions.to(device),
            cache=cache,
            use_cache=cache is not None,
        )
    return {layer: [states[layer][r, : len(k)] for r, k in enumerate(keep)] for layer in layers}


def _tree_masks(
    lm: LoadedModel,
    pp: PromptPass | None,
    rows_of: torch.Tensor,
    positions: torch.Tensor,
    segment: torch.Tensor,
    ancestors: torch.Tensor,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """The 4D attention masks of :func:`tree_pass`: one per layer type of the model (a dict, as the
    model's own mask mapping), or one tensor for a model without layer types (its one window, if any).

    A query sees a cached slot that holds a real token of its row's prompt, and a token of its own
    row that is itself, earlier in its segment or in an ancestor segment; under a sliding window
    only keys less than ``window`` positions back (the model's ``kv_idx > q_idx - window``, on
    positions). Padding queries see the row's first token only (a fully masked query would be NaN,
    and its NaN values would reach real queries through the zero attention weights).
    """
    config = lm.model.config
    n, width = segment.shape
    real = segment >= 0
    seg = segment.clamp(min=0)
    rows = torch.arange(n)[:, None, None]
    own = ancestors[rows, seg[:, :, None], seg[:, None, :]] & real[:, :, None] & real[:, None, :]
    own &= torch.ones((width, width), dtype=torch.bool).tril()
    pad_query = torch.zeros((n, width, width), dtype=torch.bool)
    pad_query[:, :, 0] = ~real
    if pp is not None:  # each row's cached prompt: its real slots and their positions
        cached = pp.attention_mask[rows_of].bool()
        cached_pos = (pp.attention_mask.cumsum(-1) - 1)[rows_of]
    layer_types = getattr(config, "layer_types", None)
    windows = {"full_attention": None, "sliding_attention": getattr(config, "sliding_window", None)}

    def mask(kind: str | None, layer: int) -> torch.Tensor:
        window = windows[kind] if kind is not None else getattr(config, "sliding_window", None)
        allowed = own.clone()
        if window:
            allowed &= positions[:, :, None] - positions[:, None, :] < window
        if pp is not None:
            first = cached.shape[1] - _cached_slots(pp.cache, layer)  # a window's cache keeps its last slots
            see = cached[:, None, first:] & real[:, :, None]
            if window:
                see &= positions[:, :, None] - cached_pos[:, None, first:] < window
            allowed = torch.cat([see, allowed], dim=-1)
        allowed[..., -width:] |= pad_query
        return _attention_format(lm, allowed[:, None].to(lm.input_device))

    if layer_types is None:
        return mask(None, 0)
    unknown = set(layer_types) - set(windows)
    if unknown:
        raise ValueError(f"tree_pass does not know the attention layer type(s) {sorted(unknown)}")
    return {kind: mask(kind, layer_types.index(kind)) for kind in sorted(set(layer_types))}


def _cached_slots(cache: object, layer: int) -> int:
    """How many slots of ``cache`` layer ``layer`` holds (all the prompt's, or a window's last)."""
    keys = getattr(cache.layers[layer], "keys", None)  # type: ignore[attr-defined]
    return 0 if keys is None else int(keys.shape[-2])


def _attention_format(lm: LoadedModel, allowed: torch.Tensor) -> torch.Tensor:
    """A boolean mask (True: attend) as the model's attention implementation takes it: as is for
    SDPA, as 0 / the dtype's minimum added to the scores for eager attention (as transformers does)."""
    impl = lm.model.config._attn_implementation
    if impl == "sdpa":
        return allowed
    if impl == "eager":
        return torch.zeros(allowed.shape, dtype=lm.dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(lm.dtype).min
        )
    raise ValueError(f"tree_pass needs sdpa or eager attention, not {impl!r}")


def _repeat_rows(cache: object, rows: torch.Tensor) -> object:
    """A new cache whose batch row i is row ``rows[i]`` of ``cache``; ``cache`` itself stays reusable.

    Layers are copied shallowly: ``reorder_cache`` rebinds each layer's key/value tensors to fresh
    ``index_select`` results, so the prompt's tensors are shared, never modified, and never copied
    more than the repetition needs.
    """
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]  # type: ignore[attr-defined]
    new.reorder_cache(rows)  # type: ignore[attr-defined]
    return new
