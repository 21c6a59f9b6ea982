"""Steering: last-position-only hook, gamma = 0 no-op, cached grid = full forward, hook hygiene."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_model
from crosslens.anatomy import capture_residuals
from crosslens.evaluate import EvalOptions, evaluate
from crosslens.prompts import get_template, render
from crosslens.scoring import label_plan
from crosslens.steering import (
    SteeringVectors,
    add_at_positions,
    build_vectors,
    run_steering,
    sample_vector_items,
    steer_grid,
    steered_full_forward,
)
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
    grid = steer_grid(tiny, pids, lids, vectors, settings, batch_size=3, max_rows=5)
    for layer, gamma in settings:
        delta = (gamma * vectors[layer]).expand(len(pids), -1)
        full = steered_full_forward(tiny, pids, layer, delta, lids, padding_side=padding_side)
        for a, b in zip(grid[(layer, gamma)], full):
            np.testing.assert_allclose(a, b, atol=1e-4)


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
    ids = sample_vector_items(ds.item_ids(), 3, seed=0)
    assert ids == sample_vector_items(ds.item_ids(), 3, seed=0)
    sv = build_vectors(lm, ds, ["de", "zh"], [2], ids)
    from crosslens.activations import last_token_states

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
    held_out = set(sample_vector_items(ds.item_ids(), 3, seed=0))
    assert not held_out & set(df["item_id"])
    assert len(df) == 3 * 2 * 3 * (len(ds.item_ids()) - 3)  # languages x layers x gammas x items
    en = df[df.language == "en"]
    assert not en["steered"].any() and df[df.language != "en"]["steered"].all()
    assert {(s["layer"], s["gamma"]) for s in summary["settings"]} == {
        (la, g) for la in (1, 3) for g in (-2.0, 0.0, 2.0)
    }
    again = run_steering(lm, ds, tmp_path, ["de", "zh"], [1, 3], [-2.0, 2.0], n_vectors=3, seed=0)
    assert again == summary


def test_empty_gammas_and_layer_zero_are_refused(tmp_path):
    lm = tiny_model("llama")
    with pytest.raises(ValueError, match="gammas"):
        run_steering(lm, toy_dataset(), tmp_path, ["de"], [1], [], n_vectors=2)
    with pytest.raises(ValueError, match="layer"):
        run_steering(lm, toy_dataset(), tmp_path, ["de"], [0], [1.0], n_vectors=2)
