"""Language-specific neurons: LAPE selection, counting, deactivation hooks, paired effects, the stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import binomtest

from conftest import FAMILIES, tiny_model
from crosslens.cli import main
from crosslens.data.registry import load_dataset
from crosslens.scoring import metrics
from crosslens.scoring.options import EvalOptions
from crosslens.stages.neurons.stage import (
    count_active,
    deactivate,
    lape_entropy,
    neuron_stage,
    random_control,
    run_neurons,
    select_neurons,
)
from crosslens.store import RunMismatchError, Store

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- LAPE on synthetic statistics with a known answer ----------------------------------------------
def synthetic_probs() -> np.ndarray:
    """2 layers x 50 neurons x 3 languages: background 0.3 everywhere; four planted neurons."""
    p = np.full((2, 50, 3), 0.3)
    p[0, 7] = [0.9, 0.01, 0.01]  # language 0 only
    p[1, 3] = [0.01, 0.95, 0.02]  # language 1 only
    p[1, 20] = [0.85, 0.9, 0.0]  # languages 0 and 1, never 2
    p[0, 40] = [0.05, 0.0, 0.02]  # low entropy but rarely active: filtered out
    return p


def test_lape_entropy() -> None:
    p = np.array([[[0.5, 0.5], [0.2, 0.0], [0.0, 0.0]]])
    assert np.allclose(lape_entropy(p), [[np.log(2), 0.0, 0.0]])


def test_lape_selects_the_planted_neurons() -> None:
    selected, info = select_neurons(synthetic_probs(), ["a", "b", "c"], top_rate=0.03)
    assert info["n_kept"] == 3  # round(100 * 0.03); the rarely active neuron is not a candidate
    assert {k: {layer: v.tolist() for layer, v in s.items()} for k, s in selected.items()} == {
        "a": {1: [7], 2: [20]},
        "b": {2: [3, 20]},
        "c": {},
    }
    assert info["activation_threshold"] == pytest.approx(0.3)  # the 95th percentile of all p: the background


def test_lape_follows_the_reference_quantile_rule() -> None:
    """Thresholds: the k-th smallest value, k = round(n * rate), as torch.kthvalue in the paper's code."""
    rng = np.random.default_rng(0)
    p = rng.uniform(size=(3, 40, 4))
    flat = torch.tensor(p).flatten()
    _, info = select_neurons(p, list("wxyz"), top_rate=0.05, filter_rate=0.9, activation_bar=0.8)
    assert info["candidate_threshold"] == flat.kthvalue(round(len(flat) * 0.9)).values.item()
    assert info["activation_threshold"] == flat.kthvalue(round(len(flat) * 0.8)).values.item()


@pytest.mark.parametrize("rate", [0.0, 1.5, -0.1])
def test_selection_rates_are_checked(rate: float) -> None:
    with pytest.raises(ValueError, match="top_rate"):
        select_neurons(synthetic_probs(), ["a", "b", "c"], top_rate=rate)


def test_random_control_matches_layers_and_counts() -> None:
    own = {1: np.array([3, 4, 5]), 3: np.array([0])}
    a = random_control(own, 10, seed=0, label="zh")
    assert {k: len(v) for k, v in a.items()} == {1: 3, 3: 1}
    assert not set(a[1]) & {3, 4, 5} and a[3][0] != 0
    assert all(np.array_equal(a[k], random_control(own, 10, 0, "zh")[k]) for k in a)
    assert any(not np.array_equal(a[k], random_control(own, 10, 1, "zh")[k]) for k in a)


# -- counting and deactivation on tiny models of every family --------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_counts_do_not_depend_on_batching_and_skip_bos(family: str) -> None:
    lm = tiny_model(family)
    texts = {"en": ["The quick brown fox", "Question: capital of France?"], "de": ["Frage: Paris", "Antwort"]}
    batched = count_active(lm, texts, batch_size=2)
    single = count_active(lm, texts, batch_size=1)
    assert np.array_equal(batched.active, single.active)
    lengths = {k: sum(len(lm.tokenizer(t).input_ids) - 1 for t in v) for k, v in texts.items()}
    assert batched.tokens.tolist() == [lengths["en"], lengths["de"]]
    # Independent count: the activation recomputed from the MLP's own input for one text.
    ids = torch.tensor([lm.tokenizer(texts["de"][0]).input_ids])
    seen = {}
    mlp = lm.anatomy.blocks[1].mlp
    handle = mlp.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        lm.model(ids)
    handle.remove()
    act = mlp.act_fn(mlp.gate_proj(seen["x"]))[0, 1:]
    alone = count_active(lm, {"de": texts["de"][:1]})
    assert np.array_equal(alone.active[1, :, 0], (act > 0).sum(0).numpy())


@pytest.mark.parametrize("family", FAMILIES)
def test_deactivation_is_exact_and_leaves_nothing_behind(family: str) -> None:
    lm = tiny_model(family)
    hooks = [len(m._forward_hooks) for m in lm.model.modules()]
    ids = torch.tensor([lm.tokenizer("Question: capital of France? Answer:").input_ids])
    with torch.no_grad():
        before = lm.model(ids).logits.clone()
        neurons = {1: np.array([0, 5, 9]), 3: np.array([2])}
        with deactivate(lm.anatomy, neurons):
            ablated = lm.model(ids).logits.clone()
        after = lm.model(ids).logits
        # Reference: the same neurons removed from the weights (their down_proj columns zeroed).
        saved = {}
        for layer, idx in neurons.items():
            down = lm.anatomy.blocks[layer - 1].mlp.down_proj.weight
            saved[layer] = down.clone()
            down[:, idx] = 0
        try:
            reference = lm.model(ids).logits
        finally:
            for layer, w in saved.items():
                lm.anatomy.blocks[layer - 1].mlp.down_proj.weight.copy_(w)
    assert torch.equal(before, after), "outputs must be bit-identical once the context exits"
    assert not torch.allclose(before, ablated)
    assert torch.allclose(ablated, reference, atol=1e-5)
    assert [len(m._forward_hooks) for m in lm.model.modules()] == hooks


def test_deactivation_hooks_are_removed_on_error() -> None:
    lm = tiny_model("llama")
    hooks = [len(m._forward_hooks) for m in lm.model.modules()]
    with pytest.raises(RuntimeError, match="boom"), deactivate(lm.anatomy, {2: np.array([1])}):
        assert [len(m._forward_hooks) for m in lm.model.modules()] != hooks
        raise RuntimeError("boom")
    assert [len(m._forward_hooks) for m in lm.model.modules()] == hooks


# -- paired effects -----------------------------------------------------------------------------------
def _records(correct: dict[str, list[bool]]) -> pd.DataFrame:
    rows = []
    for lang, values in correct.items():
        for i, c in enumerate(values):
            pred = 0 if c else 1
            ranks = [1, 2] if pred == 0 else [2, 1]
            rows.append({"language": lang, "item_id": f"q{i}", "correct": c, "pred": pred, "ranks": ranks})
    return pd.DataFrame(rows)


def test_paired_effects_of_nothing_are_zero() -> None:
    rng = np.random.default_rng(1)
    base = _records({lang: list(rng.random(30) < 0.6) for lang in ("en", "de", "zh")})
    effects = metrics.paired_effects(base, base.copy(), "en", n_boot=200)
    for lang, e in effects.items():
        assert e["accuracy"]["delta"] == 0 and e["accuracy"]["p_mcnemar"] == 1.0
        assert (e["accuracy"]["ci_low"], e["accuracy"]["ci_high"]) == (0.0, 0.0)
        if lang != "en":
            assert e["consistency_pivot"]["delta"] == 0 and e["consistency_pivot"]["ci_high"] == 0
            assert e["tr_plus_from_pivot"]["delta"] == 0


def test_paired_gold_score_effect() -> None:
    rng = np.random.default_rng(3)
    base = _records({lang: list(rng.random(25) < 0.5) for lang in ("en", "zh")})
    base["gold"] = 0
    base["cloze_norm"] = [list(rng.normal(size=2)) for _ in range(len(base))]
    treated = base.copy()
    treated["cloze_norm"] = [
        [s[0] - (0.3 if lang == "zh" else 0.0), s[1]] for s, lang in zip(base["cloze_norm"], base["language"])
    ]
    effects = metrics.paired_effects(base, treated, "en", n_boot=200, scores_col="cloze_norm")
    zh, en = effects["zh"]["gold_score"], effects["en"]["gold_score"]
    assert zh["delta"] == pytest.approx(-0.3) and zh["ci_low"] == pytest.approx(-0.3) == zh["ci_high"]
    assert zh["p_wilcoxon"] < 1e-4
    assert en["delta"] == 0 and en["p_wilcoxon"] == 1.0


def test_paired_effects_mcnemar_and_pairing() -> None:
    rng = np.random.default_rng(2)
    b = rng.random(40) < 0.5
    t = b.copy()
    t[:12] = True  # gains
    t[30:33] = False  # losses
    base, treated = _records({"en": list(b), "de": list(b)}), _records({"en": list(b), "de": list(t)})
    e = metrics.paired_effects(base, treated, "en", n_boot=500)["de"]["accuracy"]
    gained, lost = int((~b & t).sum()), int((b & ~t).sum())
    assert e["p_mcnemar"] == pytest.approx(binomtest(gained, gained + lost, 0.5).pvalue)
    assert e["delta"] == pytest.approx((gained - lost) / 40)
    # Paired: one draw of items serves both sides, so each replicate's change is the weighted
    # mean of the per-item changes (an unpaired bootstrap would draw the two sides separately).
    w = np.random.default_rng(0).multinomial(40, np.full(40, 1 / 40), size=500)
    order = sorted(range(40), key=lambda i: f"q{i}")  # the item axis is sorted by id
    reps = (w * (t.astype(float) - b)[order]).sum(1) / 40
    assert (e["ci_low"], e["ci_high"]) == pytest.approx(tuple(np.percentile(reps, [2.5, 97.5])))


# -- the stage ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mini() -> object:
    return load_dataset("crosslens-mini", ["en", "de", "zh", "ru"]).limit(14)


OPTS = EvalOptions(batch_size=8, chunk_size=5)


def test_stage_end_to_end_and_resume(tmp_path: Path, mini) -> None:
    lm = tiny_model("qwen2")
    summary = run_neurons(
        lm, mini, tmp_path, ablate=["zh", "en"], n_text_items=5, top_rate=0.05, n_boot=100, opts=OPTS
    )
    stage = neuron_stage(lm, mini, tmp_path, ["zh", "en"], 5, 0.05, opts=OPTS)
    rows = Store(tmp_path).read("ablation")
    assert not set(rows["item_id"]) & set(stage.find_items), (
        "the text the neurons come from is never evaluated"
    )
    assert set(zip(rows["ablated"], rows["neurons"])) == {
        ("", "none"), ("zh", "lape"), ("zh", "random"), ("en", "lape"), ("en", "random")
    }  # fmt: skip
    assert len(rows) == 5 * 4 * 9 and not rows.duplicated(["language", "item_id", "ablated", "neurons"]).any()
    assert {"cloze_correct", "correct", "ranks", "n_ablated"} <= set(rows.columns)
    n_zh = summary["n_specific"]["zh"]
    assert set(rows.loc[rows["ablated"] == "zh", "n_ablated"]) == {n_zh}
    assert summary["effects"]["zh"]["lape"]["n_neurons"] == summary["effects"]["zh"]["random"]["n_neurons"]
    lape = Store(tmp_path).read("neurons")
    assert list(lape.columns) == [
        "layer",
        "neuron",
        "language",
        "activation_probability",
        "entropy",
        "specific",
    ]
    assert lape["specific"].sum() == sum(summary["n_specific"].values())
    zh = summary["effects"]["zh"]["lape"]["cloze"]["zh"]
    assert {"accuracy", "consistency_pivot", "tr_plus_from_pivot"} <= set(zh)
    assert "consistency_pivot" not in summary["effects"]["en"]["lape"]["letters"]["en"]
    assert json.loads((tmp_path / "neurons_summary.json").read_text())["selection"]["top_rate"] == 0.05
    files = {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet")}
    files["stats"] = (tmp_path / "neuron_stats.safetensors").stat().st_mtime_ns
    run_neurons(lm, mini, tmp_path, ablate=["zh", "en"], n_text_items=5, top_rate=0.05, n_boot=100, opts=OPTS)
    again = {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet")}
    again["stats"] = (tmp_path / "neuron_stats.safetensors").stat().st_mtime_ns
    assert again == files, "a finished run recomputes nothing"
    # A third language to ablate extends the table; another selection rate is another analysis: refused.
    run_neurons(
        lm, mini, tmp_path, ablate=["zh", "en", "ru"], n_text_items=5, top_rate=0.05, n_boot=100, opts=OPTS
    )
    assert ("ru", "random") in set(
        zip(*(Store(tmp_path).read("ablation")[c] for c in ("ablated", "neurons")))
    )
    with pytest.raises(RunMismatchError, match="top_rate"):
        run_neurons(lm, mini, tmp_path, ablate=["zh"], n_text_items=5, top_rate=0.1, opts=OPTS)


def test_baseline_rows_equal_plain_evaluation(tmp_path: Path, mini) -> None:
    from crosslens.stages.evaluate.stage import evaluate

    lm = tiny_model("gemma2")
    run_neurons(lm, mini, tmp_path / "n", ablate=["de"], n_text_items=5, top_rate=0.05, n_boot=0, opts=OPTS)
    stage = neuron_stage(lm, mini, tmp_path / "n", ["de"], 5, 0.05, opts=OPTS)
    evaluate(lm, mini, tmp_path / "e", opts=OPTS, exclude=stage.find_items)
    base = Store(tmp_path / "n").read("ablation").query("neurons == 'none'")
    plain = Store(tmp_path / "e").read("records")
    key = ["language", "item_id"]
    merged = base.merge(plain, on=key, suffixes=("", "_plain"))
    assert len(merged) == len(plain)
    assert (merged["pred"] == merged["pred_plain"]).all()
    assert np.allclose(np.stack(merged["cloze_norm"]), np.stack(merged["cloze_norm_plain"]), atol=1e-6)


def test_cli_neurons(saved_model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["neurons", "--model", str(saved_model), "--dataset", "crosslens-mini", "--languages", "en,de,zh"]
    args += ["--limit", "10", "--n-text-items", "4", "--top-rate", "0.05", "--ablate", "zh", "--n-boot", "50"]
    assert main([*args, "--out", str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps long titles
    assert "LAPE kept" in printed and "deactivating a language's neurons" in printed
    assert (out / "fig8_neurons.png").is_file() and (out / "fig9_ablation.png").is_file()


def test_random_controls_are_saved_repeated_and_set_against_lape(tmp_path: Path, mini) -> None:
    """K random sets per ablated language: their (layer, neuron) ids are saved (the ``neuron_sets``
    table and the summary), each draw is fixed and independent of K (the first is the one control
    of earlier folders, which extend to more controls computing only the new settings), and the LAPE
    effect is set against the K effects: their mean, sd and empirical p."""
    lm = tiny_model("qwen2")
    one = tmp_path / "one"
    kw = dict(ablate=["zh"], n_text_items=5, top_rate=0.05, n_boot=20, opts=OPTS)
    run_neurons(lm, mini, one, **kw)
    first = {p.relative_to(one): p.read_bytes() for p in one.rglob("*.parquet")}
    summary = run_neurons(lm, mini, one, **kw, controls=3)
    assert first == {p: (one / p).read_bytes() for p in first}, "one control's results are reused as they are"
    rows = Store(one).read("ablation")
    assert set(rows["neurons"]) == {"none", "lape", "random", "random:1", "random:2"}
    sets = Store(one).read("neuron_sets")
    effects = summary["effects"]["zh"]
    lape = {
        (layer, j)
        for layer, j in sets.query("neurons == 'lape'")[["layer", "neuron"]].itertuples(index=False)
    }
    assert len(lape) == summary["n_specific"]["zh"] > 0
    drawn = []
    for kind in ("random", "random:1", "random:2"):
        part = sets.query("neurons == @kind")
        ids = {(int(layer), int(j)) for layer, j in part[["layer", "neuron"]].itertuples(index=False)}
        assert len(ids) == len(lape) and not ids & lape  # as many, none of zh's own
        assert (
            part.groupby("layer").size().to_dict()
            == sets.query("neurons == 'lape'").groupby("layer").size().to_dict()
        )
        saved = {(int(layer), j) for layer, js in effects[kind]["neurons"].items() for j in js}
        assert saved == ids  # the summary names the same ids as the table
        drawn.append(ids)
    assert drawn[0] != drawn[1] != drawn[2]
    null = effects["lape"]["controls"]
    assert null["n"] == 3
    for form in ("cloze", "letters"):
        deltas = [effects[k][form]["zh"]["gold_score"]["delta"] for k in ("random", "random:1", "random:2")]
        got = null[form]["zh"]["gold_score"]
        effect = effects["lape"][form]["zh"]["gold_score"]["delta"]
        assert got["effect"] == effect
        assert got["null_mean"] == pytest.approx(np.mean(deltas))
        assert got["null_std"] == pytest.approx(np.std(deltas, ddof=1))
        assert got["p_empirical"] == (1 + sum(abs(d) >= abs(effect) - 1e-12 for d in deltas)) / 4
    # Repeated: the same call recomputes nothing and draws the same neurons.
    stamp = {p: p.stat().st_mtime_ns for p in one.rglob("*.parquet")}
    again = run_neurons(lm, mini, one, **kw, controls=3)
    assert stamp == {p: p.stat().st_mtime_ns for p in one.rglob("*.parquet")}
    assert again["effects"]["zh"]["random:2"]["neurons"] == effects["random:2"]["neurons"]
    # Drawn the same in a fresh folder with K = 3 at once.
    fresh = run_neurons(lm, mini, tmp_path / "fresh", **kw, controls=3)
    for kind in ("random", "random:1", "random:2"):
        assert fresh["effects"]["zh"][kind]["neurons"] == effects[kind]["neurons"]


def test_cli_neuron_controls(saved_model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["neurons", "--model", str(saved_model), "--dataset", "crosslens-mini", "--languages", "en,de,zh"]
    args += ["--limit", "8", "--n-text-items", "3", "--top-rate", "0.05", "--ablate", "zh", "--n-boot", "20"]
    assert main([*args, "--controls", "0", "--out", str(out)]) == 2
    assert "--controls" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--controls", "2", "--out", str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "random ×2" in printed and "p vs random" in printed
    summary = json.loads((out / "neurons_summary.json").read_text())
    assert summary["controls"] == 2 and summary["cloze_norm"] == "char"
    assert main(["report", str(out)]) == 0
    assert "random ×2" in (out / "report.md").read_text()
    from crosslens.experiment.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="neurons.controls"):
        parse_config(
            {"models": [str(saved_model)], "datasets": ["crosslens-mini"], "neurons": {"controls": 0}}
        )
