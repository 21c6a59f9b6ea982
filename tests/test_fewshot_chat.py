"""Prompts as lm-eval users run them: K-shot exemplars (the same items in every language, never
evaluated, their block encoded once) and chat templates with a system instruction."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_model
from crosslens.cli import main
from crosslens.data.prompts import INSTRUCTION, Prompter, draw_exemplars, get_template, render
from crosslens.scoring.choices import encode_continuation
from crosslens.scoring.options import EvalOptions
from crosslens.stages.evaluate.stage import evaluate
from crosslens.store import RunMismatchError
from helpers import plain_continuation_logprobs, plain_label_logprobs, toy_dataset


def _records(out) -> pd.DataFrame:
    return pd.read_parquet(out / "records").sort_values(["language", "item_id"]).reset_index(drop=True)


def test_exemplars_come_first_with_their_letters_and_the_instruction_once():
    ds = toy_dataset()
    shots = [ds.item("de", "q1"), ds.item("de", "q3")]
    text = render(ds.item("de", "q0"), get_template("generic"), shots)
    blocks = text.split("\n\n")
    assert blocks[0] == INSTRUCTION and text.count(INSTRUCTION) == 1
    assert blocks[1] == "Question: Wie viele Beine hat ein Hund? A: zwei B: vier C: sechs Answer: B"
    assert blocks[2] == "Question: Was ist 2 + 3? A: 5 B: 6 Answer: A"
    assert blocks[3].startswith("Question: Was ist die Hauptstadt") and blocks[3].endswith("Answer:")
    assert render(ds.item("de", "q0"), get_template("generic")) == f"{INSTRUCTION} {blocks[3]}"
    # the draw depends on the seed only, and no item is drawn twice
    assert draw_exemplars(ds.item_ids(), 3, 0) == draw_exemplars(ds.item_ids(), 3, 0)
    assert len(set(draw_exemplars(ds.item_ids(), 7, 1))) == 7
    plain = Prompter(get_template("generic"), tiny_model("llama").tokenizer, system="Be brief.")
    assert plain.text(ds.item("en", "q0")).startswith("Be brief.\n\n" + INSTRUCTION)
    with pytest.raises(ValueError, match="no chat template"):
        Prompter(get_template("generic"), tiny_model("llama").tokenizer, chat=True)


@pytest.mark.parametrize("family", ["llama", "gemma3"])  # gemma3: an 8-token sliding window
def test_few_shot_records_read_the_whole_prompt_as_one_forward_does(tmp_path, family):
    lm = tiny_model(family)
    ds = toy_dataset()
    evaluate(lm, ds, tmp_path, opts=EvalOptions(num_fewshot=2, batch_size=3), seed=4)
    df = _records(tmp_path)
    shots = draw_exemplars(ds.item_ids(), 2, 4)
    assert set(df["item_id"]) == set(ds.item_ids()) - set(shots)  # exemplars are never evaluated
    assert all(list(x) == shots for x in df["fewshot_items"])
    tok = lm.tokenizer
    for _, r in df.iterrows():
        it = ds.item(r["language"], r["item_id"])
        for s in shots:  # the same exemplar items, in the row's own language
            assert ds.item(r["language"], s).question in r["prompt"]
        ids = tok(r["prompt"]).input_ids
        labels = list(
            tok.convert_tokens_to_ids(
                json.loads((tmp_path / "run.json").read_text())["stages"]["records"]["label_tokens"]["tokens"]
            )
        )[: len(it.choices)]
        np.testing.assert_allclose(
            r["label_logprobs"], plain_label_logprobs(lm, r["prompt"], labels), atol=1e-4
        )
        for j, c in enumerate(it.choices):
            cont = encode_continuation(tok, r["prompt"], ids, c)[0]
            assert r["cloze_logprobs"][j] == pytest.approx(
                plain_continuation_logprobs(lm, ids, cont).sum(), abs=1e-3
            )
    fp = json.loads((tmp_path / "run.json").read_text())["stages"]["records"]["fingerprint"]
    assert fp["fewshot"]["k"] == 2 and fp["fewshot"]["items"] == shots
    assert fp["fewshot"]["source"] == "held-out items"
    with pytest.raises(RunMismatchError, match="fewshot"):
        evaluate(lm, ds, tmp_path, opts=EvalOptions(num_fewshot=1, batch_size=3), seed=4)
    with pytest.raises(RunMismatchError, match="fewshot"):
        evaluate(lm, ds, tmp_path, opts=EvalOptions(num_fewshot=2, batch_size=3), seed=5)


def test_exemplars_from_another_set_leave_every_item_evaluated(tmp_path):
    lm = tiny_model("qwen2")
    ds = toy_dataset()
    evaluated, pool = ds.subset(ds.item_ids()[:4]), ds.subset(ds.item_ids()[4:])
    summary = evaluate(lm, evaluated, tmp_path, opts=EvalOptions(num_fewshot=3), shots_from=pool)
    df = _records(tmp_path)
    assert set(df["item_id"]) == set(evaluated.item_ids()) and summary["n_items"] == 4
    assert sorted(df["fewshot_items"].iloc[0]) == sorted(pool.item_ids())


def test_cli_few_shot_draws_beyond_the_limit_and_refuses_bad_requests(
    tmp_path, tiny_llama_dir, toy_jsonl_dir, capsys
):
    base = [
        "eval",
        "--model",
        str(tiny_llama_dir),
        "-d",
        "jsonl",
        "--data-dir",
        str(toy_jsonl_dir),
        "--languages",
        "en,de",
    ]
    out = tmp_path / "k2"
    assert main([*base, "-o", str(out), "--limit", "3", "--num-fewshot", "2"]) == 0
    df = _records(out)
    assert sorted(set(df["item_id"])) == ["q0", "q1", "q2"]  # all 3 read items are evaluated
    assert set(df["fewshot_items"].iloc[0]) <= {"q3", "q4", "q5", "q6"}
    fp = json.loads((out / "run.json").read_text())["stages"]["records"]["fingerprint"]
    assert "beyond the 3 read" in fp["fewshot"]["source"]
    capsys.readouterr()
    for extra, message in (
        (["--fewshot-split", "dev"], "--fewshot-split: jsonl has no split 'dev'"),
        (["--num-fewshot", "7"], "--num-fewshot: 7 leaves no item of jsonl to evaluate (7 aligned items)"),
    ):
        bad = tmp_path / "bad"
        assert main([*base, "-o", str(bad), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert not bad.exists()


def test_the_context_check_measures_the_prompt_fed_exemplars_and_system_text_included(
    tmp_path, tiny_llama_dir, capsys
):
    """The tiny models have 512 positions: 63 crosslens-mini exemplars, or a 600-word system text,
    make every prompt longer, though each zero-shot prompt fits."""
    base = ["eval", "--model", str(tiny_llama_dir), "-d", "crosslens-mini", "--languages", "en,de"]
    capsys.readouterr()
    for extra, words in (
        (["--num-fewshot", "63"], ("(prompt after 63 exemplars + longest answer)", "512", "--skip-long")),
        (["--system-instruction", "Think. " * 600], ("(prompt + longest answer)", "512", "--skip-long")),
        (["--num-fewshot", "63", "--skip-long"], ("after 63 exemplars", "no item fits")),
        (["--system-instruction", "Think. " * 600, "--skip-long"], ("512", "no item fits")),
    ):
        out = tmp_path / "out"
        assert main([*base, "-o", str(out), *extra]) == 2
        err = capsys.readouterr().err
        line = " ".join(err[err.index("error:") :].split())
        assert err.count("error:") == 1 and "Traceback" not in err, err
        assert all(w in line for w in words), line
        assert not out.exists()


def test_skipping_a_long_item_draws_the_exemplars_again_as_the_evaluation_does(
    tmp_path, tiny_llama_dir, toy_jsonl_dir, capsys
):
    data = tmp_path / "data"
    data.mkdir()
    for lang in ("en", "de"):
        lines = (toy_jsonl_dir / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines()
        if lang == "de":
            lines[0] = json.dumps(json.loads(lines[0]) | {"question": "Wort " * 700}, ensure_ascii=False)
        (data / f"{lang}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["eval", "--model", str(tiny_llama_dir), "-d", "jsonl", "--data-dir", str(data), "-o", str(out),
            "--num-fewshot", "1", "--skip-long"]  # fmt: skip
    assert main(argv) == 0
    assert "skipped 1 items longer than" in " ".join(capsys.readouterr().err.split())
    df = _records(out)
    # q3 is drawn from all 7 items, q4 from the 6 that fit: the exemplar the records were read after
    assert (
        draw_exemplars([f"q{k}" for k in range(1, 7)], 1, 0)
        == ["q4"]
        != draw_exemplars([f"q{k}" for k in range(7)], 1, 0)
    )
    assert {tuple(x) for x in df["fewshot_items"]} == {("q4",)}
    assert sorted(set(df["item_id"])) == ["q1", "q2", "q3", "q5", "q6"]
    assert df["prompt_tokens"].max() < 512


@pytest.mark.slow
def test_smollm2_chat_template_prompts_letters_and_answers(tmp_path):
    """SmolLM2-135M-Instruct's real chat template: the rendered prompt and its tokens are
    ``tokenizer.apply_chat_template``'s, letters are the assistant's first token, answer texts follow
    the generation prompt directly, and the records equal a plain forward of those tokens."""
    from crosslens.data.registry import load_dataset
    from crosslens.models.loading import load_model

    lm = load_model("smollm2-135m")
    tok = lm.tokenizer
    ds = load_dataset("crosslens-mini", ["en", "de"]).limit(3)
    system = "Answer with one letter."
    prompter = Prompter(get_template("generic"), tok, chat=True, system=system)
    it = ds.item("de", ds.item_ids()[0])
    turns = [
        {"role": "system", "content": system},
        {"role": "user", "content": render(it, get_template("generic"))},
    ]
    text = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert prompter.text(it) == text and text.endswith("<|im_start|>assistant\n")
    ids = tok.apply_chat_template(turns, tokenize=True, add_generation_prompt=True)["input_ids"]
    assert prompter.ids(text) == list(ids)

    opts = EvalOptions(apply_chat_template=True, system_instruction=system, batch_size=4)
    evaluate(lm, ds, tmp_path, opts=opts)
    run = json.loads((tmp_path / "run.json").read_text())["stages"]["records"]
    assert run["label_tokens"]["form"] == "nospace" and run["label_tokens"]["tokens"][:2] == ["A", "B"]
    assert run["fingerprint"]["chat_template"] and run["fingerprint"]["system_instruction"] == system
    df = _records(tmp_path)
    assert len(df) == 6
    for _, r in df.iterrows():
        it = ds.item(r["language"], r["item_id"])
        assert r["prompt"] == prompter.text(it)
        pids = prompter.ids(r["prompt"])
        labels = run["label_tokens"]["token_ids"][: len(it.choices)]
        import torch

        with torch.no_grad():
            logits = lm.model(torch.tensor([pids])).logits[0, -1].float()
        np.testing.assert_allclose(r["label_logprobs"], logits.log_softmax(-1)[labels].numpy(), atol=1e-3)
        for j, c in enumerate(it.choices):
            cont = encode_continuation(tok, r["prompt"], pids, c, "", special=False)[0]
            assert tok.decode(cont) == c.strip()  # no space after the generation prompt
            assert r["cloze_logprobs"][j] == pytest.approx(
                plain_continuation_logprobs(lm, pids, cont).sum(), abs=1e-2
            )


def test_an_experiment_reads_few_shot_prompts_in_its_evaluation_and_lens(tmp_path):
    from crosslens.experiment.config import ConfigError, parse_config
    from crosslens.experiment.runner import run_experiment

    lm = tiny_model("gemma3")
    data = {
        "models": [lm.spec],
        "datasets": [{"name": "crosslens-mini", "languages": ["en", "de"], "limit": 4}],
        "layers": [2, 4],
        "num_fewshot": 2,
        "system_instruction": "Pick one.",
        "pca": {"enabled": False},
        "batch_size": 4,
        "output": str(tmp_path),
    }
    report = run_experiment(parse_config(data, check_models=False), progress=False, models={lm.spec: lm})
    md = report.with_name("report.md").read_text()
    assert "| few-shot exemplars | 2 from " in md and "| system instruction | Pick one. |" in md
    folder = next(tmp_path.glob("*/crosslens-mini"))
    records, lens = _records(folder), pd.read_parquet(folder / "lens")
    shots = list(records["fewshot_items"].iloc[0])
    assert len(shots) == 2 and not set(shots) & set(records["item_id"])  # drawn beyond the limit
    assert set(records["item_id"]) == set(lens["item_id"]) and len(set(records["item_id"])) == 4
    assert records["prompt"].str.startswith("Pick one.\n\n").all()
    run = json.loads((folder / "run.json").read_text())["stages"]
    assert run["records"]["fingerprint"]["fewshot"] == run["lens"]["fingerprint"]["fewshot"]
    # other stages would read zero-shot prompts: refused in the config, one line
    for extra, message in (
        (
            {"pca": {"enabled": True}},
            r"num_fewshot shapes the prompts of eval, lens, .* only; set pca.enabled to false",
        ),
        ({"datasets": [{"name": "crosslens-mini", "fewshot_split": "dev"}]}, "has no split 'dev'"),
        (
            {"num_fewshot": 0, "datasets": [{"name": "xstorycloze", "fewshot_split": "train"}]},
            "num_fewshot is 0",
        ),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_config(data | extra, check_models=False)


def test_an_experiment_refuses_prompts_its_exemplars_push_past_the_context(tmp_path):
    from crosslens.data.schema import DataError
    from crosslens.experiment.config import parse_config
    from crosslens.experiment.runner import run_experiment

    lm = tiny_model("gemma3")
    data = {
        "models": [lm.spec],
        "datasets": [{"name": "crosslens-mini", "languages": ["en", "de"]}],
        "num_fewshot": 60,
        "pca": {"enabled": False},
        "lens": {"enabled": False},
        "output": str(tmp_path / "exp"),
    }
    with pytest.raises(DataError, match="after 60 exemplars .* more than the 512 of tiny-gemma3's context"):
        run_experiment(parse_config(data, check_models=False), progress=False, models={lm.spec: lm})
    assert not list((tmp_path / "exp").rglob("*.parquet"))
