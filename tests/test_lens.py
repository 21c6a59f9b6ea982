"""Logit lens: fidelity at the last layer, Eq. 7 against a naive loop, aggregates, skipped pivots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_model
from crosslens.data.prompts import get_template, render
from crosslens.data.schema import ParallelDataset
from crosslens.scoring.choices import encode_continuation
from crosslens.scoring.options import EvalOptions
from crosslens.stages.evaluate.stage import evaluate
from crosslens.stages.lens.stage import run_lens
from helpers import plain_continuation_logprobs, toy_dataset


def _naive_latent(lm, prompt_ids, cont, layer):
    """One full forward with all hidden states, lens applied to every position: Eq. 7 by hand."""
    ids = torch.tensor([list(prompt_ids) + list(cont)])
    from crosslens.models.anatomy import capture_residuals

    with torch.no_grad(), capture_residuals(lm.anatomy, [layer]) as states:
        lm.model(ids)
    logp = lm.anatomy.lens_logits(states[layer][0], layer).log_softmax(-1)
    n = len(prompt_ids)
    return float(np.mean([logp[n - 1 + k, t].item() for k, t in enumerate(cont)]))


def test_lens_records_match_naive_loop_and_model_output(tiny, tmp_path):
    ds = toy_dataset(n=4)
    L = tiny.anatomy.n_layers
    run_lens(tiny, ds, tmp_path, layers=[1, L], opts=EvalOptions(batch_size=3))
    lens = pd.read_parquet(tmp_path / "lens")
    assert set(lens["form"]) == {"native", "en", "label"}
    template = get_template(ds.template)
    for lang in ("de", "zh"):
        it = ds.item(lang, "q1")
        prompt = render(it, template)
        pids = tiny.tokenizer(prompt).input_ids
        for form, texts in (("native", it.choices), ("en", ds.english_choices("q1"))):
            for j, text in enumerate(texts):
                cont = encode_continuation(tiny.tokenizer, prompt, pids, text)[0]
                row = lens[
                    (lens.language == lang)
                    & (lens.item_id == "q1")
                    & (lens.form == form)
                    & (lens.choice == j)
                ]
                for layer in (1, L):
                    got = row[row["layer"] == layer]["logprob"].item()
                    assert got == pytest.approx(_naive_latent(tiny, pids, cont, layer), abs=1e-4)
                # At the last layer the lens is the model's own output distribution.
                final = row[row["layer"] == L]["logprob"].item()
                assert final == pytest.approx(plain_continuation_logprobs(tiny, pids, cont).mean(), abs=1e-4)


def test_lens_summary_aggregates_and_table2(tmp_path):
    lm = tiny_model("llama")
    ds = toy_dataset()
    evaluate(lm, ds, tmp_path)
    s = run_lens(lm, ds, tmp_path, layers=[2, 4])
    assert s["layers"] == [2, 4]
    for form in ("native", "en", "label"):
        for layer in (2, 4):
            acc = s["latent_accuracy"][form][layer]
            assert 0 <= acc["mean"] <= 1
            assert set(acc["per_language"]) == {"en", "de", "zh"}
            # The mean leaves the pivot out (as the log ratio does): de and zh only.
            assert acc["mean"] == pytest.approx((acc["per_language"]["de"] + acc["per_language"]["zh"]) / 2)
    # English is the pivot: its native and English answers coincide, so its log ratio is exactly 0.
    assert s["log_ratio"][2]["per_language"]["en"] == pytest.approx(0.0, abs=1e-9)
    lens = pd.read_parquet(tmp_path / "lens")
    de = lens[(lens.language == "de") & (lens.layer == 4) & (lens.form != "label")]
    by_item = de.groupby(["item_id", "form"])["logprob"].apply(lambda x: np.log(np.exp(x).sum())).unstack()
    assert s["log_ratio"][4]["per_language"]["de"] == pytest.approx(
        (by_item["native"] - by_item["en"]).mean()
    )
    assert set(s["table2"]) >= {"acc", "cons", "tr_plus_in"}
    assert s["table2"]["languages"] == ["de", "zh"]
    # Table 2's right-hand side is over the languages the lens ran on, not every evaluated one.
    narrow = run_lens(lm, toy_dataset(["en", "de"]), tmp_path / "narrow", layers=[2, 4])
    assert narrow["languages"] == ["de", "en"]
    assert set(s["latent_transfer"]["en"][4]) == {"consistency", "tr_plus", "tr_minus"}


def test_items_without_english_pivot_are_skipped_with_a_count(tmp_path):
    ds = toy_dataset()
    items = dict(ds.items)
    items["en"] = [it for it in items["en"] if it.item_id != "q2"]

    class Partial(ParallelDataset):
        def english_choices(self, item_id):
            return None if item_id == "q2" else super().english_choices(item_id)

    partial = Partial(ds.name, ds.languages, ds.pivot, ds.items, ds.dropped, ds.template)
    run_lens(tiny_model("qwen2"), partial, tmp_path, layers=[4])
    lens = pd.read_parquet(tmp_path / "lens")
    assert "q2" not in set(lens["item_id"])
    import json

    run = json.loads((tmp_path / "run.json").read_text())
    assert run["stages"]["lens"]["skipped_no_pivot"] == 1


def test_lens_without_english_among_the_languages(tmp_path):
    from dataclasses import replace

    ds = replace(toy_dataset(), languages=["de", "zh"])  # English is loaded as pivot, not requested
    s = run_lens(tiny_model("llama"), ds, tmp_path, layers=[4])
    assert s["languages"] == ["de", "zh"] and set(s["mean_log_ratio"]) == {"de", "zh"}
