"""Records from lm-evaluation-harness runs: ``crosslens import-lmeval RESULTS_DIR --out DIR``.

``lm_eval ... --log_samples`` writes one ``samples_<task>_<date>.jsonl`` per task, a line per
document: ``doc_id``, ``doc``, ``target``, ``arguments`` (the (context, continuation) request of
each choice), ``resps`` / ``filtered_resps`` (its log-likelihood and greediness), ``prompt_hash``.
For the parallel multilingual task families below, this module maps each task to its language,
aligns documents across languages (by the dataset's own item id, which crosslens' loaders use too,
or by row for a family without one, where the gold answers must then agree on every row) and
writes the records table of ``crosslens eval``: ranks from the log-likelihoods, pred, correct, the
prompt. ``crosslens metrics`` and ``crosslens report`` then work on a model crosslens never ran.

A task whose choices are the answer letters fills the letter columns; a task whose choices are
answer texts fills them with lm-eval's ``acc`` reading (the raw log-likelihood) and the cloze
columns with its ``acc_norm`` (per character). Each language's task configuration (from the run's
``results_*.json``: template, choices, delimiters, shots) is hashed, so languages prompted with
different templates are visible (a warning, ``run.json`` and the report).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crosslens.data.schema import LETTERS, DataError, Item, ParallelDataset
from crosslens.scoring.answers import label_fields
from crosslens.scoring.choices import rank_choices
from crosslens.scoring.records import RECORDS
from crosslens.stages.base import Stage, Unit, plan_units, run_stage
from crosslens.stages.evaluate.stage import summarize_records
from crosslens.store import Store

__all__ = ["FAMILIES", "Family", "import_lmeval", "import_stage", "read_samples"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    """A parallel task family: its task names, the crosslens dataset it is, how a doc names its item."""

    dataset: str
    pattern: str  # full match of a task name; group ``lang`` (lower case as lm-eval writes it)
    pivot: str | None
    item_id: Callable[[dict, int], str] | None  # (doc, doc_id) -> id; None: align by row
    language: Callable[[str], str] = str  # lm-eval's code -> crosslens' code
    english_task: str | None = None  # the English task where its name has no language code
    tags: Callable[[dict], tuple[str, ...]] = lambda doc: ()  # e.g. Global-MMLU's CS / CA label


def _global_mmlu_tags(label: Any) -> tuple[str, ...]:
    from crosslens.data.loaders import _GLOBAL_MMLU_TAGS

    return (label.strip(),) if isinstance(label, str) and label.strip() in _GLOBAL_MMLU_TAGS else ()


def _field(*keys: str) -> Callable[[dict, int], str]:
    def get(doc: dict, doc_id: int) -> str:
        return "#".join(str(doc[k]) for k in keys)

    return get


FAMILIES: tuple[Family, ...] = (
    Family("belebele", r"belebele_(?P<lang>[a-z]{3}_[A-Z][a-z]{3})", "eng_Latn",
           _field("link", "question_number")),
    Family("okapi-mmlu", r"m_mmlu_(?P<lang>[a-z]{2,3})", "en", _field("id")),
    Family("okapi-arc", r"arc_(?P<lang>[a-z]{2,3})", "en", _field("id")),
    Family("mhellaswag", r"hellaswag_(?P<lang>[a-z]{2,3})", "en", _field("ind"), english_task="hellaswag"),
    Family("mmmlu", r"mmmlu_(?P<lang>[a-z]{2}_[a-z]{2})_(?P<part>\w+)", "EN_US",
           lambda doc, k: f"{str(doc['Subject']).strip()}/test/{k}", str.upper),
    Family("global-mmlu", r"global_mmlu_(?:full_)?(?P<lang>[a-z]{2,3})(?:_(?P<part>\w+))?", "en",
           _field("sample_id"), tags=lambda doc: _global_mmlu_tags(doc.get("cultural_sensitivity_label"))),
    Family("xcopa", r"xcopa_(?P<lang>[a-z]{2,3})", None, _field("idx")),
    Family("xstorycloze", r"xstorycloze_(?P<lang>[a-z]{2,3})", "en", _field("story_id")),
)  # fmt: skip

_SAMPLES = re.compile(r"samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[\d\-.:]+)\.jsonl")


@dataclass(frozen=True)
class Sample:
    """One document of one task, as lm-eval scored it."""

    task: str
    item_id: str
    prompt: str
    choices: tuple[str, ...]  # the continuations, stripped
    logliks: tuple[float, ...]
    gold: int
    prompt_hash: str
    where: str
    tags: tuple[str, ...] = ()


def _family(task: str) -> tuple[Family, str] | None:
    for fam in FAMILIES:
        if task == fam.english_task and fam.pivot is not None:
            return fam, fam.pivot
        m = re.fullmatch(fam.pattern, task)
        if m:
            return fam, fam.language(m["lang"])
    return None


def _requests(raw: dict, where: str) -> list[tuple[str, str]]:
    """(context, continuation) per request: ``{gen_args_i: {arg_0, arg_1}}`` or older ``[[ctx, cont]]``."""
    args = raw.get("arguments")
    if isinstance(args, dict):
        args = [args[k] for k in sorted(args, key=lambda k: int(k.rsplit("_", 1)[-1]))]
        args = [[a.get("arg_0"), a.get("arg_1")] if isinstance(a, dict) else a for a in args]
    if not isinstance(args, list) or not all(
        isinstance(a, list) and len(a) >= 2 and isinstance(a[0], str) and isinstance(a[1], str) for a in args
    ):
        raise DataError(f"{where}: 'arguments' is not a list of (context, continuation) requests")
    return [(a[0], a[1]) for a in args]


def _loglik(resp: Any, where: str) -> float:
    """A ``filtered_resps`` entry: ``[loglikelihood, is_greedy]`` (lm-eval writes both as strings)."""
    value = resp[0] if isinstance(resp, list | tuple) and resp else resp
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: a response is not a log-likelihood ({resp!r})") from None
    if not np.isfinite(x):
        raise DataError(f"{where}: a log-likelihood is {x}")
    return x


def _gold(raw: dict, choices: Sequence[str], logliks: Sequence[float], where: str) -> int:
    """The gold index from ``target`` (an index, or the text of a choice), checked against ``acc``."""
    target = str(raw.get("target", "")).strip()
    candidates = set()
    if re.fullmatch(r"\d+", target) and int(target) < len(choices):
        candidates.add(int(target))
    if target in choices:
        candidates.add(list(choices).index(target))
    acc = raw.get("acc")
    if len(candidates) > 1 and acc in (0, 1, 0.0, 1.0):
        pred = int(np.argmax(logliks))
        candidates = {g for g in candidates if (g == pred) == bool(acc)}
    if len(candidates) != 1:
        raise DataError(
            f"{where}: cannot tell the gold answer from target {target!r} and choices {list(choices)}"
        )
    return candidates.pop()


def read_samples(path: Path, task: str, family: Family) -> list[Sample]:
    """One ``samples_<task>_<date>.jsonl`` file (the ``none`` filter of a multiple-choice task)."""
    out: dict[int, Sample] = {}
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path} line {n}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: invalid JSON ({e.msg})") from None
        missing = [k for k in ("doc_id", "doc", "target", "arguments", "filtered_resps") if k not in raw]
        if missing:
            raise DataError(f"{where}: field {missing[0]!r} is missing (not an lm-eval samples file?)")
        if raw.get("filter", "none") != "none":
            continue
        requests = _requests(raw, where)
        resps = raw["filtered_resps"]
        if not isinstance(resps, list) or len(resps) != len(requests):
            raise DataError(f"{where}: {len(requests)} requests but {len(resps)} responses")
        if "acc_mutual_info" in (raw.get("metrics") or []):  # the unconditional requests follow
            requests, resps = requests[: len(requests) // 2], resps[: len(resps) // 2]
        contexts = {ctx for ctx, _ in requests}
        if len(contexts) != 1:
            raise DataError(f"{where}: the choices have different contexts (not a multiple-choice task)")
        doc_id = int(raw["doc_id"])
        choices = tuple(cont.strip() for _, cont in requests)
        logliks = tuple(_loglik(r, where) for r in resps)
        try:
            item_id = family.item_id(raw["doc"], doc_id) if family.item_id else str(doc_id)
        except (KeyError, TypeError):
            raise DataError(f"{where}: the doc has no {family.dataset} item id") from None
        gold = _gold(raw, choices, logliks, where)
        prompt_hash = str(raw.get("prompt_hash", ""))
        tags = family.tags(raw["doc"]) if isinstance(raw["doc"], dict) else ()
        out[doc_id] = Sample(task, item_id, requests[0][0], choices, logliks, gold, prompt_hash, where, tags)
    if not out:
        raise DataError(f"{path}: no samples")
    return [out[k] for k in sorted(out)]


def _task_hashes(root: Path) -> dict[str, str]:
    """Each task's prompt configuration hash, from the run's ``results_*.json`` (``configs``)."""
    keys = ("doc_to_text", "doc_to_choice", "doc_to_target", "target_delimiter", "fewshot_delimiter",
            "description", "num_fewshot", "fewshot_config")  # fmt: skip
    out: dict[str, str] = {}
    for path in sorted(root.rglob("results_*.json")):
        try:
            configs = json.loads(path.read_text(encoding="utf-8")).get("configs") or {}
        except (OSError, ValueError):
            continue
        for task, cfg in configs.items():
            if isinstance(cfg, dict):
                text = json.dumps({k: cfg.get(k) for k in keys}, sort_keys=True, default=str)
                out[task] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return out


def _model_name(root: Path) -> str | None:
    for path in sorted(root.rglob("results_*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        name = data.get("model_name") or (data.get("config") or {}).get("model_args")
        if name:
            return str(name)
    return None


@dataclass
class Imported:
    """What a results folder holds for one family: samples per language, aligned."""

    family: Family
    ds: ParallelDataset
    samples: dict[tuple[str, str], Sample]
    tasks: dict[str, list[str]]  # language -> its tasks
    config_hashes: dict[str, list[str]]  # language -> its tasks' configuration hashes
    form: str  # "letters" or "texts"


def collect(root: str | Path, family: str | None = None) -> Imported:
    """Find the samples files under ``root``, map tasks to languages, align the items."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (give the --output_path of an lm_eval --log_samples run)")
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("samples_*.jsonl")):
        m = _SAMPLES.fullmatch(path.name)
        if not m:
            continue
        if m["task"] in files:
            raise DataError(f"{root}: two samples files for task {m['task']!r} ({files[m['task']].name}, "
                            f"{path.name}); import one run's folder")  # fmt: skip
        files[m["task"]] = path
    if not files:
        raise DataError(f"{root}: no samples_<task>_<date>.jsonl files (run lm_eval with --log_samples)")
    mapped = {task: _family(task) for task in files}
    families = sorted({fm[0].dataset for fm in mapped.values() if fm})
    if family is not None:
        if family not in {f.dataset for f in FAMILIES}:
            raise DataError(f"unknown family {family!r}; known: {', '.join(f.dataset for f in FAMILIES)}")
        families = [family] if family in families else []
    if not families:
        raise DataError(f"{root}: none of the tasks ({', '.join(sorted(files))}) is of a known family "
                        f"({', '.join(f.pattern for f in FAMILIES)})")  # fmt: skip
    if len(families) > 1:
        raise DataError(
            f"{root} holds tasks of several families ({', '.join(families)}); choose one with --family"
        )
    fam = next(f for f in FAMILIES if f.dataset == families[0])
    skipped = sorted(t for t, fm in mapped.items() if not fm or fm[0] is not fam)
    if skipped:
        log.warning("not imported (other families): %s", ", ".join(skipped))
    by_lang: dict[str, list[Sample]] = {}
    tasks: dict[str, list[str]] = {}
    for task, fm in sorted(mapped.items()):
        if fm and fm[0] is fam:
            lang = fm[1]
            by_lang.setdefault(lang, []).extend(read_samples(files[task], task, fam))
            tasks.setdefault(lang, []).append(task)
    if len(by_lang) < 2:
        raise DataError(
            f"{root}: only one language ({', '.join(by_lang)}) of {fam.dataset}: nothing to compare"
        )
    hashes = _task_hashes(root)
    config_hashes = {lang: sorted({hashes.get(t, "?") for t in ts}) for lang, ts in tasks.items()}
    samples, ds = _align(fam, by_lang)
    forms = {"letters" if _letters(s.choices) else "texts" for s in samples.values()}
    if len(forms) > 1:
        raise DataError(
            f"{root}: some tasks answer with letters, others with answer texts; import them apart"
        )
    return Imported(fam, ds, samples, tasks, config_hashes, forms.pop())


def _letters(choices: Sequence[str]) -> bool:
    return list(choices) == list(LETTERS[: len(choices)])


def _align(
    fam: Family, by_lang: dict[str, list[Sample]]
) -> tuple[dict[tuple[str, str], Sample], ParallelDataset]:
    """Items present in every language; their gold answer and choice count must agree, else refused."""
    index: dict[str, dict[str, Sample]] = {}
    for lang, samples in by_lang.items():
        seen: dict[str, Sample] = {}
        for s in samples:
            if s.item_id in seen:
                raise DataError(f"{s.where}: item {s.item_id!r} appears twice in {lang} "
                                f"(first at {seen[s.item_id].where})")  # fmt: skip
            seen[s.item_id] = s
        index[lang] = seen
    languages = sorted(index)
    if fam.pivot in index:
        languages = [fam.pivot] + [lang for lang in languages if lang != fam.pivot]
    reference = index[languages[0]]
    common = [i for i in reference if all(i in index[lang] for lang in languages)]
    if not common:
        raise DataError(f"{fam.dataset}: no item is present in every language ({', '.join(languages)})")
    for i in common:
        r = reference[i]
        for lang in languages[1:]:
            s = index[lang][i]
            if len(s.choices) != len(r.choices) or s.gold != r.gold:
                how = "by row" if fam.item_id is None else "by item id"
                raise DataError(
                    f"{s.where} (item {i!r}): {len(s.choices)} choices, answer {LETTERS[s.gold]}, but "
                    f"{len(r.choices)} choices, answer {LETTERS[r.gold]} in {languages[0]} ({r.where}): "
                    f"the tasks cannot be aligned {how}"
                )
    dropped = {lang: len(index[lang]) - len(common) for lang in languages}
    if any(dropped.values()):
        log.warning(
            "%s: %d items in every language; dropped per language %s", fam.dataset, len(common), dropped
        )
    items = {
        lang: [Item(fam.dataset, i, lang, index[lang][i].prompt, index[lang][i].choices, index[lang][i].gold,
                    tags=index[lang][i].tags) for i in common]
        for lang in languages
    }  # fmt: skip
    pivot = fam.pivot if fam.pivot in index else None
    ds = ParallelDataset(fam.dataset, languages, pivot, items, dropped, "lm-eval", "lm-eval")
    samples = {(lang, i): index[lang][i] for lang in languages for i in common}
    return samples, ds


@dataclass(kw_only=True)
class ImportStage(Stage):
    """Records made from lm-eval samples instead of a model."""

    samples: dict[tuple[str, str], Sample]
    form: str
    seed: int
    tagged: bool = False

    def rows(self, unit: Unit) -> pd.DataFrame:
        rows = []
        for item_id in unit.item_ids:
            s = self.samples[(unit.language, item_id)]
            row: dict[str, Any] = {
                "dataset": self.ds.name,
                "language": unit.language,
                "item_id": item_id,
                "n_choices": len(s.choices),
                "gold": s.gold,
                **label_fields(s.logliks, s.gold),
                "prompt": s.prompt,
                "lmeval_task": s.task,
                "prompt_hash": s.prompt_hash,
            }
            if self.tagged:
                row["tags"] = list(s.tags)
            if self.form == "texts":  # lm-eval's acc_norm: log-likelihood per character of the answer
                norm = [x / max(1, len(c)) for x, c in zip(s.logliks, s.choices)]
                ranks = rank_choices(norm)
                pred = int(ranks.index(1))
                row |= {"cloze_logprobs": list(s.logliks),
                        "cloze_bytes": [len(c.encode()) for c in s.choices],
                        "cloze_norm": norm, "cloze_normalization": "char", "cloze_ranks": ranks,
                        "cloze_pred": pred, "cloze_correct": pred == s.gold}  # fmt: skip
            rows.append(row)
        return pd.DataFrame(rows)

    def summarize(self) -> dict[str, Any]:
        languages = list(self.ds.languages)
        return summarize_records(self.store, self.ds.name, languages, self.ds.pivot, self.seed, self.read())


def import_stage(root: str | Path, out: str | Path, family: str | None = None, seed: int = 0) -> ImportStage:
    """The records of an lm-eval results folder, planned but not written."""
    root = Path(root).resolve()
    got = collect(root, family)
    model = _model_name(root) or root.name
    mixed = len({h for hs in got.config_hashes.values() for h in hs}) > 1
    if mixed:
        log.warning("the languages' tasks were configured differently (prompt configuration hashes %s)",
                    got.config_hashes)  # fmt: skip
    fingerprint = {
        "model": f"lm-eval:{model}",
        "dataset": got.ds.name,
        "data_source": f"lm-eval:{root}",
        "tasks": got.tasks,
        "task_config_hashes": got.config_hashes,
        "form": got.form,
    }
    meta = {
        "model": {"spec": model, "source": "lm-evaluation-harness samples"},
        "dataset": got.ds.name,
        "languages": got.ds.languages,
        "pivot": got.ds.pivot,
        "lmeval": {"results": str(root), "form": got.form, "tasks": got.tasks,
                   "task_config_hashes": got.config_hashes, "mixed_configs": mixed,
                   "aligned_by": "row (gold answers agree)" if got.family.item_id is None else "item id"},
        "seed": seed,
        "n_items": len(got.ds),
    }  # fmt: skip
    return ImportStage(
        ds=got.ds,
        table=RECORDS,
        store=Store(out),
        fingerprint=fingerprint,
        meta=meta,
        units=plan_units(got.ds, got.ds.languages, 32),
        samples=got.samples,
        form=got.form,
        seed=seed,
        tagged=any(s.tags for s in got.samples.values()),
    )


def import_lmeval(
    root: str | Path, out: str | Path, family: str | None = None, seed: int = 0
) -> dict[str, Any]:
    """Write the records of an lm-eval results folder into ``out`` and return their summary."""
    return run_stage(import_stage(root, out, family, seed))
