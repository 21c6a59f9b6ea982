"""Acceptance checks on the real Gemma 3 270M and the real shared Belebele files (slow, run in CI)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from crosslens.data.registry import load_dataset
from crosslens.models.loading import load_model
from crosslens.scoring.choices import encode_continuation, label_plan
from crosslens.stages.lens.stage import run_lens
from helpers import kill_after_first_shard, plain_continuation_logprobs, plain_label_logprobs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma():
    return load_model("gemma-3-270m")


def _cmd(out, shared_data, limit):
    return [
        sys.executable,
        "-m",
        "crosslens.cli",
        "eval",
        "--model",
        "gemma-3-270m",
        "--dataset",
        "belebele",
        "--data-dir",
        str(shared_data / "belebele"),
        "--languages",
        "eng_Latn,deu_Latn",
        "--limit",
        str(limit),
        "--batch-size",
        "4",
        "--out",
        str(out),
    ]


def test_belebele_eval_resumes_after_kill_and_matches_a_plain_loop(gemma, shared_data, tmp_path):
    limit = 4  # one unit per language: the kill lands between the two
    out = tmp_path / "run"
    kill_after_first_shard(_cmd(out, shared_data, limit), out / "records")
    subprocess.run(_cmd(out, shared_data, limit), check=True, capture_output=True)
    df = pd.read_parquet(out / "records").sort_values(["language", "item_id"])
    assert len(df) == 2 * limit and not df.duplicated(["language", "item_id"]).any()

    plan = label_plan(gemma.tokenizer)
    assert plan.tokens[:4] == ("▁A", "▁B", "▁C", "▁D")
    worst = 0.0
    for row in df.itertuples():
        ref = plain_label_logprobs(gemma, row.prompt, plan.for_n(row.n_choices))
        worst = max(worst, float(np.abs(ref - np.asarray(row.label_logprobs)).max()))
    assert worst <= 1e-4

    # An uninterrupted run (here in this process, same batches) gives the killed-and-resumed records.
    from crosslens.scoring.options import EvalOptions
    from crosslens.stages.evaluate.stage import evaluate

    ds = load_dataset("belebele", ["eng_Latn", "deu_Latn"], data_dir=shared_data / "belebele").limit(limit)
    evaluate(gemma, ds, tmp_path / "ref", opts=EvalOptions(batch_size=4))
    ref = pd.read_parquet(tmp_path / "ref" / "records").sort_values(["language", "item_id"])
    pd.testing.assert_frame_equal(ref.reset_index(drop=True), df.reset_index(drop=True))


def test_lens_at_last_layer_is_the_model_output(gemma, tmp_path):
    ds = load_dataset("crosslens-mini", ["en", "de", "zh"]).limit(3)
    L = gemma.anatomy.n_layers
    run_lens(gemma, ds, tmp_path, layers=[10, L])
    lens = pd.read_parquet(tmp_path / "lens")
    from crosslens.data.prompts import get_template, render

    template = get_template(ds.template)
    for lang in ("de", "zh"):
        for item_id in ds.item_ids():
            it = ds.item(lang, item_id)
            prompt = render(it, template)
            pids = gemma.tokenizer(prompt).input_ids
            for form, texts in (("native", it.choices), ("en", ds.english_choices(item_id))):
                rows = lens[
                    (lens.language == lang)
                    & (lens.item_id == item_id)
                    & (lens.form == form)
                    & (lens.layer == L)
                ].sort_values("choice")
                for text, got in zip(texts, rows["logprob"], strict=True):
                    cont = encode_continuation(gemma.tokenizer, prompt, pids, text)[0]
                    assert got == pytest.approx(
                        plain_continuation_logprobs(gemma, pids, cont).mean(), abs=1e-4
                    )


def test_similarity_matches_cka_of_the_model_hidden_states(gemma, tmp_path):
    """CKA on the real model against the textbook formula applied to transformers' own hidden states."""
    import torch

    from crosslens.data.prompts import get_template, render
    from crosslens.stages.sampling import sample_items
    from crosslens.stages.similarity.stage import run_similarity
    from crosslens.store import Store

    ds = load_dataset("crosslens-mini", ["en", "de", "zh", "sw"]).limit(16)
    run_similarity(gemma, ds, tmp_path, layers=[2, 10], n_items=12, n_boot=200)
    table = Store(tmp_path).read("similarity")
    template = get_template(ds.template)

    def states(lang: str) -> np.ndarray:
        rows = []
        for item_id in sample_items(ds, 12, 0):  # the stage's seeded sample
            ids = gemma.tokenizer(render(ds.item(lang, item_id), template), return_tensors="pt").input_ids
            with torch.no_grad():
                out = gemma.model(ids, output_hidden_states=True, logits_to_keep=1)
            rows.append(out.hidden_states[10][0, -1].double().numpy())  # output of block 10, last token
        return np.stack(rows)

    def hsic(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741  (Song et al. 2012, up to 1/(n(n-3)))
        n = k.shape[0]
        k, l = k.copy(), l.copy()  # noqa: E741
        np.fill_diagonal(k, 0)
        np.fill_diagonal(l, 0)
        one = np.ones(n)
        cross = (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
        return np.trace(k @ l) + cross - 2 / (n - 2) * (one @ k @ l @ one)

    en = states("en")
    for lang in ("de", "zh", "sw"):
        x = states(lang)
        k, l = en @ en.T, x @ x.T  # noqa: E741
        expected = hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))
        pairs = table[["language_a", "language_b"]].apply(frozenset, axis=1)
        row = table[
            (table.layer == 10) & (table.estimator == "debiased") & (pairs == frozenset({"en", lang}))
        ]
        got = float(row["cka"].iloc[0])
        assert got == pytest.approx(expected, abs=1e-4)
        assert row["ci_low"].iloc[0] <= got <= row["ci_high"].iloc[0]


def test_neurons_on_gemma_baseline_is_the_plain_evaluation(gemma, tmp_path):
    """LAPE finds neurons for a non-Latin language on the real model; the unablated rows are the
    evaluation's own records; the control matches the ablation layer by layer; nothing is left behind."""
    import torch

    from crosslens.scoring.options import EvalOptions
    from crosslens.stages.evaluate.stage import evaluate
    from crosslens.stages.neurons.stage import neuron_stage, random_control, run_neurons
    from crosslens.store import Store

    ds = load_dataset("crosslens-mini", ["en", "de", "zh"]).limit(14)
    ids = torch.tensor([gemma.tokenizer("Question: 2 + 2 = ? Answer:").input_ids])
    with torch.no_grad():
        before = gemma.model(ids).logits
    opts = EvalOptions(batch_size=8)
    summary = run_neurons(gemma, ds, tmp_path / "n", ablate=["zh"], n_text_items=8, n_boot=200, opts=opts)
    with torch.no_grad():
        assert torch.equal(gemma.model(ids).logits, before)
    assert summary["n_specific"]["zh"] > 0
    stage = neuron_stage(gemma, ds, tmp_path / "n", ["zh"], 8, opts=opts)
    own = stage.selection[0]["zh"]
    control = random_control(own, gemma.anatomy.n_neurons, 0, "zh")
    assert {k: len(v) for k, v in own.items()} == {k: len(v) for k, v in control.items()}

    evaluate(gemma, ds, tmp_path / "e", opts=opts, exclude=stage.find_items)
    base = Store(tmp_path / "n").read("ablation").query("neurons == 'none'")
    plain = Store(tmp_path / "e").read("records")
    merged = base.merge(plain, on=["language", "item_id"], suffixes=("", "_plain"))
    assert len(merged) == len(plain) == 6 * 3
    assert np.abs(np.stack(merged["label_logprobs"]) - np.stack(merged["label_logprobs_plain"])).max() < 1e-4
    zh = summary["effects"]["zh"]["lape"]["cloze"]["zh"]["accuracy"]
    assert zh["ci_low"] <= zh["delta"] <= zh["ci_high"] and 0 <= zh["p_mcnemar"] <= 1


def test_divergence_on_gemma_reads_the_model_output_at_the_last_layer(gemma, tmp_path):
    """The divergence of Gemma's own readings: at the last block the two readings agree exactly when
    the model's own full-answer log-probabilities (a plain forward pass) rank the same choice first."""
    from crosslens.data.prompts import get_template, render
    from crosslens.scoring.options import EvalOptions
    from crosslens.stages.divergence.stage import run_divergence
    from crosslens.stages.evaluate.stage import evaluate

    ds = load_dataset("crosslens-mini", ["en", "de"]).limit(4)
    L = gemma.anatomy.n_layers
    evaluate(gemma, ds, tmp_path, opts=EvalOptions(cloze=False))  # the letters are enough here
    run_lens(gemma, ds, tmp_path, layers=[6, L])
    summary = run_divergence(gemma, ds, tmp_path, layers=[6, L], n_boot=20)
    rows = pd.read_parquet(tmp_path / "divergence")
    assert len(rows) == 4 and summary["layers"] == [6, L] and list(summary["effects"]) == ["letters"]
    template = get_template(ds.template)
    for row in rows.itertuples():
        it = ds.item("de", row.item_id)
        prompt = render(it, template)
        pids = gemma.tokenizer(prompt).input_ids
        top = []
        for texts in (it.choices, ds.english_choices(row.item_id)):
            conts = [encode_continuation(gemma.tokenizer, prompt, pids, t)[0] for t in texts]
            top.append(int(np.argmax([plain_continuation_logprobs(gemma, pids, c).mean() for c in conts])))
        assert row.agree[-1] == (top[0] == top[1])
        assert pd.isna(row.divergence_layer) == row.agree[-1]
