"""Steering: last-position-only hook, gamma = 0 no-op, cached grid = full forward, hook hygiene."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_model
from crosslens.data.prompts import get_template, render
from crosslens.models.anatomy import capture_residuals
from crosslens.scoring.choices import label_plan
from crosslens.scoring.options import EvalOptions
from crosslens.stages.evaluate.stage import evaluate
from crosslens.stages.sampling import held_out_sample
from crosslens.stages.steering.grid import add_at_positions, steer_grid, steered_full_forward
from crosslens.stages.steering.stage import run_steering
from crosslens.stages.steering.vectors import SteeringVectors, build_vectors
from helpers import toy_dataset


def _prompts(lm, ds, lang="de"):
    t = get_template(ds.template)
    items = [ds.item(lang, i) for i in ds.item_ids()]
    plan = label_plan(lm.tokenizer)
    return [lm.tokenizer(render(it, t)).input_ids for it in items], [
        plan.for_n(len(it.choices)) for it in items
    ]


def test_hook_changes_only_the_last_position_at_its_layer(tiny):
    ids = tiny.tokenizer("Question: What is 2 + 3? A: 5 B: 6 Answer:", return_tensors="pt").input_ids
    layer = 2
    delta = torch.randn(1, tiny.anatomy.d_model)
    last = torch.tensor([[ids.shape[1] - 1]])
    with torch.no_grad(), capture_residuals(tiny.anatomy, [layer - 1, layer]) as plain:
        tiny.model(ids)
    with torch.no_grad(), capture_residuals(tiny.anatomy, [layer - 1, layer]) as steered:
        with add_at_positions(tiny.anatomy, layer, delta, last):
            tiny.model(ids)
    assert torch.equal(plain[layer - 1], steered[layer - 1])  # below the hook nothing moves
    diff = steered[layer][0] - plain[layer][0]
    assert torch.allclose(diff[-1], delta[0], atol=1e-5)
    assert torch.equal(diff[:-1], torch.zeros_like(diff[:-1]))


def test_hook_is_removed_after_an_exception(tiny):
    before = [len(b._forward_hooks) for b in tiny.anatomy.blocks]
    with pytest.raises(RuntimeError, match="boom"):
        with add_at_positions(tiny.anatomy, 1, torch.ones(1, tiny.anatomy.d_model), torch.tensor([[0]])):
            assert [len(b._forward_hooks) for b in tiny.anatomy.blocks] != before
            raise RuntimeError("boom")
    assert [len(b._forward_hooks) for b in tiny.anatomy.blocks] == before


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_cached_grid_equals_full_forward_with_hook(tiny, padding_side):
    ds = toy_dataset()
    pids, lids = _prompts(tiny, ds)
    torch.manual_seed(1)
    vectors = {1: torch.randn(tiny.anatomy.d_model), 3: torch.randn(tiny.anatomy.d_model)}
    settings = [(1, -2.0), (1, 0.0), (3, 1.5), (3, 3.0)]
    grid = steer_grid(
        tiny, pids, lids, [(la, g * vectors[la]) for la, g in settings], batch_size=3, max_rows=5
    )
    for k, (layer, gamma) in enumerate(settings):
        delta = (gamma * vectors[layer]).expand(len(pids), -1)
        full = steered_full_forward(tiny, pids, layer, delta, lids, padding_side=padding_side)
        for (a, texts), b in zip(grid[k], full):
            assert texts is None
            np.testing.assert_allclose(a, b, atol=1e-4)


def naive_scores(lm, pids, lids, conts, layer, delta, where):
    """One plain model call per (prompt, choice): the model's own logits, gamma * v added by a hook at
    the last prompt position or at every position."""
    out = []
    for p, lab, cs in zip(pids, lids, conts):
        labels, texts = None, []
        for c in cs:
            ids = torch.tensor([list(p) + list(c[:-1])])
            index = None if where == "all" else torch.tensor([len(p) - 1])
            with (
                torch.no_grad(),
                add_at_positions(lm.anatomy, layer, delta if where == "all" else delta[None], index),
            ):
                logp = torch.log_softmax(lm.model(ids).logits[0].float(), dim=-1)
            labels = logp[len(p) - 1, list(lab)].numpy()
            texts.append(np.array([logp[len(p) - 1 + k, t].item() for k, t in enumerate(c)]))
        out.append((labels, texts))
    return out


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "llama"])  # gemma3: an 8-token sliding window
@pytest.mark.parametrize("where", ["last", "all"])
def test_steered_cloze_and_labels_equal_naive_forwards(family, where):
    from crosslens.scoring.choices import encode_continuation
    from crosslens.stages.steering.stage import full_scores

    lm = tiny_model(family)
    ds = toy_dataset()
    t = get_template(ds.template)
    items = [ds.item("de", i) for i in ds.item_ids()][:4]
    texts = [render(it, t) for it in items]
    pids = [lm.tokenizer(x).input_ids for x in texts]
    lids = [label_plan(lm.tokenizer).for_n(len(it.choices)) for it in items]
    conts = [
        [encode_continuation(lm.tokenizer, x, p, c)[0] for c in it.choices]
        for it, x, p in zip(items, texts, pids)
    ]
    torch.manual_seed(2)
    delta = 3.0 * torch.randn(lm.anatomy.d_model)
    if where == "last":
        (got,) = steer_grid(lm, pids, lids, [(2, delta)], conts, batch_size=3, max_rows=7)
    else:
        with add_at_positions(lm.anatomy, 2, delta, None):
            got = full_scores(lm, pids, lids, conts, EvalOptions(batch_size=3))
    ref = naive_scores(lm, pids, lids, conts, 2, delta, where)
    unsteered = naive_scores(lm, pids, lids, conts, 2, torch.zeros_like(delta), where)
    assert any(not np.allclose(a[0], b[0], atol=1e-3) for a, b in zip(ref, unsteered))  # the vector matters
    for (labels, cloze), (ref_labels, ref_cloze) in zip(got, ref):
        np.testing.assert_allclose(labels, ref_labels, atol=1e-4)
        for a, b in zip(cloze, ref_cloze, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4)


def test_controls_have_the_norm_of_the_vector_and_are_seeded():
    from crosslens.stages.steering.stage import WRONG_LANGUAGE, control_vector, wrong_language

    torch.manual_seed(3)
    v, other = torch.randn(64), torch.randn(64)
    norm = torch.linalg.vector_norm(v)
    a = control_vector(v, "random:0", 0, "de", 2, other)
    assert torch.linalg.vector_norm(a) == pytest.approx(norm.item(), rel=1e-6)
    assert torch.equal(a, control_vector(v, "random:0", 0, "de", 2, other))
    assert not torch.equal(a, control_vector(v, "random:1", 0, "de", 2, other))
    assert not torch.equal(a, control_vector(v, "random:0", 0, "de", 3, other))
    w = control_vector(v, WRONG_LANGUAGE, 0, "de", 2, other)
    assert torch.linalg.vector_norm(w) == pytest.approx(norm.item(), rel=1e-6)
    assert torch.allclose(w / torch.linalg.vector_norm(w), other / torch.linalg.vector_norm(other), atol=1e-6)
    assert wrong_language(["en", "de", "zh", "ru"], "en", "ru") == "de"
    assert (
        wrong_language(["en", "de"], "en", "de") is None and wrong_language(["en", "de"], "en", "en") is None
    )


def test_controls_and_positions_in_a_run(tmp_path):
    lm = tiny_model("llama")
    ds = toy_dataset()
    summary = run_steering(
        lm, ds, tmp_path, ["de", "zh"], [2], [0.0, 4.0], n_vectors=3, controls=4, positions=["last", "all"]
    )
    df = pd.read_parquet(tmp_path / "steer")
    controls = {"", "random:0", "random:1", "random:2", "random:3", "wrong-language"}
    assert set(df[df.gamma == 4.0]["control"]) == controls and set(df[df.gamma == 0.0]["control"]) == {""}
    wrong = df[(df.control == "wrong-language") & df.steered]
    assert set(zip(wrong.language, wrong.control_language)) == {("de", "zh"), ("zh", "de")}
    assert {"cloze_correct", "cloze_ranks"} <= set(df.columns)
    for st in summary["settings"]:
        if st["gamma"] == 0.0:
            assert st["delta_accuracy"]["mean"] == 0 and st["delta_cloze_accuracy"]["mean"] == 0
            assert "controls" not in st
            continue
        c = st["controls"]["accuracy"]
        assert c["n"] == 4 and 1 / 5 <= c["p_empirical"] <= 1
        assert set(st["controls"]["wrong_language"]) >= {"accuracy", "cloze_accuracy"}
        for v in st["per_language"].values():
            assert v["controls"]["cloze_accuracy"]["n"] == 4
            assert v["cloze_p_holm"] >= v["cloze_p_mcnemar"]
    # gamma = 0 rows are the same unsteered scores for both positions
    zero = df[(df.gamma == 0.0) & (df.language == "de")].sort_values("item_id")
    a, b = zero[zero.positions == "last"], zero[zero.positions == "all"]
    for x, y in zip(a["label_logprobs"], b["label_logprobs"], strict=True):
        assert np.allclose(x, y)


def test_gamma_zero_reproduces_unsteered_records_exactly(tmp_path):
    lm = tiny_model("gemma2")
    ds = toy_dataset()
    pids, lids = _prompts(lm, ds)
    zero = steered_full_forward(lm, pids, 2, torch.zeros(len(pids), lm.anatomy.d_model), lids)
    evaluate(lm, ds, tmp_path, opts=EvalOptions(batch_size=8, cloze=False))
    rec = pd.read_parquet(tmp_path / "records").query("language == 'de'").set_index("item_id")
    for item_id, lp in zip(ds.item_ids(), zero):
        assert list(lp.astype(float)) == pytest.approx(list(rec.loc[item_id, "label_logprobs"]), abs=1e-6)
    steer = run_steering(lm, ds, tmp_path / "s", ["de", "zh"], [2], [0.0, 1.0], n_vectors=2)
    assert [s["gamma"] for s in steer["settings"]] == [0.0, 1.0]
    base = steer["settings"][0]
    assert base["delta_accuracy"]["mean"] == 0.0


def test_vectors_are_mean_english_minus_language_and_round_trip(tmp_path):
    lm = tiny_model("qwen2")
    ds = toy_dataset()
    ids = held_out_sample(ds.item_ids(), 3, 0, "n_vectors")
    assert ids == held_out_sample(ds.item_ids(), 3, 0, "n_vectors")
    sv = build_vectors(lm, ds, ["de", "zh"], [2], ids)
    from crosslens.stages.activations import last_token_states

    t = get_template(ds.template)
    h = {
        lang: last_token_states(lm, [lm.tokenizer(render(ds.item(lang, i), t)).input_ids for i in ids], [2])[
            2
        ]
        for lang in ("en", "de")
    }
    np.testing.assert_allclose(sv.get("de", 2).numpy(), (h["en"] - h["de"]).mean(0), atol=1e-5)
    assert torch.count_nonzero(sv.get("en", 2)) == 0
    sv.save(tmp_path / "v.safetensors")
    back = SteeringVectors.load(tmp_path / "v.safetensors")
    assert back.fingerprint["vector_items"] == ids and back.fingerprint["model"] == lm.spec
    assert set(back.digests) == {"en", "de", "zh"}
    assert torch.equal(back.get("zh", 2), sv.get("zh", 2))


def test_steering_run_holds_out_vector_items_and_marks_english(tmp_path):
    lm = tiny_model("llama")
    ds = toy_dataset()
    summary = run_steering(lm, ds, tmp_path, ["de", "zh"], [1, 3], [-2.0, 2.0], n_vectors=3, seed=0)
    df = pd.read_parquet(tmp_path / "steer")
    held_out = set(held_out_sample(ds.item_ids(), 3, 0, "n_vectors"))
    assert not held_out & set(df["item_id"])
    assert len(df) == 3 * 2 * 3 * (len(ds.item_ids()) - 3)  # languages x layers x gammas x items
    en = df[df.language == "en"]
    assert not en["steered"].any() and df[df.language != "en"]["steered"].all()
    assert {(s["layer"], s["gamma"]) for s in summary["settings"]} == {
        (la, g) for la in (1, 3) for g in (-2.0, 0.0, 2.0)
    }
    again = run_steering(lm, ds, tmp_path, ["de", "zh"], [1, 3], [-2.0, 2.0], n_vectors=3, seed=0)
    assert again == summary


def test_steering_summary_has_paired_tests_with_holm_over_the_grid(tmp_path):
    from scipy.stats import binomtest

    lm = tiny_model("qwen2")
    ds = toy_dataset()
    summary = run_steering(lm, ds, tmp_path, ["de", "zh"], [1, 3], [-8.0, 8.0], n_vectors=3, seed=0)
    df = pd.read_parquet(tmp_path / "steer")
    raw, adjusted = [], []
    for st in summary["settings"]:
        for m, v in st["per_language"].items():
            if st["gamma"] == 0:  # the baseline against itself
                assert v["p_mcnemar"] == v["p_holm"] == 1.0
                assert all(v["paired"][k]["delta"] == 0 for k in ("accuracy", "gold_score"))
                assert v["paired"]["accuracy"]["ci_low"] == v["paired"]["accuracy"]["ci_high"] == 0
                continue
            key = ["item_id"]
            base = df[(df.language == m) & (df.layer == st["layer"]) & (df.gamma == 0)].set_index(key)
            steered = df[
                (df.language == m) & (df.layer == st["layer"]) & (df.gamma == st["gamma"])
            ].set_index(key)
            b, a = base["correct"], steered.loc[base.index, "correct"]
            gained, lost = int((~b & a).sum()), int((b & ~a).sum())
            expected = 1.0 if gained + lost == 0 else binomtest(gained, gained + lost).pvalue
            assert v["p_mcnemar"] == pytest.approx(expected)
            delta = v["paired"]["accuracy"]
            assert delta["delta"] == pytest.approx(a.mean() - b.mean())
            assert delta["ci_low"] <= delta["delta"] <= delta["ci_high"]
            assert v["p_holm"] >= v["p_mcnemar"]
            raw.append(v["p_mcnemar"])
            adjusted.append(v["p_holm"])
    assert len(raw) == 2 * 2 * 2  # languages x layers x nonzero gammas
    order = np.argsort(raw, kind="stable")
    by_hand = np.maximum.accumulate([min(1.0, (len(raw) - k) * raw[i]) for k, i in enumerate(order)])
    assert np.allclose(np.asarray(adjusted)[order], by_hand)


def test_holm_and_the_pearson_interval() -> None:
    from crosslens.scoring import metrics

    assert metrics.holm([0.01, 0.04, 0.03, float("nan"), 0.005]) == pytest.approx(
        [0.03, 0.06, 0.06, float("nan"), 0.02], nan_ok=True
    )
    x, y = [1.0, 2, 3, 4, 5, 6, 7], [2.0, 1, 4, 3, 6, 5, 8]
    cell = metrics.pearson_with_stars(x, y)
    z, half = np.arctanh(cell["r"]), 1.959963984540054 / np.sqrt(len(x) - 3)
    assert (cell["ci_low"], cell["ci_high"]) == pytest.approx((np.tanh(z - half), np.tanh(z + half)))
    assert cell["n"] == 7


def test_empty_gammas_and_layer_zero_are_refused(tmp_path):
    lm = tiny_model("llama")
    with pytest.raises(ValueError, match="gammas"):
        run_steering(lm, toy_dataset(), tmp_path, ["de"], [1], [], n_vectors=2)
    with pytest.raises(ValueError, match="layer"):
        run_steering(lm, toy_dataset(), tmp_path, ["de"], [0], [1.0], n_vectors=2)
