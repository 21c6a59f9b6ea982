"""crosslens import-lmeval: records from lm-evaluation-harness per-sample files.

The first test runs real lm-eval (the dev extra installs it) on local-file Belebele-format tasks
whose template is crosslens' own, imports the samples and checks ranks and Table 1 against
crosslens' evaluation of the same prompts with the same model; the others use sample files
written in lm-eval's format to check alignment, forms and refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import tiny_model
from crosslens.cli import main
from crosslens.data.registry import load_dataset
from crosslens.data.schema import DataError
from crosslens.interop.lmeval_import import ImportStage, import_lmeval
from crosslens.scoring.answers import neutral_prompt_ids
from crosslens.scoring.metrics import table1_line
from crosslens.scoring.options import EvalOptions
from crosslens.stages.base import Stage
from crosslens.stages.evaluate.stage import evaluate
from crosslens.store import SHARD_META

ITEMS = [  # passage, question, choices, correct answer (1-based, as Belebele writes it)
    (
        "The river runs past the old mill and into the lake.",
        "Where does it go?",
        ["sea", "lake", "mill", "hills"],
        2,
    ),
    (
        "Anna bakes bread every morning.",
        "When does Anna bake?",
        ["at night", "at noon", "mornings", "Sundays"],
        3,
    ),
    (
        "The red car is faster than the blue one.",
        "Which car is faster?",
        ["red", "blue", "neither", "both"],
        1,
    ),
    ("Tom planted three trees in his garden.", "How many trees?", ["one", "two", "three", "four"], 3),
    (
        "The museum opens at nine and closes at five.",
        "When does it close?",
        ["five", "nine", "noon", "never"],
        1,
    ),
    ("Mia reads a book on the train to work.", "Where does Mia read?", ["home", "train", "bed", "work"], 2),
]
LANGS = ("eng_Latn", "deu_Latn", "fra_Latn")
TEMPLATE = (
    "Given the following question and answer choices, output the letter corresponding to the correct answer. "
    "{{flores_passage.strip()}} Question: {{question.strip()}} A: {{mc_answer1.strip()}} "
    "B: {{mc_answer2.strip()}} C: {{mc_answer3.strip()}} D: {{mc_answer4.strip()}} Answer:"
)


def _belebele(root: Path, langs: tuple[str, ...] = LANGS, pmi: bool = False) -> None:
    """Belebele-format files and lm-eval tasks reading them: ``belebele_<lang>`` answering with the
    letters (``acc``), or with ``pmi`` ``pmi_<lang>`` answering with the texts (``acc_mutual_info``)."""
    for lang in langs:
        with open(root / f"{lang}.jsonl", "w", encoding="utf-8") as fh:
            for k, (p, q, c, g) in enumerate(ITEMS):
                row = {"link": f"https://example.org/{k}", "question_number": 1,
                       "flores_passage": f"[{lang}] {p}", "question": q,
                       **{f"mc_answer{j + 1}": f"{x} ({lang[:3]})" for j, x in enumerate(c)},
                       "correct_answer_num": str(g), "dialect": lang}  # fmt: skip
                fh.write(json.dumps(row) + "\n")
        (root / "tasks").mkdir(exist_ok=True)
        name = f"{'pmi' if pmi else 'belebele'}_{lang}"
        task = {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(root / f"{lang}.jsonl")}},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": TEMPLATE,
            "doc_to_choice": "{{[mc_answer1, mc_answer2, mc_answer3, mc_answer4]}}"
            if pmi
            else ["A", "B", "C", "D"],
            "doc_to_target": "{{(correct_answer_num | int) - 1}}",
            "metric_list": [{"metric": "acc_mutual_info" if pmi else "acc"}],
        }
        (root / "tasks" / f"{name}.yaml").write_text(json.dumps(task))  # JSON is YAML


def test_real_lm_eval_samples_give_crosslens_own_records_and_table_1(tmp_path, tiny_llama_dir, capsys):
    data = tmp_path / "belebele"
    data.mkdir()
    _belebele(data)
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf",
           "--model_args", f"pretrained={tiny_llama_dir},dtype=float32,add_bos_token=True",
           "--tasks", ",".join(f"belebele_{lang}" for lang in LANGS), "--include_path", str(data / "tasks"),
           "--output_path", str(tmp_path / "lmeval"), "--log_samples", "--device", "cpu",
           "--batch_size", "4"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    assert main(["import-lmeval", str(tmp_path / "lmeval"), "--out", str(tmp_path / "imported")]) == 0
    imported = pd.read_parquet(tmp_path / "imported" / "records").sort_values(["language", "item_id"])

    # crosslens itself, same model (its BOS, as add_bos_token=True gives lm-eval), same prompts
    ds = load_dataset("belebele", list(LANGS), data_dir=data)
    summary = evaluate(tiny_model("llama"), ds, tmp_path / "own", opts=EvalOptions(cloze=False))
    own = pd.read_parquet(tmp_path / "own" / "records").sort_values(["language", "item_id"])
    assert list(imported["item_id"]) == list(own["item_id"]) and list(imported["prompt"]) == list(
        own["prompt"]
    )
    np.testing.assert_allclose(
        np.stack(imported["label_logprobs"]), np.stack(own["label_logprobs"]), atol=1e-4
    )
    assert [list(r) for r in imported["ranks"]] == [list(r) for r in own["ranks"]]
    theirs = json.loads((tmp_path / "imported" / "summary.json").read_text())
    assert table1_line(theirs) == table1_line(summary)
    assert theirs["accuracy"] == pytest.approx(summary["accuracy"])

    run = json.loads((tmp_path / "imported" / "run.json").read_text())["stages"]["records"]
    assert run["lmeval"]["form"] == "letters" and not run["lmeval"]["mixed_configs"]
    assert run["lmeval"]["tasks"]["deu_Latn"] == ["belebele_deu_Latn"]
    assert imported["prompt_hash"].str.len().gt(0).all()
    capsys.readouterr()
    assert main(["metrics", str(tmp_path / "imported")]) == 0 and "acc" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "imported")]) == 0
    md = (tmp_path / "imported" / "report.md").read_text()
    assert "Table 1" in md and "fig1" in md


# lm-eval's own scoring of each model folder: per task, per doc_id, the log-likelihoods of its requests
# (the conditional ones, then the unconditional ones of acc_mutual_info) and acc_mutual_info.
_LMEVAL_PMI = """
import json, sys
import lm_eval
from lm_eval.tasks import TaskManager
tasks, include, out, folders = sys.argv[1].split(","), sys.argv[2], sys.argv[3], sys.argv[4:]
found = {}
for folder in folders:
    res = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={folder},dtype=float32", tasks=tasks,
                                  task_manager=TaskManager(include_path=include), log_samples=True,
                                  device="cpu", batch_size=8)
    found[folder] = {task: {s["doc_id"]: {"lls": [float(r[0]) for r in s["filtered_resps"]],
                                          "acc_mutual_info": s["acc_mutual_info"]} for s in samples}
                     for task, samples in res["samples"].items()}
json.dump(found, open(out, "w"))
"""


def _tokenizer_variant(model: Path, folder: Path, bos: bool) -> Path:
    """``model`` with a tokenizer that adds no BOS: one that still defines it (as SmolLM2's does) or
    none at all (``bos=False``)."""
    shutil.copytree(model, folder)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer | {"post_processor": None}))
    if not bos:
        config = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps(config | {"bos_token": None}))
    return folder


def test_pmi_is_lm_eval_acc_mutual_info_for_tokenizers_that_add_no_bos(tmp_path, tiny_llama_dir):
    from transformers import AutoTokenizer

    langs = ("eng_Latn", "deu_Latn")
    data = tmp_path / "belebele"
    data.mkdir()
    _belebele(data, langs, pmi=True)
    folders = {"bos": _tokenizer_variant(tiny_llama_dir, tmp_path / "bos-not-added", bos=True),
               "none": _tokenizer_variant(tiny_llama_dir, tmp_path / "no-bos", bos=False)}  # fmt: skip
    found = tmp_path / "lmeval.json"
    cmd = [sys.executable, "-c", _LMEVAL_PMI, ",".join(f"pmi_{lang}" for lang in langs), str(data / "tasks"),
           str(found), *map(str, folders.values())]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    theirs = json.loads(found.read_text())
    ds = load_dataset("belebele", list(langs), data_dir=data)
    for kind, folder in folders.items():
        tok = AutoTokenizer.from_pretrained(folder)
        assert tok("").input_ids == [] and (tok.bos_token_id is not None) == (kind == "bos")
        # lm-eval's prefix token: the BOS where the tokenizer defines one, though it never adds it
        assert neutral_prompt_ids(tok) == [tok.bos_token_id if kind == "bos" else tok.eos_token_id]
        lm = replace(tiny_model("llama"), tokenizer=tok, spec=str(folder))
        evaluate(lm, ds, tmp_path / f"own-{kind}", opts=EvalOptions(cloze_norm="pmi"))
        own = pd.read_parquet(tmp_path / f"own-{kind}" / "records")
        assert len(own) == len(langs) * len(ITEMS)
        for row in own.itertuples():
            k = int(row.item_id.split("/")[-1].split("#")[0])  # https://example.org/<k>#1 is doc k
            doc = theirs[str(folder)][f"pmi_{row.language}"][str(k)]
            np.testing.assert_allclose(row.cloze_logprobs, doc["lls"][:4], atol=1e-4)
            np.testing.assert_allclose(row.cloze_neutral, doc["lls"][4:], atol=1e-4)
            assert float(row.cloze_correct) == doc["acc_mutual_info"]
        fingerprint = json.loads((tmp_path / f"own-{kind}" / "run.json").read_text())["stages"]["records"][
            "fingerprint"]  # fmt: skip
        # the first rule conditioned on EOS: a folder of it is refused where the BOS now differs
        assert fingerprint.get("pmi_prefix") == ([tok.bos_token_id] if kind == "bos" else None)


# -- sample files written in lm-eval's format -------------------------------------------------------------
def _sample(
    doc_id: int, doc: dict, ctx: str, conts: list[str], lls: list[float], target: str, **extra
) -> dict:
    return {
        "doc_id": doc_id, "doc": doc, "target": target,
        "arguments": {f"gen_args_{k}": {"arg_0": ctx, "arg_1": c} for k, c in enumerate(conts)},
        "resps": [[[str(x), "False"]] for x in lls], "filtered_resps": [[str(x), "False"] for x in lls],
        "filter": "none", "metrics": ["acc"], "doc_hash": "d", "prompt_hash": f"h{doc_id}",
        "target_hash": "t",
        "acc": float(int(np.argmax(lls)) == int(target)) if target.isdigit() else 0.0, **extra,
    }  # fmt: skip


def _write(folder: Path, task: str, samples: list[dict], date: str = "2026-12-06T10-00-00.000001") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"samples_{task}_{date}.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)


def _stories(lang: str, golds=(0, 1, 1), shift: float = 0.0) -> list[dict]:
    return [
        _sample(k, {"story_id": f"s{k}", "input_sentence_1": "x"}, f"[{lang}] story {k}",
                [f" ending one {k}", f" the second ending {k}"], [-3.0 - k + shift, -4.0 + k], str(g))
        for k, g in enumerate(golds)
    ]  # fmt: skip


def test_answer_text_tasks_fill_the_cloze_columns_with_lm_eval_acc_norm(tmp_path):
    run = tmp_path / "run" / "model"
    for lang in ("en", "es", "zh"):
        _write(run, f"xstorycloze_{lang}", _stories(lang))
    (run / "results_2026-12-06T10-00-00.000001.json").write_text(
        json.dumps(
            {
                "model_name": "org/model",
                "configs": {f"xstorycloze_{x}": {"doc_to_text": "T"} for x in ("en", "es")}
                | {"xstorycloze_zh": {"doc_to_text": "another template"}},
            }
        )  # fmt: skip
    )
    summary = import_lmeval(tmp_path / "run", tmp_path / "out")
    df = pd.read_parquet(tmp_path / "out" / "records").sort_values(["language", "item_id"])
    row = df.iloc[0]
    assert row["cloze_norm"] == pytest.approx([-3.0 / len("ending one 0"), -4.0 / len("the second ending 0")])
    assert row["pred"] == 0 and row["cloze_pred"] == int(np.argmax(row["cloze_norm"]))
    assert summary["languages"] == ["en", "es", "zh"] and "cloze" in summary
    meta = json.loads((tmp_path / "out" / "run.json").read_text())["stages"]["records"]
    assert meta["model"]["spec"] == "org/model" and meta["lmeval"]["form"] == "texts"
    assert meta["lmeval"]["mixed_configs"] and meta["lmeval"]["task_config_hashes"]["zh"] != meta["lmeval"][
        "task_config_hashes"]["en"]  # fmt: skip


def test_alignment_is_by_item_id_and_refuses_disagreeing_answers(tmp_path):
    run = tmp_path / "a"
    _write(run, "xstorycloze_en", _stories("en"))
    _write(
        run,
        "xstorycloze_es",
        list(reversed(_stories("es"))) + [_sample(9, {"story_id": "s9"}, "c", [" a", " b"], [-1, -2], "0")],
    )
    import_lmeval(run, tmp_path / "out")  # rows in another order and an extra story: aligned by story_id
    df = pd.read_parquet(tmp_path / "out" / "records")
    assert sorted(df["item_id"].unique()) == ["s0", "s1", "s2"]
    bad = tmp_path / "b"
    _write(bad, "xstorycloze_en", _stories("en"))
    _write(bad, "xstorycloze_es", _stories("es", golds=(0, 0, 1)))
    message = r"xstorycloze_es_.* line 2 \(item 's1'\): 2 choices, answer A, but 2 choices, answer B in en "
    with pytest.raises(DataError, match=message + ".*cannot be aligned by item id"):
        import_lmeval(bad, tmp_path / "o2")
    assert not (tmp_path / "o2").exists()


def test_refusals_are_one_line_before_anything_is_written(tmp_path, capsys):
    two = tmp_path / "two"
    _write(two, "xstorycloze_en", _stories("en"))
    _write(two, "xstorycloze_en", _stories("en"), date="2026-12-07T10-00-00.000001")
    _write(two, "xstorycloze_es", _stories("es"))
    one = tmp_path / "one"
    _write(one, "xstorycloze_en", _stories("en"))
    other = tmp_path / "other"
    _write(other, "arc_easy", _stories("en"))
    broken = tmp_path / "broken"
    _write(broken, "xstorycloze_en", _stories("en"))
    _write(broken, "xstorycloze_es", [{"doc_id": 0, "doc": {}}])
    for folder, message in (
        (two, "two samples files for task 'xstorycloze_en'"),
        (one, "only one language (en) of xstorycloze"),
        (other, "none of the tasks (arc_easy) is of a known family"),
        (broken, "line 1: target: required key is missing"),
        (tmp_path / "nothing", "no such folder"),
    ):
        out = tmp_path / f"out-{folder.name}"
        assert main(["import-lmeval", str(folder), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert not out.exists()


def test_older_argument_lists_and_mutual_information_requests(tmp_path):
    run = tmp_path / "r"
    for lang in ("en", "de"):
        samples = []
        for k in range(3):
            s = _sample(
                k, {"id": f"q{k}"}, f"[{lang}] Q{k}? Answer:", [" A", " B", " C"], [-2.0, -1.0 - k, -3.0], "1"
            )
            s["arguments"] = [
                [s["arguments"][g]["arg_0"], s["arguments"][g]["arg_1"]] for g in sorted(s["arguments"])
            ]
            s["arguments"] += [["", " A"], ["", " B"], ["", " C"]]  # acc_mutual_info's unconditional requests
            s["filtered_resps"] += [["-5.0", "False"]] * 3
            s["metrics"] = ["acc", "acc_mutual_info"]
            samples.append(s)
        _write(run, f"m_mmlu_{lang}", samples)
    summary = import_lmeval(run, tmp_path / "out")
    df = pd.read_parquet(tmp_path / "out" / "records")
    assert df["n_choices"].eq(3).all() and df["gold"].eq(1).all()
    assert summary["dataset"] == "okapi-mmlu" and summary["accuracy"]["en"] == pytest.approx(1 / 3)


def test_global_mmlu_tags_and_the_english_hellaswag_task_are_recognised(tmp_path):
    run = tmp_path / "g"
    for lang in ("en", "de"):
        for subject, labels in (("astronomy", ("CS", "CA")), ("anatomy", ("-", "CS"))):
            samples = [
                _sample(k, {"sample_id": f"{subject}/test/{k}", "cultural_sensitivity_label": label},
                        f"[{lang}] {subject} {k}? Answer:", [" A", " B", " C", " D"],
                        [-1.0, k - 2.0, -3.0, -4.0], "0")
                for k, label in enumerate(labels)
            ]  # fmt: skip
            _write(run, f"global_mmlu_full_{lang}_{subject}", samples)
    summary = import_lmeval(run, tmp_path / "out")
    assert summary["dataset"] == "global-mmlu" and len(pd.read_parquet(tmp_path / "out" / "records")) == 8
    assert {tag: t["n_items"] for tag, t in summary["by_tag"].items()} == {"CA": 1, "CS": 2}
    hs = tmp_path / "h"
    for task, lang in (("hellaswag", "en"), ("hellaswag_de", "de")):
        endings = [" runs away", " sits down"]
        _write(
            hs,
            task,
            [_sample(k, {"ind": 40 + k}, f"[{lang}] ctx {k}", endings, [-2.0, -3.0], "0") for k in range(2)],
        )
    summary = import_lmeval(hs, tmp_path / "hout")
    assert summary["dataset"] == "mhellaswag" and sorted(summary["languages"]) == ["de", "en"]


def _snapshot(folder: Path) -> dict[str, bytes] | None:
    """Every visible file below ``folder`` with its bytes (None: no such folder)."""
    if not folder.exists():
        return None
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(x.startswith(".") for x in p.relative_to(folder).parts)}  # fmt: skip


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return " ".join(err[err.index("error:") :].split())


def test_changed_log_likelihoods_are_refused_never_mixed_with_the_old_records(tmp_path, capsys):
    run = tmp_path / "run"
    for lang in ("en", "es"):
        _write(run, f"xstorycloze_{lang}", _stories(lang))
    out = tmp_path / "out"
    assert main(["import-lmeval", str(run), "--out", str(out)]) == 0
    first = _snapshot(out)
    assert main(["import-lmeval", str(run), "--out", str(out)]) == 0  # the same samples: reused as they are
    assert _snapshot(out) == first
    edited = _stories("es")
    edited[1]["filtered_resps"][0][0] = "-0.5"  # lm-eval scored story s1 again, differently
    _write(run, "xstorycloze_es", edited)
    capsys.readouterr()
    assert main(["import-lmeval", str(run), "--out", str(out)]) == 2
    line = _one_error(capsys)
    assert "item 's1' (es)" in line and "its log-likelihoods changed" in line, line
    assert _snapshot(out) == first


def test_records_imported_before_the_digest_held_the_scores_are_reused_while_their_scores_hold(
    tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    for lang in ("en", "es"):
        _write(run, f"xstorycloze_{lang}", _stories(lang))
    out = tmp_path / "out"
    with monkeypatch.context() as m:  # the records as crosslens wrote them before: the item's digest alone
        m.setattr(ImportStage, "digest", Stage.digest)
        assert main(["import-lmeval", str(run), "--out", str(out)]) == 0
    first = _snapshot(out)
    meta = json.loads(pq.read_schema(next((out / "records").glob("*.parquet"))).metadata[SHARD_META])
    assert all("+" not in digest for digest in meta["items"].values())
    assert main(["import-lmeval", str(run), "--out", str(out)]) == 0  # reused: their scores are the samples'
    assert _snapshot(out) == first
    edited = _stories("es")
    edited[2]["filtered_resps"][1][0] = "-9.25"
    _write(run, "xstorycloze_es", edited)
    capsys.readouterr()
    assert main(["import-lmeval", str(run), "--out", str(out)]) == 2
    assert "item 's2' (es)" in _one_error(capsys)
    assert _snapshot(out) == first


def test_a_doc_id_twice_in_one_samples_file_is_refused_naming_both_lines(tmp_path, capsys):
    run = tmp_path / "run"
    _write(run, "xstorycloze_en", _stories("en"))
    stories = _stories("es")
    stories.append(
        {**stories[0], "filtered_resps": [["-0.1", "False"], ["-9.0", "False"]]}
    )  # conflicting scores
    _write(run, "xstorycloze_es", stories)
    out = tmp_path / "out"
    assert main(["import-lmeval", str(run), "--out", str(out)]) == 2
    line = _one_error(capsys)
    assert "samples_xstorycloze_es_" in line and "line 4: doc_id 0 appears twice (first at line 1)" in line, (
        line
    )
    assert not out.exists()
    other_filter = _stories("es") + [{**_stories("es")[0], "filter": "take_first"}]  # another filter's line
    _write(run, "xstorycloze_es", other_filter)
    assert main(["import-lmeval", str(run), "--out", str(out)]) == 0


def _drop(key: str):
    return lambda s: {k: v for k, v in s.items() if k != key}


def _set(**values):
    return lambda s: s | values


# (case, what the second Spanish line becomes, words of the one error line besides the file and line 2)
SAMPLE_SHAPES = [
    ("a number", lambda s: 5, ("expected an lm-eval sample (a JSON object), got 5",)),
    ("null", lambda s: None, ("expected an lm-eval sample", "got null")),
    ("a list", lambda s: [s], ("expected an lm-eval sample", "got a list")),
    ("doc_id null", _set(doc_id=None), ("doc_id: expected an integer, got null",)),
    ("doc_id a list", _set(doc_id=[1]), ("doc_id: expected an integer, got a list",)),
    ("doc_id abc", _set(doc_id="abc"), ("doc_id: expected an integer, got \"abc\"",)),
    ("doc_id negative", _set(doc_id=-1), ("doc_id: expected a value >= 0, got -1",)),
    ("doc_id true", _set(doc_id=True), ("doc_id: expected an integer, got true",)),
    ("no doc", _drop("doc"), ("doc: required key is missing",)),
    ("no target", _drop("target"), ("target: required key is missing",)),
    ("no arguments", _drop("arguments"), ("arguments: required key is missing",)),
    ("no filtered_resps", _drop("filtered_resps"), ("filtered_resps: required key is missing",)),
    ("doc a number", _set(doc=5), ("doc: expected an object, got 5",)),
    ("target a list", _set(target=[0]), ("target: must be a choice index or a choice text",)),
    ("arguments a string", _set(arguments="x"), ("arguments: expected an object",)),
    ("arguments key", _set(arguments={"gen_args_x": {"arg_0": "a", "arg_1": "b"}}),
     ("arguments.gen_args_x: is not of the form gen_args_",)),
    ("continuation null", _set(arguments={"gen_args_0": {"arg_0": "a", "arg_1": None}}),
     ("arguments.gen_args_0.arg_1: expected a string, got null",)),
    ("old arguments", _set(arguments=[["a"], ["b", "c"]]),
     ("arguments: must hold [context, continuation] pairs; entry 0",)),
    ("responses a string", _set(filtered_resps="x"), ("filtered_resps: expected a list",)),
    ("response not a number", _set(filtered_resps=[["x", "False"], ["-1", "False"]]),
     ("filtered_resps[0]: holds a log-likelihood that is not a number",)),
    ("response nan", _set(filtered_resps=[["-1", "False"], ["nan", "False"]]),
     ("filtered_resps[1]: holds a log-likelihood of nan",)),
    ("response an object", _set(filtered_resps=[{"a": 1}, ["-1", "False"]]),
     ("filtered_resps[0]: must be [log-likelihood, is_greedy]",)),
    ("too few responses", _set(filtered_resps=[["-1", "False"]]), ("2 requests but 1 responses",)),
    ("metrics a string", _set(metrics="acc"), ("metrics: expected a list",)),
    ("filter a number", _set(filter=3), ("filter: expected a string",)),
    ("acc a word", _set(acc="yes"), ("acc: expected a number",)),
    ("item id null", _set(doc={"story_id": None}), ("'doc.story_id' must be a string or a number",)),
    ("item id missing", _set(doc={}), ("'doc.story_id' is missing",)),
]  # fmt: skip


@pytest.mark.parametrize("change, words", [c[1:] for c in SAMPLE_SHAPES], ids=[c[0] for c in SAMPLE_SHAPES])
def test_a_samples_line_of_another_shape_is_one_line_naming_file_line_and_key(
    tmp_path, capsys, change, words
):
    run = tmp_path / "run"
    _write(run, "xstorycloze_en", _stories("en"))
    stories = _stories("es")
    stories[1] = change(stories[1])
    _write(run, "xstorycloze_es", stories)
    out = tmp_path / "out"
    assert main(["import-lmeval", str(run), "--out", str(out)]) == 2
    line = _one_error(capsys)
    assert "samples_xstorycloze_es_2026-12-06T10-00-00.000001.jsonl line 2: " in line, line
    assert all(w in line for w in words), line
    assert not out.exists()


RESULTS_SHAPES = [
    ("a list", [], ("expected an lm-eval results file (a JSON object), got a list",)),
    ("configs a list", {"configs": []}, ("configs: expected an object, got a list",)),
    ("a task's config a number", {"configs": {"xstorycloze_en": 5}},
     ("configs.xstorycloze_en: expected an object, got 5",)),
    ("model_name a number", {"model_name": 5}, ("model_name: expected a string, got 5",)),
    ("config a string", {"config": "hf"}, ("config: expected an object",)),
    ("broken JSON", "{", ("invalid JSON",)),
]  # fmt: skip


@pytest.mark.parametrize(
    "content, words", [c[1:] for c in RESULTS_SHAPES], ids=[c[0] for c in RESULTS_SHAPES]
)
def test_a_results_file_of_another_shape_is_one_line_naming_it_and_the_key(tmp_path, capsys, content, words):
    run = tmp_path / "run"
    for lang in ("en", "es"):
        _write(run, f"xstorycloze_{lang}", _stories(lang))
    path = run / "results_2026-12-06T10-00-00.000001.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    out = tmp_path / "out"
    assert main(["import-lmeval", str(run), "--out", str(out)]) == 2
    line = _one_error(capsys)
    assert str(path) in line and all(w in line for w in words), line
    assert not out.exists()


def test_a_family_the_folder_lacks_names_the_families_it_holds(tmp_path, capsys):
    run = tmp_path / "run"
    for lang in ("eng_Latn", "deu_Latn"):
        _write(run, f"belebele_{lang}", [
            _sample(k, {"link": f"l{k}", "question_number": 1}, f"[{lang}] Q{k}? Answer:", [" A", " B"],
                    [-1.0, -2.0], "0") for k in range(2)])  # fmt: skip
    out = tmp_path / "out"
    assert main(["import-lmeval", str(run), "--out", str(out), "--family", "xcopa"]) == 2
    line = _one_error(capsys)
    assert "holds no xcopa task; it holds belebele (belebele_deu_Latn, belebele_eng_Latn)" in line, line
    assert not out.exists()
