"""Evaluation runs: records schema, resume (also after kill -9), refusal to mix runs, locking, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import tiny_model
from crosslens.cli import main
from crosslens.scoring.options import EvalOptions
from crosslens.stages.evaluate.stage import evaluate
from crosslens.store import RunMismatchError, Store, StoreBusyError
from helpers import kill_after_first_shard, toy_dataset

COLUMNS = {
    "dataset",
    "language",
    "item_id",
    "n_choices",
    "label_logprobs",
    "ranks",
    "pred",
    "gold",
    "correct",
    "cloze_logprobs",
    "cloze_pred",
    "prompt",
}


def _records(out: Path) -> pd.DataFrame:
    df = pd.read_parquet(out / "records")
    return df.sort_values(["language", "item_id"]).reset_index(drop=True)


def test_records_schema_and_summary(tmp_path):
    lm = tiny_model("qwen2")
    ds = toy_dataset()
    summary = evaluate(lm, ds, tmp_path, opts=EvalOptions(chunk_size=3))
    df = _records(tmp_path)
    assert COLUMNS <= set(df.columns)
    assert len(df) == len(ds.languages) * len(ds.item_ids())
    assert not df.duplicated(["dataset", "language", "item_id"]).any()
    assert (df["correct"] == (df["pred"] == df["gold"])).all()
    assert all(sorted(r) == list(range(1, n + 1)) for r, n in zip(df["ranks"], df["n_choices"]))
    run = json.loads((tmp_path / "run.json").read_text())["stages"]["records"]
    assert run["label_tokens"]["form"] == "space"
    assert run["model"]["spec"] == "tiny-qwen2"
    assert set(summary["accuracy"]) == set(ds.languages)
    assert json.loads((tmp_path / "summary.json").read_text())["n_items"] == len(ds.item_ids())


def test_resume_skips_done_units_and_gives_same_records(tmp_path):
    lm = tiny_model("gemma2")
    ds = toy_dataset()
    evaluate(lm, ds, tmp_path / "full", opts=EvalOptions(chunk_size=2))
    evaluate(lm, ds, tmp_path / "part", opts=EvalOptions(chunk_size=2))
    shards = sorted((tmp_path / "part" / "records").glob("*.parquet"))
    for shard in shards[::2]:  # as if the run had died before these units
        shard.unlink()
    evaluate(lm, ds, tmp_path / "part", opts=EvalOptions(chunk_size=2))
    pd.testing.assert_frame_equal(_records(tmp_path / "full"), _records(tmp_path / "part"))


def test_resume_with_other_prompt_or_model_is_refused(tmp_path):
    ds = toy_dataset()
    evaluate(tiny_model("llama"), ds, tmp_path)
    with pytest.raises(RunMismatchError, match="template"):
        evaluate(
            tiny_model("llama"), ds, tmp_path, opts=EvalOptions(template="Q: {question} {choices} Answer:")
        )
    with pytest.raises(RunMismatchError, match="model"):
        evaluate(tiny_model("qwen2"), ds, tmp_path)


def test_second_run_on_same_folder_is_refused_while_first_holds_it(tmp_path):
    store = Store(tmp_path)
    with store.lock("records"):
        with pytest.raises(StoreBusyError, match="busy"):
            evaluate(tiny_model("llama"), toy_dataset(), tmp_path)


def test_shared_unit_locks_exclude_an_exclusive_run_not_each_other(tmp_path):
    store = Store(tmp_path)
    with store.lock("records", shared=True), store.lock("records", shared=True):  # two workers
        with pytest.raises(StoreBusyError, match="another 'records' run"):
            evaluate(tiny_model("llama"), toy_dataset(), tmp_path)


def test_stages_beginning_at_once_keep_every_fingerprint(tmp_path):
    """run.json is read-modify-written under its own lock: concurrent begins lose nothing."""
    from concurrent.futures import ThreadPoolExecutor

    store = Store(tmp_path)
    stages = [f"stage{i}" for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda s: store.begin(s, {"stage": s}, {}), stages * 4))
    assert sorted(store.read_run().stages) == sorted(stages)


def test_cli_eval_and_metrics(tmp_path, tiny_llama_dir, toy_jsonl_dir, capsys):
    args = [
        "eval",
        "--model",
        str(tiny_llama_dir),
        "--dataset",
        "jsonl",
        "--data-dir",
        str(toy_jsonl_dir),
        "--languages",
        "en,de,zh",
        "--out",
        str(tmp_path),
        "--batch-size",
        "3",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "acc" in printed and "tr+" in printed
    summary = json.loads((tmp_path / "summary.json").read_text())
    (tmp_path / "summary.json").unlink()
    assert main(["metrics", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_cli_bad_input_is_one_line(tmp_path, toy_jsonl_dir, capsys):
    assert (
        main(
            [
                "eval",
                "--model",
                str(tmp_path / "nope"),
                "--dataset",
                "jsonl",
                "--data-dir",
                str(toy_jsonl_dir),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nope" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_kill_9_then_resume_gives_identical_records(tmp_path, tiny_llama_dir, toy_jsonl_dir):
    def cmd(out: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "crosslens.cli",
            "eval",
            "--model",
            str(tiny_llama_dir),
            "--dataset",
            "jsonl",
            "--data-dir",
            str(toy_jsonl_dir),
            "--languages",
            "en,de,zh",
            "--out",
            str(out),
            "--batch-size",
            "1",
        ]

    subprocess.run(cmd(tmp_path / "ref"), check=True, capture_output=True)
    records = tmp_path / "killed" / "records"
    kill_after_first_shard(cmd(tmp_path / "killed"), records)
    subprocess.run(cmd(tmp_path / "killed"), check=True, capture_output=True)
    pd.testing.assert_frame_equal(_records(tmp_path / "ref"), _records(tmp_path / "killed"))
    assert not list(records.glob(".tmp-*"))  # a killed writer's temporary file is cleaned on resume
