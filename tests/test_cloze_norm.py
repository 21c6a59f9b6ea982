"""Full-answer normalisations (--cloze-norm): per char, byte, token, pmi and none."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_model
from crosslens.cli import main
from crosslens.experiment.report import write_report
from crosslens.scoring import answers
from crosslens.scoring.answers import CLOZE_NORMS, cloze_fields, neutral_prompt_changed, neutral_prompt_ids
from crosslens.scoring.choices import encode_continuation
from crosslens.scoring.options import EvalOptions
from crosslens.stages import fingerprints
from crosslens.stages.evaluate.stage import evaluate
from crosslens.store import RunMismatchError
from helpers import plain_continuation_logprobs, toy_dataset


def test_each_normalisation_divides_or_subtracts_what_it_names():
    # "日本" is 2 characters but 6 UTF-8 bytes; "Japan" 5 of each; token counts 3 and 1.
    logps = [np.array([-1.0, -1.0, -1.0]), np.array([-3.5])]
    choices = [" 日本 ", "Japan"]
    got = {n: cloze_fields(logps, choices, 0, n, neutral=[-1.0, -4.0]) for n in CLOZE_NORMS}
    assert got["char"]["cloze_norm"] == pytest.approx([-3 / 2, -3.5 / 5])
    assert got["byte"]["cloze_norm"] == pytest.approx([-3 / 6, -3.5 / 5])
    assert got["token"]["cloze_norm"] == pytest.approx([-1.0, -3.5])
    assert got["none"]["cloze_norm"] == pytest.approx([-3.0, -3.5])
    assert got["pmi"]["cloze_norm"] == pytest.approx([-2.0, 0.5])
    # the normalisation decides the prediction
    assert [got[n]["cloze_pred"] for n in ("char", "byte", "token", "none", "pmi")] == [1, 0, 0, 0, 1]
    for n, row in got.items():
        assert row["cloze_normalization"] == n
        assert row["cloze_logprobs"] == pytest.approx([-3.0, -3.5])
        assert row["cloze_bytes"] == [6, 5]
        assert ("cloze_neutral" in row) == (n == "pmi")
    with pytest.raises(ValueError, match="unknown cloze normalisation 'bytes'"):
        cloze_fields(logps, choices, 0, "bytes")
    with pytest.raises(ValueError, match="empty prompt"):
        cloze_fields(logps, choices, 0, "pmi")


def test_pmi_subtracts_the_answer_log_prob_after_the_empty_prompt(tmp_path):
    lm = tiny_model("gemma3")
    ds = toy_dataset(("en", "zh"), n=4)
    evaluate(lm, ds, tmp_path / "char", opts=EvalOptions(chunk_size=3))
    evaluate(lm, ds, tmp_path / "pmi", opts=EvalOptions(chunk_size=3, cloze_norm="pmi"))
    char = pd.read_parquet(tmp_path / "char" / "records").sort_values(["language", "item_id"])
    pmi = pd.read_parquet(tmp_path / "pmi" / "records").sort_values(["language", "item_id"])
    bos = neutral_prompt_ids(lm.tokenizer)
    assert bos == [lm.tokenizer.bos_token_id]
    for (_, c), (_, p) in zip(char.iterrows(), pmi.iterrows()):
        it = ds.item(p["language"], p["item_id"])
        # the conditional totals are the char run's; the neutral ones are a plain forward after BOS
        np.testing.assert_allclose(p["cloze_logprobs"], c["cloze_logprobs"], atol=1e-5)
        plain = [
            plain_continuation_logprobs(lm, bos, encode_continuation(lm.tokenizer, "", bos, ch)[0]).sum()
            for ch in it.choices
        ]
        np.testing.assert_allclose(p["cloze_neutral"], plain, atol=1e-4)
        np.testing.assert_allclose(p["cloze_norm"], np.array(p["cloze_logprobs"]) - plain, atol=1e-4)
        assert p["cloze_pred"] == int(np.argmax(p["cloze_norm"]))
        assert p["cloze_normalization"] == "pmi"
    summary = json.loads((tmp_path / "pmi" / "summary.json").read_text())
    assert summary["cloze_norm"] == "pmi"
    run = json.loads((tmp_path / "pmi" / "run.json").read_text())["stages"]["records"]
    assert run["fingerprint"]["cloze_norm"] == "pmi" and run["cloze_norm"] == "pmi"
    # the default keeps crosslens 0.1's fingerprint, so its folders stay reusable
    char_fp = json.loads((tmp_path / "char" / "run.json").read_text())["stages"]["records"]["fingerprint"]
    assert "cloze_norm" not in char_fp
    # a tokenizer that adds its BOS conditions on it under both rules: the pmi folders stay reusable
    assert "pmi_prefix" not in run["fingerprint"] and not neutral_prompt_changed(lm.tokenizer)


def test_pmi_folders_of_the_first_empty_prompt_rule_are_refused_where_it_changed(tmp_path, monkeypatch):
    """crosslens first conditioned on ``tokenizer("")`` (else EOS); lm-eval on BOS (else EOS). For a
    tokenizer that defines a BOS but adds none (SmolLM2) the numbers differ: such a folder is refused."""
    lm = tiny_model("qwen2")
    tok = copy.deepcopy(lm.tokenizer)
    tok._tokenizer.post_processor = None  # the BOS is defined but no longer added
    lm = replace(lm, tokenizer=tok)
    assert tok("").input_ids == [] and neutral_prompt_changed(tok)
    assert neutral_prompt_ids(tok) == [tok.bos_token_id] != [tok.eos_token_id]
    ds = toy_dataset(("en", "de"), n=3)
    with monkeypatch.context() as m:  # as the first rule wrote its folders
        m.setattr(answers, "neutral_prompt_ids", lambda t: list(t("").input_ids) or [t.eos_token_id])
        m.setattr(fingerprints, "neutral_prompt_changed", lambda t: False)
        evaluate(lm, ds, tmp_path / "old", opts=EvalOptions(cloze_norm="pmi"))
    old = pd.read_parquet(tmp_path / "old" / "records").sort_values(["language", "item_id"])
    with pytest.raises(RunMismatchError, match="pmi_prefix"):
        evaluate(lm, ds, tmp_path / "old", opts=EvalOptions(cloze_norm="pmi"))
    evaluate(lm, ds, tmp_path / "new", opts=EvalOptions(cloze_norm="pmi"))
    new = pd.read_parquet(tmp_path / "new" / "records").sort_values(["language", "item_id"])
    assert not np.allclose(np.concatenate(old["cloze_neutral"]), np.concatenate(new["cloze_neutral"]))
    np.testing.assert_allclose(
        np.concatenate(old["cloze_logprobs"]), np.concatenate(new["cloze_logprobs"]), atol=1e-5
    )


def test_another_normalisation_is_refused_on_a_folder_and_shown_in_the_report(tmp_path):
    lm = tiny_model("qwen2")
    ds = toy_dataset(n=4)
    evaluate(lm, ds, tmp_path / "run", opts=EvalOptions(cloze_norm="byte"))
    with pytest.raises(RunMismatchError, match="cloze_norm"):
        evaluate(lm, ds, tmp_path / "run", opts=EvalOptions(cloze_norm="token"))
    with pytest.raises(RunMismatchError, match="cloze_norm"):
        evaluate(lm, ds, tmp_path / "run")
    write_report(tmp_path / "run")
    md = (tmp_path / "run" / "report.md").read_text()
    assert "cloze acc. (%) (byte)" in md
    assert "| cloze normalisation | byte |" in md


def test_cli_refuses_an_unknown_normalisation_before_loading(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        ["eval", "--model", "no/such-model", "-d", "crosslens-mini", "-o", str(out), "--cloze-norm", "bytes"]
    )
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1
    assert "--cloze-norm: must be one of char, byte, token, pmi, none, got 'bytes'" in err
    assert not out.exists()
    for argv in (["--no-cloze", "--cloze-norm", "pmi"], ["--cloze-norm", "pmi", "--no-cloze"]):
        code = main(["eval", "--model", "no/such-model", "-d", "crosslens-mini", "-o", str(out), *argv])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "--cloze-norm: 'pmi' ranks full answers, which are not scored without cloze" in err
        assert not out.exists()
    code = main(["steer", "--model", "no/such", "-d", "crosslens-mini", "-o", str(out), "--layers", "1",
                 "--cloze-norm", "pmi"])  # fmt: skip
    assert (
        code != 0
        and "--cloze-norm: steering normalises full answers by char, byte, token, none, not 'pmi'"
        in capsys.readouterr().err
    )
    assert not out.exists()
