"""Representation similarity: CKA against independent implementations, the bootstrap, the stage."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import ortho_group

from conftest import tiny_model
from crosslens.cli import main
from crosslens.data.registry import load_dataset
from crosslens.stages.activations import Activations, prompt_states
from crosslens.stages.pca.stage import run_pca
from crosslens.stages.similarity.compute import cka_matrix, linear_cka
from crosslens.stages.similarity.stage import bootstrap_weights, cka_table, cosine_summary, run_similarity
from crosslens.store import RunMismatchError, Store

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- independent references (textbook formulas, written without crosslens' algebra) -------------------
def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """Song et al. (2012), Eq. 5, verbatim."""
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    return (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * (one @ kt @ lt @ one)
    ) / (n * (n - 3))


def cka_debiased_reference(x: np.ndarray, y: np.ndarray) -> float:
    k, l = x @ x.T, y @ y.T  # noqa: E741
    return hsic_unbiased(k, l) / np.sqrt(hsic_unbiased(k, k) * hsic_unbiased(l, l))


def cka_linear_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019), feature-space form: ||YᵀX||²_F / (||XᵀX||_F ||YᵀY||_F), centred."""
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def brute_weighted_u(k: np.ndarray, l: np.ndarray, w: np.ndarray) -> float:  # noqa: E741
    """The HSIC U-statistic over ordered 4-tuples of different items, each weighted by its draw counts."""
    total = 0.0
    for i, j, a, b in itertools.permutations(range(len(w)), 4):
        weight = w[i] * w[j] * w[a] * w[b]
        if weight:
            total += weight * (k[i, j] * l[i, j] + k[i, j] * l[a, b] - 2 * k[i, j] * l[i, a])
    return total


@pytest.fixture(scope="module")
def xy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 80))
    y = x @ rng.normal(size=(80, 120)) * 0.1 + rng.normal(size=(30, 120))
    return x, y


def test_cka_matches_the_textbook_formulas(xy) -> None:
    x, y = xy
    assert linear_cka(x, y, "debiased") == pytest.approx(cka_debiased_reference(x, y), abs=1e-10)
    assert linear_cka(x, y, "linear") == pytest.approx(cka_linear_reference(x, y), abs=1e-10)


@pytest.mark.parametrize("estimator", ["debiased", "linear"])
def test_cka_of_itself_is_one_and_invariant_to_rotation_and_scale(xy, estimator: str) -> None:
    x, y = xy
    assert linear_cka(x, x, estimator) == pytest.approx(1.0, abs=1e-12)
    q = ortho_group.rvs(x.shape[1], random_state=1)
    base = linear_cka(x, y, estimator)
    assert linear_cka(x @ q, y, estimator) == pytest.approx(base, abs=1e-10)
    assert linear_cka(3.7 * x, 0.02 * y, estimator) == pytest.approx(base, abs=1e-10)


def test_debiased_removes_the_small_sample_bias() -> None:
    rng = np.random.default_rng(3)
    x, z = rng.normal(size=(40, 600)), rng.normal(size=(40, 600))  # unrelated, few items, many dimensions
    assert linear_cka(x, z, "linear") > 0.8  # the plain estimator's bias toward 1
    assert abs(linear_cka(x, z, "debiased")) < 0.1


def test_weighted_replicates_are_the_u_and_v_statistics_of_the_draw() -> None:
    rng = np.random.default_rng(4)
    a = rng.normal(size=(7, 5))
    b = a + rng.normal(size=(7, 5))
    k, l = a @ a.T, b @ b.T  # noqa: E741
    w = np.array([2.0, 0, 1, 3, 1, 0, 0])
    ref = brute_weighted_u(k, l, w) / np.sqrt(brute_weighted_u(k, k, w) * brute_weighted_u(l, l, w))
    assert cka_matrix(np.stack([k, l]), "debiased", w[None])[0, 0, 1] == pytest.approx(ref, abs=1e-10)
    rows = np.repeat(np.arange(7), w.astype(int))  # the plain estimator: copies are rows
    assert cka_matrix(np.stack([k, l]), "linear", w[None])[0, 0, 1] == pytest.approx(
        cka_linear_reference(a[rows], b[rows]), abs=1e-10
    )


def test_bootstrap_interval_of_the_debiased_estimator() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 300))
    states = np.stack([x, x + 0.5 * rng.normal(size=x.shape), rng.normal(size=x.shape)])
    point, low, high = cka_table(states, "debiased", bootstrap_weights(40, 400, 0))
    assert np.allclose(np.diag(point), 1.0)
    assert low[0, 1] <= point[0, 1] <= high[0, 1] and low[0, 1] > 0.5
    assert low[0, 2] < 0 < high[0, 2]  # unrelated: the interval covers 0
    assert np.array_equal(point, cka_table(states, "debiased")[0])
    again = cka_table(states, "debiased", bootstrap_weights(40, 400, 0))
    assert all(np.array_equal(u, v, equal_nan=True) for u, v in zip((point, low, high), again))


def test_states_that_do_not_vary_have_no_cka() -> None:
    rng = np.random.default_rng(6)
    same = np.tile(rng.normal(size=(1, 16)), (10, 1))  # e.g. one last token's embedding in every prompt
    states = np.stack([same, rng.normal(size=(10, 16))])
    for estimator in ("debiased", "linear"):
        point, low, high = cka_table(states, estimator, bootstrap_weights(10, 50, 0))
        assert np.isnan(point[0, 1]) and np.isnan(low[0, 1]) and np.isnan(high[0, 1])


def test_cosine_counts_copies_of_an_item_as_parallel() -> None:
    rng = np.random.default_rng(7)
    states = rng.normal(size=(2, 6, 8))
    w = np.array([[2.0, 1, 0, 0, 3, 0]])
    got = cosine_summary(states, ["en", "de"], "en", w)["with_pivot"]["de"]
    unit = states / np.linalg.norm(states, axis=-1, keepdims=True)
    c = unit[0] @ unit[1].T
    assert got["parallel"]["mean"] == pytest.approx(np.trace(c) / 6)
    assert got["nonparallel"]["mean"] == pytest.approx(c[~np.eye(6, dtype=bool)].mean())
    rows = np.repeat(np.arange(6), w[0].astype(int))  # the replicate, expanded: pairs of different items only
    par = np.mean([c[i, i] for i in rows])
    non = np.mean([c[i, j] for i in rows for j in rows if i != j])
    assert got["parallel"]["ci_low"] == pytest.approx(par) and got["nonparallel"]["ci_low"] == pytest.approx(
        non
    )


def test_mean_pooling_leaves_out_bos_and_padding() -> None:
    lm = tiny_model("llama")
    prompts = [lm.tokenizer(t).input_ids for t in ("Question: capital of France?", "Frage: Paris")]
    assert all(p[0] == lm.tokenizer.bos_token_id for p in prompts)
    pooled = prompt_states(lm, prompts, [2], batch_size=2, pool="mean")[2]
    for row, ids in enumerate(prompts):
        with torch.no_grad():
            out = lm.model(torch.tensor([ids]), output_hidden_states=True)
        expected = out.hidden_states[2][0, 1:].mean(0).numpy()  # hidden_states[2] = output of block 2
        assert np.allclose(pooled[row], expected, atol=1e-5)


# -- the stage --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mini() -> object:
    return load_dataset("crosslens-mini", ["en", "de", "zh", "ru"]).limit(12)


def test_stage_table_summary_and_sharing_with_pca(tmp_path: Path, mini) -> None:
    lm = tiny_model("gemma3")
    run_pca(lm, mini, tmp_path, layers=[2, 4], n_items=8)
    acts = tmp_path / "activations.safetensors"
    before = acts.stat().st_mtime_ns
    summary = run_similarity(lm, mini, tmp_path, layers=[2, 4], n_items=8, n_boot=100)
    assert acts.stat().st_mtime_ns == before, (
        "the same sample's activations are PCA's: reused, not recomputed"
    )
    table = Store(tmp_path).read("similarity")
    assert list(table.columns[:8]) == [
        "layer",
        "language_a",
        "language_b",
        "estimator",
        "pool",
        "cka",
        "ci_low",
        "ci_high",
    ]
    assert len(table) == 2 * 6 * 2  # layers x language pairs x estimators
    saved = Activations.load(acts)
    for row in table.itertuples():
        x, y = saved.of(row.layer, row.language_a), saved.of(row.layer, row.language_b)
        assert row.cka == pytest.approx(linear_cka(x, y, row.estimator), abs=1e-9)
    assert set(summary["cka_with_pivot"]["debiased"]) == {"de", "zh", "ru"}
    assert summary["matrix_layer"] == 4 and (tmp_path / "fig6_cka.png").is_file()
    assert (tmp_path / "fig7_cka_matrix.png").is_file()
    on_disk = json.loads((tmp_path / "similarity_summary.json").read_text())
    assert on_disk["cosine"]["2"]["all_pairs"]["gap"]["ci_low"] is not None


def test_stage_extends_by_layer_and_pool_and_refuses_another_sample(tmp_path: Path, mini) -> None:
    lm = tiny_model("gemma3")
    run_similarity(lm, mini, tmp_path, layers=[2], n_items=6, n_boot=20)
    first = Store(tmp_path).read("similarity")
    run_similarity(lm, mini, tmp_path, layers=[2, 3], n_items=6, n_boot=20, pool="mean")
    table = Store(tmp_path).read("similarity")
    assert set(zip(table["layer"], table["pool"])) == {(2, "last"), (2, "mean"), (3, "mean")}
    pd.testing.assert_frame_equal(table[table["pool"] == "last"].reset_index(drop=True), first)
    assert (tmp_path / "activations_mean.safetensors").is_file()
    before = _visible(tmp_path)
    with pytest.raises(RunMismatchError, match="items"):
        run_similarity(lm, mini, tmp_path, layers=[2], n_items=7, n_boot=20)
    assert _visible(tmp_path) == before


def _visible(root: Path) -> dict[str, int]:
    """Every visible file with its modification time (locks are hidden and may be touched)."""
    return {
        p.name: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
    }


def test_cli_similarity(saved_model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = [
        "similarity",
        "--model",
        str(saved_model),
        "--dataset",
        "crosslens-mini",
        "--languages",
        "en,de,zh",
    ]
    args += ["--limit", "8", "--n-items", "6", "--n-boot", "50", "--layers", "1,3", "--out", str(out)]
    assert main(args) == 0
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps long titles
    assert "debiased linear CKA with en" in printed and "cosine of parallel vs non-parallel" in printed
    assert (out / "similarity_summary.json").is_file()
