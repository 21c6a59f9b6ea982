"""Training a tuned lens (Belrose et al. 2023): per layer, the affine translator that makes the model's
own head read that layer as the model's final distribution.

Each translator minimises KL(p_final || q_lens) over positions of a text corpus, the model frozen.
Choices (docs/lens.md says why):

* **text**: plain text files (a document per line) or the *inputs* (passage + question, never the
  answers) of dataset items that the lens will not be read on; each document is its first
  ``seq_len`` tokens; a seeded tenth of the documents is held out for validation;
* **cost**: one model forward (no LM head) serves every layer of a batch; the target distribution is
  computed once per batch; ``positions`` positions per document are drawn per step (BOS never);
  the frozen head runs in bfloat16 (the CPU's matrix units) with the loss in float32;
* **optimiser**: Adam, linear warm-up over 5 % of the steps then linear decay to 0 — the tuned-lens
  project's SGD schedule needs ~65M tokens, far beyond a CPU budget;
* **how much**: exactly ``tokens`` positions are trained (documents repeat, epoch after epoch, until
  they are): a document gives ``min(positions, its tokens - 1)`` positions per step, and the last
  step is cut where the count is reached; what is reported (progress, ``lens.json``) is what ran;
* **determinism and resume**: step k's documents and positions are functions of (seed, k) only; a
  checkpoint (translators + Adam moments, safetensors) is written atomically every
  ``checkpoint_every`` steps with the whole training fingerprint (the model's identity, its dtype,
  the settings, the corpus digest), so a killed run resumes to the same weights as an uninterrupted
  one, and a run for another model, dtype, settings or text refuses the checkpoint instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from crosslens.data.schema import Item, ParallelDataset
from crosslens.lenses.lens import (
    LENS_FILE,
    LensError,
    LensInfo,
    LogitLens,
    TunedLens,
    check_model,
    compare_model,
    load_lens,
    model_identity,
    parse_lens,
    read_info,
)
from crosslens.lenses.options import TrainOptions
from crosslens.models.anatomy import capture_residuals, paper_layers
from crosslens.models.devices import bf16_units
from crosslens.models.loading import LoadedModel, sha256_file
from crosslens.options import OptionError, Seed
from crosslens.store import Store, atomic_write_bytes

__all__ = [
    "TrainSettings",
    "Corpus",
    "corpus_from_files",
    "corpus_from_dataset",
    "train_lens",
    "check_lens_folder",
    "default_layers",
    "precheck_training",
    "schedule",
    "Schedule",
]

CHECKPOINT = "checkpoint.safetensors"


class TrainSettings(TrainOptions):
    """:class:`TrainOptions` for one model: the layers trained, the seed, the validation share."""

    layers: tuple[int, ...] | None = None  # None: the paper's schedule without the last layer
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    seed: Seed = 0


def resolve_head_dtype(settings: TrainSettings, device: str) -> TrainSettings:
    """``auto`` made concrete (the dtype changes the weights, so the concrete one is recorded)."""
    if settings.head_dtype != "auto":
        return settings
    return settings.model_copy(update={"head_dtype": "bfloat16" if bf16_units(device) else "float32"})


def default_layers(n_layers: int) -> list[int]:
    """The paper's lens schedule, less the last layer (read as is by every lens)."""
    return [ell for ell in paper_layers(n_layers) if ell < n_layers]


@dataclass(frozen=True)
class Corpus:
    """Documents to train on, and a description recorded in the lens file."""

    documents: tuple[str, ...]
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for doc in self.documents:
            h.update(doc.encode("utf-8") + b"\0")
        return h.hexdigest()


def corpus_from_files(paths: Sequence[str | Path]) -> Corpus:
    """Plain text files, one document per line (blank lines skipped)."""
    docs: list[str] = []
    files = []
    for p in map(Path, paths):
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read corpus file {p}: {exc}") from None
        lines = [line.strip() for line in text.split("\n") if line.strip()]
        if not lines:
            raise ValueError(f"corpus file {p} has no text")
        docs += lines
        files.append({"path": str(p), "sha256": sha256_file(p), "documents": len(lines)})
    return Corpus(tuple(docs), {"source": "files", "files": files})


def item_input(item: Item) -> str:
    """What the model reads of an item, without template or answers: passage and question."""
    return f"{item.context}\n{item.question}" if item.context else item.question


def corpus_from_dataset(ds: ParallelDataset, languages: Sequence[str] | None = None) -> Corpus:
    """The inputs (passage + question, never the choices) of every item of ``ds`` in ``languages``.

    The item ids are recorded so that a lens is never read on the items it was fit on.
    """
    languages = list(languages or ds.languages)
    docs = [item_input(ds.item(lang, i)) for lang in languages for i in ds.item_ids()]
    # A passage asked about twice is one document.
    docs = list(dict.fromkeys(docs))
    return Corpus(
        tuple(docs),
        {
            "source": "dataset",
            "dataset": ds.name,
            "data_source": ds.source,
            "languages": languages,
            "item_ids": list(ds.item_ids()),
            "text": "item passage + question (no template, no answers)",
        },
    )


# -- the training loop -------------------------------------------------------------------------------------
class _Head(nn.Module):
    """The model's head for training: final norm, then the unembedding in ``dtype``, softcap, float32 out."""

    def __init__(self, lm: LoadedModel, dtype: torch.dtype):
        super().__init__()
        self.anatomy = lm.anatomy
        self.weight = lm.anatomy.unembed_weight.detach().to(dtype)
        bias = lm.anatomy.unembed_bias
        self.bias = None if bias is None else bias.detach().to(dtype)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = self.anatomy
        hn = a.final_norm(h.to(a.unembed_weight.dtype))
        logits = nn.functional.linear(hn.to(self.weight.dtype), self.weight, self.bias).float()
        return torch.log_softmax(a.cap(logits), dim=-1)


@dataclass
class _Data:
    train: list[list[int]]
    val: list[list[int]]


def _tokenize(lm: LoadedModel, corpus: Corpus, s: TrainSettings) -> _Data:
    ids = [x[: s.seq_len] for x in lm.tokenizer(list(corpus.documents)).input_ids]
    ids = [x for x in ids if len(x) >= 2]
    if len(ids) < 2:
        raise ValueError("the lens corpus needs at least 2 documents of 2 tokens or more")
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(s.seed)).tolist()
    n_val = max(1, round(s.val_fraction * len(ids)))
    return _Data([ids[i] for i in order[n_val:]], [ids[i] for i in order[:n_val]])


def _positions(length: int, k: int, gen: torch.Generator) -> list[int]:
    """``k`` distinct positions in 1..length-1 (all of them when there are fewer), sorted."""
    pool = length - 1
    pick = torch.randperm(pool, generator=gen)[:k] + 1
    return sorted(pick.tolist())


def _epoch_order(s: TrainSettings, epoch: int, n: int) -> list[int]:
    """The training documents' order in ``epoch``: a function of (seed, epoch) alone."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(s.seed * 100003 + epoch)).tolist()


@dataclass(frozen=True)
class Schedule:
    """The steps that train exactly ``tokens`` positions: the documents read in all (document j of the
    run is document j mod n of epoch j div n) and how many positions the last of them gives."""

    documents: int
    last_positions: int
    batch: int

    @property
    def steps(self) -> int:
        return math.ceil(self.documents / self.batch)


def schedule(data: _Data, s: TrainSettings) -> Schedule:
    """Whole epochs while they fit in ``tokens``, then the next epoch's documents until it is reached."""
    counts = [min(s.positions, len(d) - 1) for d in data.train]
    full, rest = divmod(s.tokens, sum(counts))
    if rest == 0:  # the count ends with an epoch: its last document is read whole
        full, rest = full - 1, sum(counts)
    taken = 0
    for k, i in enumerate(_epoch_order(s, full, len(counts))):
        if taken + counts[i] >= rest:
            return Schedule(full * len(counts) + k + 1, rest - taken, s.batch)
        taken += counts[i]
    raise AssertionError("an epoch holds more positions than the rest of the count")


def _step_batch(
    data: _Data, s: TrainSettings, step: int, plan: Schedule
) -> tuple[list[list[int]], list[list[int]]]:
    """Documents and positions of training step ``step``: a function of (seed, step) alone (the last
    step's are cut where the schedule ends)."""
    n = len(data.train)
    orders: dict[int, list[int]] = {}  # epoch -> its shuffle (a step spans at most two epochs)
    docs = []
    for j in range(step * s.batch, min((step + 1) * s.batch, plan.documents)):
        epoch, k = divmod(j, n)
        if epoch not in orders:
            orders[epoch] = _epoch_order(s, epoch, n)
        docs.append(data.train[orders[epoch][k]])
    gen = torch.Generator().manual_seed(s.seed * 1000003 + step + 1)
    positions = [_positions(len(d), s.positions, gen) for d in docs]
    if step == plan.steps - 1:
        positions[-1] = positions[-1][: plan.last_positions]
    return docs, positions


def _states(
    lm: LoadedModel, docs: list[list[int]], positions: list[list[int]], layers: list[int]
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Residual states at ``layers`` (and the last one) at the positions: (N, d) each, plus weights (N,)."""
    width = max(map(len, docs))
    pad = lm.tokenizer.pad_token_id or 0
    ids = torch.tensor([d + [pad] * (width - len(d)) for d in docs], device=lm.device)
    mask = torch.tensor([[1] * len(d) + [0] * (width - len(d)) for d in docs], device=lm.device)
    k = max(map(len, positions))
    index = torch.tensor([p + [p[0]] * (k - len(p)) for p in positions])
    weight = torch.tensor([[1.0] * len(p) + [0.0] * (k - len(p)) for p in positions]).flatten()
    last = lm.anatomy.n_layers
    with torch.no_grad(), capture_residuals(lm.anatomy, [*layers, last], index) as store:
        lm.model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
    return {ell: store[ell].reshape(-1, store[ell].shape[-1]) for ell in store}, weight.to(lm.device)


def _kl(target: torch.Tensor, logq: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean over rows of KL(p || q) in nats, from log-probabilities (float32)."""
    per_row = (target.exp() * (target - logq)).sum(-1)
    return (per_row * weight).sum() / weight.sum()


def _lr(s: TrainSettings, step: int, steps: int) -> float:
    warm = max(1, round(0.05 * steps))
    return s.lr * min(1.0, (step + 1) / warm) * (1 - step / steps)


def _val_batches(data: _Data, s: TrainSettings) -> list[tuple[list[list[int]], list[list[int]]]]:
    """Fixed validation positions: ``positions`` per held-out document (as in training), ``val_tokens``
    in all (fewer documents to run through the model than one position from each), or every position
    of the held-out documents where they hold fewer."""
    gen = torch.Generator().manual_seed(s.seed + 7)
    per_doc = max(s.positions, math.ceil(s.val_tokens / len(data.val)))
    picks, taken = [], 0
    for d in data.val:
        p = _positions(len(d), per_doc, gen)[: s.val_tokens - taken]
        if p:
            picks.append((d, p))
            taken += len(p)
    return [
        ([d for d, _ in picks[j : j + s.batch]], [p for _, p in picks[j : j + s.batch]])
        for j in range(0, len(picks), s.batch)
    ]


def validation_kl(
    lm: LoadedModel, lens: TunedLens, data: _Data, s: TrainSettings, chunk: int = 256
) -> dict[str, dict[str, float]]:
    """Per layer, validation KL(final || lens) of the tuned lens and of the logit lens (nats per token),
    through the lenses' own reading path (the model's dtype, as the lens stage reads). States are
    gathered first and projected ``chunk`` positions at a time: a vocabulary projection of a few rows
    is bound by reading the unembedding, not by arithmetic."""
    layers, last = lens.layers, lm.anatomy.n_layers
    logit = LogitLens(lm.anatomy)
    parts = [_states(lm, docs, pos, layers) for docs, pos in _val_batches(data, s)]
    states = {ell: torch.cat([p[0][ell] for p in parts]) for ell in [*layers, last]}
    weight = torch.cat([p[1] for p in parts])
    sums = {name: dict.fromkeys(layers, 0.0) for name in ("tuned", "logit")}
    with torch.no_grad():
        for a in range(0, len(weight), chunk):
            w = weight[a : a + chunk]
            target = torch.log_softmax(logit.logits(states[last][a : a + chunk], last), -1)
            for ell in layers:
                for name, reader in (("tuned", lens), ("logit", logit)):
                    logq = torch.log_softmax(reader.logits(states[ell][a : a + chunk], ell), -1)
                    sums[name][ell] += float(_kl(target, logq, w)) * float(w.sum())
    total = float(weight.sum())
    return {name: {str(ell): v / total for ell, v in per.items()} for name, per in sums.items()}


def _settings_doc(s: TrainSettings, layers: list[int], corpus: Corpus, dtype: str) -> dict[str, Any]:
    """What the weights depend on besides the model itself: the settings, the text and the model's
    dtype (the model is checked by :func:`check_model`)."""
    # How often checkpoints are written changes nothing in the weights, so it is not compared.
    settings = {k: v for k, v in s.model_dump().items() if k != "checkpoint_every"} | {"layers": layers}
    return {"settings": settings, "corpus_sha256": corpus.digest, "model_dtype": dtype}


def _trained_layers(s: TrainSettings, n_layers: int) -> list[int]:
    """The layers given, else the paper's schedule less the last; refused when that leaves none."""
    layers = sorted({int(x) for x in (s.layers if s.layers is not None else default_layers(n_layers))})
    if not [x for x in layers if x < n_layers]:
        raise OptionError(
            "layers",
            f"no layer to train: a tuned lens translates layers 0..{n_layers - 1} (the last is read as "
            f"is){'' if s.layers is not None else ', and the paper schedule of this model reads no other'}; "
            "name some",
        )
    return layers


def precheck_training(
    folder: str | Path,
    model: dict[str, Any],
    dtype: str,
    device: str,
    settings: TrainSettings,
    corpus: Corpus,
) -> None:
    """Before the model loads: refuse a folder whose lens or checkpoint was made for another model,
    dtype, settings or text, as far as they are known without it. ``model``: ``spec``, ``model_id``
    (:func:`crosslens.models.loading.content_identity`) and ``n_layers`` (the depth from its config;
    absent when unreadable offline, then everything is checked once it loads)."""
    folder = Path(folder)
    if "n_layers" not in model:
        return
    s = resolve_head_dtype(settings, device)
    wanted = _settings_doc(s, _trained_layers(s, model["n_layers"]), corpus, dtype)
    if (folder / LENS_FILE).is_file():
        doc = read_info(folder)
        compare_model(doc.model.model_dump(exclude_unset=True), model, folder)
        training = doc.training
        _check_same({k: training.get(k) for k in wanted}, wanted, folder, "a lens trained")
    elif (folder / CHECKPOINT).is_file():
        recorded, training = _read_checkpoint(folder / CHECKPOINT, with_tensors=False)[:2]
        compare_model(recorded, model, folder / CHECKPOINT, "checkpoint")
        _check_same(training, wanted, folder / CHECKPOINT, "a partly trained lens")


def _check_same(recorded: Any, wanted: dict[str, Any], folder: Path, what: str) -> None:
    if recorded == wanted:
        return
    recorded = recorded if isinstance(recorded, dict) else {}
    old = recorded.get("settings") if isinstance(recorded.get("settings"), dict) else {}
    new = wanted["settings"]
    diff = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in new if old.get(k) != new[k]]
    if recorded.get("corpus_sha256") != wanted["corpus_sha256"]:
        diff.append("corpus: other text")
    if recorded.get("model_dtype") != wanted["model_dtype"]:
        diff.append(f"dtype: {recorded.get('model_dtype')!r} -> {wanted['model_dtype']!r}")
    raise LensError(
        f"{folder} holds {what} with other settings ({'; '.join(diff) or 'other'}); "
        "use another folder or delete it"
    )


def check_lens_folder(folder: Path) -> None:
    """A lens folder holds a lens: refuse one holding results (run.json, a stage's Parquet tables)."""
    if Store(folder).run_path.is_file() or any(folder.glob("*/*.parquet")):
        raise LensError(
            f"{folder} holds crosslens results, not a lens; train the lens into a folder of its own"
        )


def train_lens(
    lm: LoadedModel,
    corpus: Corpus,
    folder: str | Path,
    settings: TrainSettings = TrainSettings(),
    on_step: Callable[[int, int, float, int], None] | None = None,
) -> TunedLens:
    """Train (or resume, or reuse) the tuned lens of ``lm`` in ``folder``; returns it, saved.

    A finished lens trained with the same settings on the same text is reused; one trained
    otherwise is refused, and so is a checkpoint of another training. ``on_step(step, steps, loss,
    positions)`` is called after every step (``positions``: trained so far, ``settings.tokens`` at the end).
    """
    settings = resolve_head_dtype(settings, str(lm.device))
    folder = Path(folder)
    check_lens_folder(folder)
    layers = lm.anatomy.check_layers(_trained_layers(settings, lm.anatomy.n_layers))
    wanted = _settings_doc(settings, layers, corpus, lm.precision)
    if (folder / LENS_FILE).is_file():
        doc = read_info(folder)
        check_model(doc.model.model_dump(exclude_unset=True), lm, folder)
        _check_same({k: doc.training.get(k) for k in wanted}, wanted, folder, "a lens trained")
        lens = load_lens(parse_lens(f"tuned:{folder}"), lm)
        assert isinstance(lens, TunedLens)
        return lens
    data = _tokenize(lm, corpus, settings)
    plan = schedule(data, settings)
    info = LensInfo(model_identity(lm), layers)
    lens = TunedLens(lm.anatomy, layers, info)
    params = list(lens.translators.parameters())
    opt = torch.optim.Adam(params, lr=settings.lr)
    head = _Head(lm, getattr(torch, settings.head_dtype))
    with Store(folder).lock("lens"):
        start, trained = _resume(folder, lens, opt, wanted, lm)
        began, tokens = time.perf_counter(), 0
        for step in range(start, plan.steps):
            docs, pos = _step_batch(data, settings, step, plan)
            states, w = _states(lm, docs, pos, layers)
            with torch.no_grad():
                target = head(states[lm.anatomy.n_layers])
            opt.zero_grad(set_to_none=True)
            # Every layer's translated states through ONE head projection (the head is shared): one
            # large matrix product runs faster than one per layer; each layer's KL is summed.
            logq = head(torch.cat([lens.translate(states[ell].float(), ell) for ell in layers]))
            kl = _kl(target.repeat(len(layers), 1), logq, w.repeat(len(layers))) * len(layers)
            kl.backward()
            loss = float(kl.detach())
            del logq, kl
            for group in opt.param_groups:
                group["lr"] = _lr(settings, step, plan.steps)
            opt.step()
            tokens += int(w.sum())
            if (step + 1) % settings.checkpoint_every == 0 and step + 1 < plan.steps:
                _checkpoint(folder, lens, opt, (step + 1, trained + tokens), wanted, model_identity(lm))
            if on_step:
                on_step(step + 1, plan.steps, loss / len(layers), trained + tokens)
        seconds = time.perf_counter() - began
        val_kl = validation_kl(lm, lens, data, settings)
        info.val_kl = val_kl
        info.training = wanted | {
            "corpus": corpus.description,
            "documents": {"train": len(data.train), "validation": len(data.val)},
            "steps": plan.steps,
            "positions": {
                "train": trained + tokens,
                "validation": sum(len(p) for _, ps in _val_batches(data, settings) for p in ps),
            },
            "seconds_this_run": round(seconds, 1),
            "tokens_per_second_this_run": round(tokens / seconds, 1) if seconds > 0 else None,
            "device": str(lm.device),
            "loss": "KL(final || lens), nats per position",
        }
        lens.save(folder)
        (folder / CHECKPOINT).unlink(missing_ok=True)
    return lens


def _checkpoint(
    folder: Path,
    lens: TunedLens,
    opt: torch.optim.Optimizer,
    done: tuple[int, int],
    wanted: dict,
    model: dict,
) -> None:
    """Translators and Adam moments after ``done`` = (steps, positions trained), with the training's
    whole fingerprint: the model (:func:`model_identity`) and ``wanted`` (settings, corpus digest, dtype)."""
    tensors = lens.tensors()
    for name, p in zip(list(tensors), opt.param_groups[0]["params"]):
        state = opt.state[p]
        tensors[f"adam.exp_avg.{name}"] = state["exp_avg"].detach().clone()
        tensors[f"adam.exp_avg_sq.{name}"] = state["exp_avg_sq"].detach().clone()
    meta = {
        "step": str(done[0]),
        "positions": str(done[1]),
        "adam_step": str(float(opt.state[opt.param_groups[0]["params"][0]]["step"])),
        "model": json.dumps(model, sort_keys=True),
        "training": json.dumps(wanted, sort_keys=True),
    }
    atomic_write_bytes(folder / CHECKPOINT, save(tensors, metadata=meta))


def _read_checkpoint(
    path: Path, with_tensors: bool = True
) -> tuple[dict[str, Any], Any, dict[str, str], dict[str, torch.Tensor]]:
    """A checkpoint's model record, training fingerprint, metadata and (``with_tensors``) tensors; one
    :class:`LensError` line for a file that is not a complete checkpoint of this crosslens (never
    trusted, never resumed)."""
    try:
        with safe_open(path, "pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()} if with_tensors else {}
        model, training = json.loads(meta["model"]), json.loads(meta["training"])
        int(meta["step"]), int(meta["positions"]), float(meta["adam_step"])
    except KeyError as exc:
        raise LensError(
            f"{path} records no {exc.args[0]} (written by an older crosslens, or not a checkpoint): "
            "delete it to train from the start"
        ) from None
    except (OSError, ValueError, SafetensorError) as exc:
        raise LensError(f"cannot read {path} ({exc}); delete it to train from the start") from None
    if not isinstance(model, dict):
        raise LensError(f"{path} records no model; delete it to train from the start")
    return model, training, meta, tensors


def _resume(
    folder: Path, lens: TunedLens, opt: torch.optim.Optimizer, wanted: dict, lm: LoadedModel
) -> tuple[int, int]:
    """The step to start from and the positions trained before it: (0, 0), or the checkpoint's
    (translators and Adam moments restored) once its model, dtype, settings and text are this
    training's; any other checkpoint is refused."""
    path = folder / CHECKPOINT
    if not path.is_file():
        return 0, 0
    model, training, meta, tensors = _read_checkpoint(path)
    check_model(model, lm, path, "checkpoint")
    _check_same(training, wanted, path, "a partly trained lens")
    step, positions, adam_step = int(meta["step"]), int(meta["positions"]), float(meta["adam_step"])
    names = list(lens.tensors())
    missing = [k for n in names for k in (n, f"adam.exp_avg.{n}", f"adam.exp_avg_sq.{n}") if k not in tensors]
    if missing:
        raise LensError(f"{path} lacks {missing[0]} (not this lens's checkpoint); delete it to start over")
    with torch.no_grad():
        for name, p in zip(names, opt.param_groups[0]["params"]):
            p.copy_(tensors[name])
            opt.state[p] = {
                "step": torch.tensor(adam_step),
                "exp_avg": tensors[f"adam.exp_avg.{name}"].clone(),
                "exp_avg_sq": tensors[f"adam.exp_avg_sq.{name}"].clone(),
            }
    return step, positions
