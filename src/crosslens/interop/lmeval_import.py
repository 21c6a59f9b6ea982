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

Every samples line and results file is read through its schema (:mod:`crosslens.interop.lmeval_files`):
a file of another shape is one error line naming the file, line and key. A record's digest covers
the log-likelihoods it was made from, so samples scored again are refused, never mixed.
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
from crosslens.files import read_json, read_jsonl, shown
from crosslens.interop.lmeval_files import ResultsFile, SampleLine
from crosslens.scoring.answers import label_fields
from crosslens.scoring.choices import rank_choices
from crosslens.scoring.records import RECORDS
from crosslens.stages.base import Done, Stage, Unit, plan_units, run_stage
from crosslens.stages.evaluate.stage import summarize_records
from crosslens.store import RunMismatchError, Store

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
        return "#".join(_id_part(doc, k) for k in keys)

    return get


def _id_part(doc: dict, key: str) -> str:
    """One field of a doc's item id: a string or a number (KeyError: the doc lacks it)."""
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"field 'doc.{key}' must be a string or a number (the item id), got {shown(value)}")
    return str(value)


FAMILIES: tuple[Family, ...] = (
    Family("belebele", r"belebele_(?P<lang>[a-z]{3}_[A-Z][a-z]{3})", "eng_Latn",
           _field("link", "question_number")),
    Family("okapi-mmlu", r"m_mmlu_(?P<lang>[a-z]{2,3})", "en", _field("id")),
    Family("okapi-arc", r"arc_(?P<lang>[a-z]{2,3})", "en", _field("id")),
    Family("mhellaswag", r"hellaswag_(?P<lang>[a-z]{2,3})", "en", _field("ind"), english_task="hellaswag"),
    Family("mmmlu", r"mmmlu_(?P<lang>[a-z]{2}_[a-z]{2})_(?P<part>\w+)", "EN_US",
           lambda doc, k: f"{_id_part(doc, 'Subject').strip()}/test/{k}", str.upper),
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


def _gold(line: SampleLine, choices: Sequence[str], logliks: Sequence[float], where: str) -> int:
    """The gold index from ``target`` (an index, or the text of a choice), checked against ``acc``."""
    target = str(line.target).strip()
    candidates = set()
    if re.fullmatch(r"\d+", target) and int(target) < len(choices):
        candidates.add(int(target))
    if target in choices:
        candidates.add(list(choices).index(target))
    if len(candidates) > 1 and line.acc in (0.0, 1.0):
        pred = int(np.argmax(logliks))
        candidates = {g for g in candidates if (g == pred) == bool(line.acc)}
    if len(candidates) != 1:
        raise DataError(
            f"{where}: cannot tell the gold answer from target {target!r} and choices {list(choices)}"
        )
    return candidates.pop()


def read_samples(path: Path, task: str, family: Family) -> list[Sample]:
    """One ``samples_<task>_<date>.jsonl`` file (the ``none`` filter of a multiple-choice task); each
    document once: a second line with the same ``doc_id`` is refused, never allowed to override."""
    out: dict[int, Sample] = {}
    first: dict[int, int] = {}  # doc_id -> the line it was read from
    for n, line in read_jsonl(path, SampleLine, "an lm-eval sample (a JSON object)"):
        where = f"{path} line {n}"
        if line.filter != "none":
            continue
        if line.doc_id in first:
            raise DataError(f"{where}: doc_id {line.doc_id} appears twice (first at line "
                            f"{first[line.doc_id]}); a samples file holds each document once")  # fmt: skip
        first[line.doc_id] = n
        requests, resps = line.requests(), line.filtered_resps
        if len(resps) != len(requests):
            raise DataError(f"{where}: {len(requests)} requests but {len(resps)} responses")
        if "acc_mutual_info" in (line.metrics or []):  # the unconditional requests follow
            requests, resps = requests[: len(requests) // 2], resps[: len(resps) // 2]
        contexts = {ctx for ctx, _ in requests}
        if len(contexts) != 1:
            raise DataError(f"{where}: the choices have different contexts (not a multiple-choice task)")
        choices = tuple(cont.strip() for _, cont in requests)
        logliks = tuple(resps)
        try:
            item_id = family.item_id(line.doc, line.doc_id) if family.item_id else str(line.doc_id)
        except KeyError as e:
            raise DataError(
                f"{where}: field 'doc.{e.args[0]}' is missing (the {family.dataset} item id)"
            ) from None
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None
        gold = _gold(line, choices, logliks, where)
        out[line.doc_id] = Sample(task, item_id, requests[0][0], choices, logliks, gold,
                                  line.prompt_hash or "", where, family.tags(line.doc))  # fmt: skip
    if not out:
        raise DataError(f"{path}: no samples")
    return [out[k] for k in sorted(out)]


def _results(root: Path) -> list[ResultsFile]:
    """Every ``results_*.json`` under ``root``, each through its schema (a malformed one is refused)."""
    return [read_json(path, ResultsFile, "an lm-eval results file (a JSON object)")
            for path in sorted(root.rglob("results_*.json"))]  # fmt: skip


def _task_hashes(results: Sequence[ResultsFile]) -> dict[str, str]:
    """Each task's prompt configuration hash, from the run's ``results_*.json`` (``configs``)."""
    keys = ("doc_to_text", "doc_to_choice", "doc_to_target", "target_delimiter", "fewshot_delimiter",
            "description", "num_fewshot", "fewshot_config")  # fmt: skip
    out: dict[str, str] = {}
    for res in results:
        for task, cfg in (res.configs or {}).items():
            text = json.dumps({k: cfg.get(k) for k in keys}, sort_keys=True, default=str)
            out[task] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return out


def _model_name(results: Sequence[ResultsFile]) -> str | None:
    for res in results:
        name = res.model_name or (res.config.model_args if res.config is not None else None)
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
    model_name: str | None  # from the run's results file, if it names one


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
        if family not in families:
            held = ", ".join(families) if families else "no task of a known family"
            raise DataError(f"{root} holds no {family} task; it holds {held} ({', '.join(sorted(files))})")
        families = [family]
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
    results = _results(root)
    hashes = _task_hashes(results)
    config_hashes = {lang: sorted({hashes.get(t, "?") for t in ts}) for lang, ts in tasks.items()}
    samples, ds = _align(fam, by_lang)
    forms = {"letters" if _letters(s.choices) else "texts" for s in samples.values()}
    if len(forms) > 1:
        raise DataError(
            f"{root}: some tasks answer with letters, others with answer texts; import them apart"
        )
    return Imported(fam, ds, samples, tasks, config_hashes, forms.pop(), _model_name(results))


def _scores_digest(sample: Sample) -> str:
    return hashlib.sha256(json.dumps(sample.logliks).encode()).hexdigest()[:16]


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

    def digest(self, language: str, item_id: str) -> str:
        """The item (prompt, choices, answer) and the log-likelihoods lm-eval gave its choices: they
        are the data here, so samples re-scored under the same run folder are never mixed with the
        records of the old scores."""
        return f"{self.ds.item(language, item_id).digest}+{_scores_digest(self.samples[(language, item_id)])}"

    def _check_items(self, done: Done) -> None:
        """Each held record's digest against its sample's. Records imported before the digest covered
        the log-likelihoods hold the item's digest alone: they are reused when the log-likelihoods
        they hold are exactly the samples' (they are then the records this import would write)."""
        legacy = [key for key, (held, _) in done.items()
                  if key in self.samples and held == self.ds.item(*key).digest]  # fmt: skip
        if legacy:
            rows = self.store.read(self.table).set_index(["language", "item_id"])["label_logprobs"]
            for key in legacy:
                if [float(x) for x in rows[key]] == list(self.samples[key].logliks):
                    done[key] = (self.digest(*key), done[key][1])
        super()._check_items(done)

    def _changed(self, language: str, item: str, held: str) -> RunMismatchError:
        same_item = held.split("+")[0] == self.ds.item(language, item).digest
        what = "its log-likelihoods" if same_item else "its prompt, choices or answer"
        return RunMismatchError(
            f"{self.store.root} holds records of item {item!r} ({language}) imported from "
            f"other lm-eval samples ({what} changed); use another --out folder or delete it"
        )

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
    model = got.model_name or root.name
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
