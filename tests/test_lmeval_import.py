"""crosslens import-lmeval: records from lm-evaluation-harness per-sample files.

The first test runs real lm-eval (the dev extra installs it) on local-file Belebele-format tasks
whose template is crosslens' own, imports the samples and checks ranks and Table 1 against
crosslens' evaluation of the same prompts with the same model; the others use sample files
written in lm-eval's format to check alignment, forms and refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_model
from crosslens.cli import main
from crosslens.data.registry import load_dataset
from crosslens.data.schema import DataError
from crosslens.interop.lmeval_import import import_lmeval
from crosslens.scoring.metrics import table1_line
from crosslens.scoring.options import EvalOptions
from crosslens.stages.evaluate.stage import evaluate

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


def _belebele(root: Path) -> None:
    for lang in LANGS:
        with open(root / f"{lang}.jsonl", "w", encoding="utf-8") as fh:
            for k, (p, q, c, g) in enumerate(ITEMS):
                row = {"link": f"https://example.org/{k}", "question_number": 1,
                       "flores_passage": f"[{lang}] {p}", "question": q,
                       **{f"mc_answer{j + 1}": f"{x} ({lang[:3]})" for j, x in enumerate(c)},
                       "correct_answer_num": str(g), "dialect": lang}  # fmt: skip
                fh.write(json.dumps(row) + "\n")
        (root / "tasks").mkdir(exist_ok=True)
        task = {
            "task": f"belebele_{lang}",
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(root / f"{lang}.jsonl")}},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": TEMPLATE,
            "doc_to_choice": ["A", "B", "C", "D"],
            "doc_to_target": "{{(correct_answer_num | int) - 1}}",
            "metric_list": [{"metric": "acc"}],
        }
        (root / "tasks" / f"belebele_{lang}.yaml").write_text(json.dumps(task))  # JSON is YAML


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
        (broken, "line 1: field 'target' is missing"),
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
