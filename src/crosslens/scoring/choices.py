"""Score multiple-choice prompts: choice labels at the last prompt token, and full answer texts.

Both readings come from one forward per batch of prompts: each prompt with its answer texts after
it, as one unpadded token tree (several questions on one passage share the passage's tokens):

* **letters** — log-probability of each label token (A, B, ...) after ``Answer:``; how a label is
  tokenised (" A" vs "A") is decided once per tokenizer by :func:`label_plan` and recorded;
* **texts** — per-token log-probabilities of ``" " + choice`` after the prompt, at any layer read
  through the lens (the last layer is the model's own output: cloze scoring).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from crosslens.data.prompts import Prompter
from crosslens.data.prompts import labels as label_letters
from crosslens.data.schema import DataError, ParallelDataset
from crosslens.lenses.lens import Lens, LogitLens
from crosslens.models.loading import LoadedModel
from crosslens.models.passes import (
    MAX_PADDING,
    Segment,
    common_prefix,
    continuation_pass,
    length_batches,
    prefix_groups,
    prompt_pass,
    tree_pass,
)

__all__ = [
    "LabelPlan",
    "label_plan",
    "prompt_label_plan",
    "encode_continuation",
    "ItemScores",
    "score_prompts",
    "rank_choices",
    "NonFiniteReading",
    "require_finite",
    "context_limit",
    "fit_context",
]

log = logging.getLogger(__name__)

_PROBE = "Question: What is two plus two? A: three B: four Answer:"


@dataclass(frozen=True)
class LabelPlan:
    """How choice labels are read after ``Answer:`` for one tokenizer (written into run.json)."""

    form: str  # "space": the label token is " A"; "nospace": it is "A"
    letters: tuple[str, ...]
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]

    def for_n(self, n: int) -> list[int]:
        return list(self.token_ids[:n])

    def describe(self) -> dict:
        return asdict(self)


def label_plan(tokenizer, n_max: int = 5, probe: str = _PROBE, chat: bool = False) -> LabelPlan:
    """Decide the label tokens by tokenising a real prompt followed by each label.

    " A" is preferred (that is what a model writes after "Answer:"), provided the prompt's own
    tokens stay unchanged and the label adds exactly one token; tokenizers that merge the space
    differently fall back to "A". After a chat template's generation prompt (``chat``: ``probe``
    ends in it) the assistant's first token is read, so "A" comes first. Anything else is an error
    rather than a guess.
    """
    letters = label_letters(n_max)
    base = tokenizer(probe, add_special_tokens=False).input_ids
    forms = (("space", " "), ("nospace", ""))
    for form, sep in forms[::-1] if chat else forms:
        ids = []
        for letter in letters:
            full = tokenizer(probe + sep + letter, add_special_tokens=False).input_ids
            if full[: len(base)] != base or len(full) != len(base) + 1:
                break
            ids.append(full[-1])
        else:
            if len(set(ids)) == len(ids):
                return LabelPlan(
                    form, tuple(letters), tuple(ids), tuple(tokenizer.convert_ids_to_tokens(ids))
                )
    raise ValueError(
        f"cannot find single-token choice labels for tokenizer {type(tokenizer).__name__}: "
        f"neither ' A' nor 'A' after {probe[-24:]!r} is one token"
    )


def prompt_label_plan(prompter: Prompter, n_max: int = 5) -> LabelPlan:
    """The label tokens read after ``prompter``'s prompts (after the generation prompt in a chat)."""
    if not prompter.chat:
        return label_plan(prompter.tokenizer, n_max)
    return label_plan(prompter.tokenizer, n_max, prompter.wrap(_PROBE), chat=True)


def encode_continuation(
    tokenizer, prompt: str, prompt_ids: Sequence[int], text: str, sep: str = " ", special: bool = True
) -> tuple[list[int], bool]:
    """Tokens of ``sep + text`` as they follow ``prompt`` (lm-evaluation-harness style).

    The pair is tokenised jointly and the prompt's tokens are cut off, so merges across the
    boundary are the ones the model would see. If the joint tokenisation changes the prompt's own
    tokens, the continuation is tokenised alone instead; the flag says which happened.
    ``special``: whether the tokenizer adds its special tokens (not to a chat-rendered prompt).
    """
    full = tokenizer(prompt + sep + text.strip(), add_special_tokens=special).input_ids
    if full[: len(prompt_ids)] == list(prompt_ids) and len(full) > len(prompt_ids):
        return full[len(prompt_ids) :], True
    return tokenizer(sep + text.strip(), add_special_tokens=False).input_ids, False


class NonFiniteReading(ValueError):
    """A log-probability that is NaN or infinite: it is never ranked, counted or averaged."""


def require_finite(values: Sequence[float] | np.ndarray, where: str) -> None:
    """Refuse a reading that is not a finite number, naming where it was read (item, language, layer)."""
    arr = np.asarray(values, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise NonFiniteReading(
            f"{where}: a log-probability is {arr[~np.isfinite(arr)][0]} (the model's outputs are not finite "
            "numbers: broken weights, or an overflow in a low-precision dtype; try --dtype float32)"
        )


def rank_choices(logprobs: Sequence[float]) -> list[int]:
    """Rank 1 = most probable. Ties go to the earlier choice (stable sort), so ranks are deterministic."""
    require_finite(logprobs, "ranking answer choices")
    order = np.argsort(-np.asarray(logprobs, dtype=np.float64), kind="stable")
    ranks = np.empty(len(order), dtype=int)
    ranks[order] = np.arange(1, len(order) + 1)
    return ranks.tolist()


@dataclass
class ItemScores:
    """Readings of one prompt. Keys are layers (project numbering)."""

    label_logprobs: dict[int, np.ndarray] = field(default_factory=dict)  # (n_labels,) per layer
    text_logprobs: dict[int, list[np.ndarray]] = field(default_factory=dict)  # per continuation: (T,)

    def check(self, where: str) -> ItemScores:
        """Refuse (one line naming ``where`` and the layer) any reading that is not finite."""
        for layer, values in self.label_logprobs.items():
            require_finite(values, f"{where}, layer {layer}, answer letters")
        for layer, texts in self.text_logprobs.items():
            for k, values in enumerate(texts):
                require_finite(values, f"{where}, layer {layer}, answer text {k + 1}")
        return self


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


SHARED_PREFIX_MIN = 32  # tokens: shorter shared prefixes save less than repeating their cache costs


def score_prompts(
    lm: LoadedModel,
    prompt_ids: Sequence[Sequence[int]],
    layers: Sequence[int],
    label_ids: Sequence[Sequence[int]] | None = None,
    continuations: Sequence[Sequence[Sequence[int]]] | None = None,
    batch_size: int = 8,
    padding_side: str = "left",
    max_elements: int = 2**26,
    lens: Lens | None = None,
) -> Iterator[tuple[int, ItemScores]]:
    """Yield ``(index, ItemScores)`` for every prompt, in batch order.

    ``label_ids[i]``: label tokens read at prompt i's last token; ``continuations[i]``: token lists
    appended after prompt i. With left padding (the default) each prompt is a token tree
    (:func:`~crosslens.models.passes.tree_pass`): its answer texts follow it in the same row, and
    prompts that share a prefix (:func:`_share`: a passage with several questions) are one tree, the
    prefix encoded once; trees of similar sizes are batched together (at most ``MAX_PADDING``
    padding). A prefix shared by more than ``batch_size`` prompts (a few-shot exemplar block, a
    system prompt) is encoded once into a cache and the prompts' own trees follow it, ``batch_size``
    at a time. With right padding prompts are padded and their answers follow in a second pass. On
    out-of-memory a batch is split in half and retried (finished batches are already yielded, so no
    work is lost); neither the batch size nor the sharing is part of the results beyond float
    rounding. ``lens`` reads the layers (default: the logit lens; the last layer is the model's own
    output under every lens).
    """
    lens = lens or LogitLens(lm.anatomy)
    layers = lens.check_layers(layers)
    pending = _plan(prompt_ids, continuations, batch_size, padding_side == "left")[::-1]
    while pending:
        kind, batch = pending.pop()
        try:
            if kind == "cached":
                results = _score_cached(
                    lm, lens, batch, prompt_ids, layers, label_ids, continuations, batch_size, max_elements
                )
            elif kind == "trees":
                results = _score_trees(
                    lm, lens, batch, prompt_ids, layers, label_ids, continuations, max_elements
                )
            else:
                results = _score_batch(
                    lm, lens, batch, prompt_ids, layers, label_ids, continuations, padding_side, max_elements
                )
        except (RuntimeError, torch.OutOfMemoryError) as exc:
            if not _is_oom(exc) or _size(kind, batch) == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            first, second = _halves(kind, batch)
            log.warning("out of memory with %d prompts; retrying in two halves", _size(kind, batch))
            pending += [(kind, second), (kind, first)]
            batch_size = max(1, batch_size // 2)
            continue
        yield from results


def _size(kind: str, batch: list) -> int:
    return len(batch) if kind == "alone" else sum(len(m) for _, m in batch)


def _halves(kind: str, batch: list) -> tuple[list, list]:
    """Half the prompts each; one group is split into two groups with the same prefix."""
    if kind != "alone" and len(batch) == 1:
        k, members = batch[0]
        half = len(members) // 2
        return [(k, members[:half])], [(k, members[half:])]
    half = len(batch) // 2
    return batch[:half], batch[half:]


def _share(prompt_ids: Sequence[Sequence[int]]) -> list[tuple[int, list[int]]]:
    """Prefix groups ``(prefix length, members)`` that save the most prompt tokens: the prefix that
    every prompt shares (a few-shot exemplar block, a chat system turn) as one group, or the
    pairwise groups of :func:`~crosslens.passes.prefix_groups` (several questions on one passage)."""
    pairwise = prefix_groups(prompt_ids, SHARED_PREFIX_MIN)
    saved = sum(k * (len(m) - 1) for k, m in pairwise)
    if len(prompt_ids) > 1:
        common = min(len(p) for p in prompt_ids) - 1  # every prompt keeps one token of its own
        first = prompt_ids[0]
        for p in prompt_ids[1:]:
            common = min(common, common_prefix(first, p))
        if common >= SHARED_PREFIX_MIN and common * (len(prompt_ids) - 1) > saved:
            return [(common, list(range(len(prompt_ids))))]
    return pairwise


def _plan(
    prompt_ids: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[Sequence[int]]] | None,
    batch_size: int,
    share: bool,
) -> list[tuple[str, list]]:
    """The work: ``("trees", groups)`` — groups of at most ``batch_size`` prompts (a lone prompt is a
    group of one), each one tree, batched by tree size; ``("cached", [group])`` — a larger group, its
    prefix cached once; ``("alone", prompts)`` — right-padded prompts of similar lengths."""
    if not share:
        return [("alone", b) for b in length_batches([len(p) for p in prompt_ids], batch_size)]
    groups = _share(prompt_ids)
    trees = [g for g in groups if len(g[1]) <= batch_size]
    sizes = [sum(len(t) for t, _ in _tree(prompt_ids, continuations, k, m, True)[0]) for k, m in trees]
    batches = length_batches(sizes, batch_size, max_padding=MAX_PADDING, sizes=[len(m) for _, m in trees])
    return [("cached", [g]) for g in groups if len(g[1]) > batch_size] + [
        ("trees", [trees[j] for j in b]) for b in batches
    ]


def _tree(
    prompt_ids: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[Sequence[int]]] | None,
    k: int,
    members: Sequence[int],
    with_prefix: bool,
) -> tuple[list[Segment], list[int]]:
    """The segments of prompts ``members`` (sharing their first ``k`` tokens) as one tree row: the
    prefix (unless it is cached: ``with_prefix`` False), each member's own tokens after it, each of
    its answer texts but the last token after those (an answer a member has twice, as the lens's
    English answers of an English item, is fed once); and the offsets read: per member its last
    token, then every fed token of its answers in order."""
    segments: list[Segment] = []
    keep: list[int] = []
    at, root = 0, -1
    if with_prefix and k:
        segments.append((prompt_ids[members[0]][:k], -1))
        at, root = k, 0
    for m in members:
        own = prompt_ids[m][k:]
        segments.append((own, root))
        parent, at = len(segments) - 1, at + len(own)
        keep.append(at - 1)
        fed: dict[tuple[int, ...], range] = {}
        for c in continuations[m] if continuations is not None else ():
            feed = tuple(c[:-1])
            if feed and feed not in fed:
                segments.append((feed, parent))
                fed[feed], at = range(at, at + len(feed)), at + len(feed)
            keep += fed.get(feed, ())
    return segments, keep


def _score_trees(
    lm: LoadedModel,
    lens: Lens,
    groups: list[tuple[int, list[int]]],
    prompt_ids: Sequence[Sequence[int]],
    layers: list[int],
    label_ids: Sequence[Sequence[int]] | None,
    continuations: Sequence[Sequence[Sequence[int]]] | None,
    max_elements: int,
) -> list[tuple[int, ItemScores]]:
    """Groups of prompts (a shared prefix, each member's own tokens, its answers), one tree row each."""
    rows = [_tree(prompt_ids, continuations, k, m, True) for k, m in groups]
    states = tree_pass(lm, [r for r, _ in rows], layers, [k for _, k in rows])
    members = [i for _, m in groups for i in m]
    return list(zip(members, _read(lens, members, states, layers, label_ids, continuations, max_elements)))


def _score_cached(
    lm: LoadedModel,
    lens: Lens,
    groups: list[tuple[int, list[int]]],
    prompt_ids: Sequence[Sequence[int]],
    layers: list[int],
    label_ids: Sequence[Sequence[int]] | None,
    continuations: Sequence[Sequence[Sequence[int]]] | None,
    batch_size: int,
    max_elements: int,
) -> list[tuple[int, ItemScores]]:
    """A prefix shared by many prompts: encoded once, then each prompt's tree (its own tokens, its
    answers) after its cache, trees of similar sizes ``batch_size`` at a time."""
    ((k, members),) = groups
    pp = prompt_pass(lm, [prompt_ids[members[0]][:k]], [], "left", use_cache=True)
    trees = [_tree(prompt_ids, continuations, k, [m], False) for m in members]
    sizes = [sum(len(t) for t, _ in segments) for segments, _ in trees]
    out: list[tuple[int, ItemScores]] = []
    for batch in length_batches(sizes, batch_size, max_padding=MAX_PADDING):
        chunk = [members[j] for j in batch]
        states = tree_pass(
            lm, [trees[j][0] for j in batch], layers, [trees[j][1] for j in batch], pp, [0] * len(batch)
        )
        out += zip(chunk, _read(lens, chunk, states, layers, label_ids, continuations, max_elements))
    return out


def _read(
    lens: Lens,
    members: list[int],
    states: dict[int, list[torch.Tensor]],
    layers: list[int],
    label_ids: Sequence[Sequence[int]] | None,
    continuations: Sequence[Sequence[Sequence[int]]] | None,
    max_elements: int,
) -> list[ItemScores]:
    """The readings of ``members`` from the states :func:`_tree` keeps (row by row, member by member:
    the last token, then the fed tokens of each answer)."""
    conts = [list(continuations[i]) if continuations is not None else [] for i in members]
    last: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    cont_states: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for layer in layers:
        flat = torch.cat(states[layer])
        at = 0
        for cs in conts:
            last[layer].append(flat[at])
            at += 1
            for c in cs:
                cont_states[layer].append(flat[at : at + len(c) - 1])
                at += max(len(c) - 1, 0)
    stacked = {layer: torch.stack(v) for layer, v in last.items()}
    return _project(lens, members, stacked, cont_states, layers, label_ids, continuations, max_elements)


def _score_batch(
    lm: LoadedModel,
    lens: Lens,
    batch: list[int],
    prompt_ids: Sequence[Sequence[int]],
    layers: list[int],
    label_ids: Sequence[Sequence[int]] | None,
    continuations: Sequence[Sequence[Sequence[int]]] | None,
    padding_side: str,
    max_elements: int,
) -> list[tuple[int, ItemScores]]:
    want_texts = continuations is not None and any(continuations[i] for i in batch)
    pp = prompt_pass(lm, [prompt_ids[i] for i in batch], layers, padding_side, use_cache=want_texts)
    conts = [list(continuations[i]) if continuations is not None else [] for i in batch]
    flat = [c for row in conts for c in row]
    owner = [row for row, cs in enumerate(conts) for _ in cs]
    states: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    if want_texts:
        _check_window(lm, pp, flat, padding_side)
        states = continuation_pass(lm, pp, owner, [c[:-1] for c in flat], layers)
    return list(
        zip(batch, _project(lens, batch, pp.last, states, layers, label_ids, continuations, max_elements))
    )


def _project(
    lens: Lens,
    batch: list[int],
    last: dict[int, torch.Tensor],
    cont_states: dict[int, list[torch.Tensor]],
    layers: list[int],
    label_ids: Sequence[Sequence[int]] | None,
    continuations: Sequence[Sequence[Sequence[int]]] | None,
    max_elements: int,
) -> list[ItemScores]:
    """The readings of prompts ``batch`` from their last-token states and their continuations' states."""
    labels = [list(label_ids[i]) if label_ids is not None else [] for i in batch]
    conts = [list(continuations[i]) if continuations is not None else [] for i in batch]
    flat = [c for row in conts for c in row]
    # Every target read at a prompt's last token (its labels and the first token of each of its
    # answers) comes from ONE projection of that position, not one per answer.
    first = [lab + [c[0] for c in cs] for lab, cs in zip(labels, conts)]
    width = max(len(f) for f in first)
    first_t = torch.tensor([f + [0] * (width - len(f)) for f in first], dtype=torch.long)
    rest_t = torch.zeros((sum(len(c) - 1 for c in flat), width), dtype=torch.long)
    rest_t[:, 0] = torch.tensor([t for c in flat for t in c[1:]], dtype=torch.long)
    # Each layer's states are translated by the lens's map for that layer; the head after it is
    # shared, so all layers' positions then go through one projection: large matrix products run
    # near the machine's GEMM peak, many small ones do not.
    per_layer = [(layer, torch.cat([last[layer], *cont_states[layer]])) for layer in layers]
    rows = per_layer[0][1].shape[0]
    targets = torch.cat([first_t, rest_t]).repeat(len(layers), 1)
    logp = lens.token_logprobs(per_layer, targets, max_elements).cpu().numpy()
    scores = [ItemScores() for _ in batch]
    offsets = np.cumsum([0] + [len(c) - 1 for c in flat])
    b = len(batch)
    for k, layer in enumerate(layers):
        at_last = logp[k * rows : k * rows + b]
        rest = logp[k * rows + b : (k + 1) * rows, 0]
        for row, g in enumerate(_owner_offsets(conts)):
            n_lab = len(labels[row])
            if label_ids is not None:
                scores[row].label_logprobs[layer] = at_last[row, :n_lab]
            if continuations is not None:
                scores[row].text_logprobs[layer] = [
                    np.concatenate(
                        [at_last[row, n_lab + j : n_lab + j + 1], rest[offsets[g + j] : offsets[g + j + 1]]]
                    )
                    for j in range(len(conts[row]))
                ]
    return scores


def _owner_offsets(conts: Sequence[Sequence]) -> list[int]:
    """Index of each row's first continuation in the flattened continuation list."""
    return np.cumsum([0] + [len(c) for c in conts[:-1]]).tolist()


def _check_window(lm: LoadedModel, pp, conts: Sequence[Sequence[int]], padding_side: str) -> None:
    # A right-padded cache has padding *between* prompt and continuation; sliding-window layers
    # count cache slots, not positions, so their window would be off once it is reached.
    window = getattr(lm.model.config, "sliding_window", None)
    width = pp.attention_mask.shape[1] + max(len(c) for c in conts)
    if padding_side == "right" and window and width > window:
        raise ValueError(
            f"right padding cannot extend cached prompts past the sliding window ({window} tokens) of "
            f"{lm.anatomy.model_type}; use padding_side='left'"
        )


def context_limit(lm: LoadedModel) -> int | None:
    """The longest sequence the model was built for (``max_position_embeddings``), if it says."""
    config = lm.model.config
    for c in (config, getattr(config, "text_config", None)):
        value = getattr(c, "max_position_embeddings", None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def fit_context(
    lm: LoadedModel,
    ds: ParallelDataset,
    prompter: Prompter,
    skip_long: bool = False,
    exclude: Sequence[str] = (),
) -> tuple[ParallelDataset, int]:
    """``ds`` without the items whose prompt, as ``prompter`` feeds it (exemplars, system text and
    chat template included), plus their longest answer exceeds the model's context.

    Scoring past the context reads positions the model never learnt; crosslens refuses it. An item
    too long in one language is dropped in every language (the set stays parallel) when
    ``skip_long``, else the first one is a :class:`DataError` naming it, its length and the limit;
    so is a dataset none of whose items fits. ``exclude``: items that are not read (exemplars drawn
    from ``ds``), neither measured nor dropped. Returns the dataset and how many items were skipped.
    """
    limit = context_limit(lm)
    if limit is None:
        return ds, 0
    tok = lm.tokenizer
    skip = set(exclude)
    too_long: dict[str, tuple[str, int]] = {}
    for lang, items in ds.items.items():
        items = [it for it in items if it.item_id not in skip]
        prompts = [prompter.ids(prompter.text(it)) for it in items]
        for it, ids in zip(items, prompts):
            texts = (*it.choices, *(ds.english_choices(it.item_id) or ()))
            answers = tok(
                [prompter.answer_sep + t.strip() for t in texts], add_special_tokens=False
            ).input_ids
            n = len(ids) + max(len(x) for x in answers)
            if n > limit and it.item_id not in too_long:
                too_long[it.item_id] = (lang, n)
    kept = [i for i in ds.item_ids() if i not in too_long]
    if too_long and (not skip_long or not set(kept) - skip):
        item, (lang, n) = next(iter(too_long.items()))
        shots = f" after {len(prompter.exemplars())} exemplars" if prompter.shots else ""
        fix = "shorten them or pass --skip-long to leave them out" if not skip_long else "no item fits"
        raise DataError(
            f"item {item!r} ({lang}) needs {n} tokens (prompt{shots} + longest answer), more than the "
            f"{limit} of {lm.spec}'s context; {len(too_long)} item(s) are too long: {fix}"
        )
    return ds.subset(kept), len(too_long)
