"""Per-item divergence: the definition on hand-made readings, the statistics against independent
computations, the stage on a synthetic folder with a known answer, and the command on real readings
of a tiny model (no model loads for it)."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from crosslens.cli import main
from crosslens.data.prompts import get_template
from crosslens.lenses.kinds import lens_table
from crosslens.stages.base import setting_key
from crosslens.stages.divergence.compute import (
    agreement,
    auc,
    cells,
    divergence_layer,
    effect,
    logistic_slope,
)
from crosslens.stages.divergence.stage import divergence_stage, run_divergence
from crosslens.stages.fingerprints import prompt_fingerprint
from crosslens.store import Store
from helpers import toy_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- the definition ------------------------------------------------------------------------------------
def test_agreement_top_and_rank() -> None:
    native = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 1.0, 1.0]])
    english = np.array([[0.0, 1.0, 3.0], [0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    assert agreement(native, english).tolist() == [True, False, False, False]
    # rho: 1, -1, 0.5, undefined (a constant reading ranks nothing)
    assert agreement(native, english, "rank", 0.5).tolist() == [True, False, True, False]
    assert agreement(native, english, "rank", 0.6).tolist() == [True, False, False, False]
    assert agreement(native, english, "rank", -1.0).tolist() == [True, True, True, False]
    with pytest.raises(ValueError, match="shapes"):
        agreement(native, english[:, :2])


@pytest.mark.parametrize(
    "agree, expected",
    [
        ([True, True, True, True], None),  # agree to the end: never part
        ([True, True, False, False], 3),
        ([False, False, False, False], 1),  # never agree: part at the first layer read
        ([False, True, False, True], None),  # agreeing again at the end undoes an earlier split
        ([True, False, True, False], 4),  # only the last run of disagreement counts
        ([False], 1),
        ([True], None),
    ],
)
def test_divergence_layer_is_the_start_of_the_last_disagreement(
    agree: list[bool], expected: int | None
) -> None:
    layers = [1, 2, 3, 4][: len(agree)]
    assert divergence_layer(layers, agree) == expected
    sparse = [2, 6, 10, 14][: len(agree)]
    assert divergence_layer(sparse, agree) == (None if expected is None else sparse[expected - 1])


# -- the statistics against independent computations ---------------------------------------------------
def _random_frame(
    seed: int, n_items: int = 40, languages: tuple[str, ...] = ("de", "zh", "sw")
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for lang, k in itertools.product(languages, range(n_items)):
        code = int(rng.choice([1, 2, 3, 4, 5]))
        p = 1 / (1 + np.exp(-(0.8 - 0.5 * code + (0.7 if lang == "sw" else 0.0))))
        rows.append({"language": lang, "item_id": f"i{k:02d}", "code": code, "y": float(rng.random() < p)})
    return pd.DataFrame(rows)


def test_auc_is_the_within_language_pair_count() -> None:
    df = _random_frame(0)
    items = sorted(df["item_id"].unique())
    w = np.ones((1, len(items)))
    concordant = pairs = 0.0
    for _, g in df.groupby("language"):
        ev, quiet = g[g["y"] == 1]["code"].to_numpy(), g[g["y"] == 0]["code"].to_numpy()
        diff = ev[:, None] - quiet[None, :]
        concordant += (diff < 0).sum() + 0.5 * (diff == 0).sum()
        pairs += diff.size
    c = cells(df, [1, 2, 3, 4, 5], items, w)
    assert auc(c)[0] == pytest.approx(concordant / pairs, abs=1e-12)
    de = df[df["language"] == "de"]
    from scipy.stats import mannwhitneyu

    u = mannwhitneyu(de[de["y"] == 0]["code"], de[de["y"] == 1]["code"]).statistic  # quiet later than events
    n1, n0 = int(de["y"].sum()), int((1 - de["y"]).sum())
    assert auc(c.language("de"))[0] == pytest.approx(u / (n1 * n0), abs=1e-12)


def test_logistic_slope_is_sklearns_maximum_likelihood_with_language_intercepts() -> None:
    from sklearn.linear_model import LogisticRegression

    df = _random_frame(1, n_items=60)
    items = sorted(df["item_id"].unique())
    rng = np.random.default_rng(5)
    weights = np.vstack(
        [np.ones(len(items)), rng.multinomial(len(items), np.full(len(items), 1 / len(items)), 3)]
    )
    slopes = logistic_slope(cells(df, [1, 2, 3, 4, 5], items, weights))
    langs = sorted(df["language"].unique())
    design = np.column_stack([(df["language"] == lang).to_numpy(float) for lang in langs] + [df["code"]])
    item_index = pd.Index(items).get_indexer(df["item_id"])
    for b, w in enumerate(weights):
        fit = LogisticRegression(C=np.inf, fit_intercept=False, tol=1e-12, max_iter=10_000)
        fit.fit(design, df["y"].to_numpy(), sample_weight=w[item_index])
        assert slopes[b] == pytest.approx(fit.coef_[0][-1], abs=1e-4)


def test_logistic_slope_is_undefined_under_separation_and_skips_constant_languages() -> None:
    codes = [1, 2, 3]
    separated = pd.DataFrame(
        {"language": "de", "item_id": ["a", "b", "c", "d"], "code": [1, 1, 3, 3], "y": [1.0, 1, 0, 0]}
    )
    assert np.isnan(logistic_slope(cells(separated, codes, list("abcd"), np.ones((1, 4))))[0])
    mixed = pd.DataFrame(
        {"language": "de", "item_id": list("abcdef"), "code": [1, 1, 2, 2, 3, 3], "y": [1.0, 0, 1, 0, 0, 0]}
    )
    all_events = pd.DataFrame(
        {"language": "zh", "item_id": list("abcdef"), "code": [1, 2, 3, 1, 2, 3], "y": 1.0}
    )
    alone = logistic_slope(cells(mixed, codes, list("abcdef"), np.ones((1, 6))))[0]
    both = logistic_slope(cells(pd.concat([mixed, all_events]), codes, list("abcdef"), np.ones((1, 6))))[0]
    assert np.isfinite(alone) and alone < 0 and both == pytest.approx(alone, abs=1e-9)


def test_effect_has_bootstrap_intervals_around_the_estimate() -> None:
    df = _random_frame(2, n_items=80)
    items = sorted(df["item_id"].unique())
    from crosslens.scoring.metrics import replicate_weights

    weights = np.vstack([np.ones(len(items)), replicate_weights(len(items), 200, 0)])
    e = effect(df, [1, 2, 3, 4, 5], 5, items, weights)
    pooled = e["pooled"]
    assert pooled["n"] == 240 and pooled["events"] == int(df["y"].sum())
    assert pooled["auc_ci"][0] < pooled["auc"] < pooled["auc_ci"][1]
    assert pooled["slope_ci"][0] < pooled["slope"] < pooled["slope_ci"][1]
    assert pooled["auc"] > 0.5 and pooled["slope"] < 0  # the planted effect: earlier code, more events
    assert set(e["per_language"]) == {"de", "sw", "zh"}
    assert pooled["rate_never"] == pytest.approx(df[df["code"] == 5]["y"].mean())
    assert pooled["rate_parted"] == pytest.approx(df[df["code"] != 5]["y"].mean())


# -- the stage on a synthetic folder with a known answer ------------------------------------------------
LAYERS = [1, 2, 3, 4]
T, F = True, False
#: item -> (agreement per layer, its divergence layer, final answer consistent with English's)
PLANTED = {
    "q0": ([T, T, T, T], None, True),
    "q1": ([T, T, F, F], 3, False),
    "q2": ([F, F, F, F], 1, False),
    "q3": ([T, T, T, T], None, True),  # choices "5" / "6" in every language: identical texts, left out
    "q4": ([T, T, T, F], 4, True),
    "q5": ([F, F, F, F], 1, True),
    "q6": ([F, T, F, T], None, False),
}


def _fingerprint(ds, **extra: object) -> dict:
    return (
        prompt_fingerprint("synthetic", "float32", ds, get_template(ds.template)) | {"revision": "r"} | extra
    )


def write_synthetic(
    out: Path, ds, planted: dict = PLANTED, layers: list[int] = LAYERS, kind: str = "logit"
) -> None:
    """Lens readings and records as the lens and eval stages write them: native choice 0 on top at every
    layer; the English reading on top at choice 0 where the item's pattern agrees, else at choice 1.
    Every language answers the gold; an inconsistent item answers another choice (English is wrong
    there for q6 only, so English's right answer fails to transfer for q1 and q2)."""
    store = Store(out)
    pivot = ds.pivot
    for lang in ds.languages:
        items = [it for it in ds.items[lang] if it.item_id in planted]
        lens_rows, record_rows = [], []
        for it in items:
            agree, _, consistent = planted[it.item_id]
            n = len(it.choices)
            for layer, ok in zip(layers, agree):
                for form in ("native", "en"):
                    top = 0 if form == "native" or ok or lang == pivot else 1
                    lens_rows += [
                        {"dataset": ds.name, "language": lang, "item_id": it.item_id, "gold": it.gold,
                         "layer": layer, "form": form, "choice": j, "logprob": 0.0 if j == top else -1.0 - j,
                         "n_tokens": 1}
                        for j in range(n)
                    ]  # fmt: skip
            english_wrong = it.item_id == "q6"
            if lang == pivot:
                pred = (it.gold + 1) % n if english_wrong else it.gold
            else:
                pred = it.gold if consistent != english_wrong else (it.gold + 1) % n
            ranks = [1 if j == pred else 2 + j for j in range(n)]
            record_rows.append({"dataset": ds.name, "language": lang, "item_id": it.item_id, "n_choices": n,
                                "gold": it.gold, "ranks": ranks, "pred": pred,
                                "correct": pred == it.gold})  # fmt: skip
        digests = {it.item_id: it.digest for it in items}
        pair = {it.item_id: f"{it.digest}+{ds.item(pivot, it.item_id).digest}" for it in items}
        lens_meta = {
            "stage": lens_table(kind),
            "fingerprint": _fingerprint(ds, label_form="x", lens={"kind": kind}),
            "language": lang,
            "items": pair if lang != pivot else digests,
            "settings": [setting_key(x) for x in layers],
        }
        store.write_unit(
            lens_table(kind), f"{ds.name}.{lang}.lens.parquet", pd.DataFrame(lens_rows), lens_meta
        )
        records_meta = {
            "stage": "records",
            "fingerprint": _fingerprint(ds, label_form="x", cloze=False),
            "language": lang,
            "items": digests,
            "settings": [setting_key(None)],
        }
        store.write_unit(
            "records", f"{ds.name}.{lang}.records.parquet", pd.DataFrame(record_rows), records_meta
        )


@pytest.mark.parametrize("kind", ["logit", "tuned"])
def test_known_divergence_layers_and_effects(kind: str, tmp_path: Path) -> None:
    ds = toy_dataset()
    write_synthetic(tmp_path, ds, kind=kind)
    summary = run_divergence("synthetic", ds, tmp_path, layers=LAYERS, n_boot=50, lens=kind)
    table = "divergence" if kind == "logit" else f"divergence_{kind}"
    rows = Store(tmp_path).read(table)
    assert sorted(set(rows["language"])) == ["de", "zh"] and len(rows) == 14 and set(rows["lens"]) == {kind}
    for row in rows.itertuples():
        agree, layer, consistent = PLANTED[row.item_id]
        assert list(row.agree) == agree
        assert (None if pd.isna(row.divergence_layer) else int(row.divergence_layer)) == layer
        assert row.inconsistent == (not consistent)
    assert summary["identical"] == 2 and summary["n_rows"] == 12  # q3 in both languages
    # letters, inconsistent: events at codes {3, 1, never}, the others at {never, 4, 1} -> 5/9 per language
    incons = summary["effects"]["letters"]["inconsistent"]
    assert incons["pooled"]["auc"] == pytest.approx(5 / 9)
    assert (incons["pooled"]["events"], incons["pooled"]["n"]) == (6, 12)
    de = incons["per_language"]["de"]
    assert (de["events"], de["n"], de["auc"], de["slope"]) == (3, 6, None, None)  # 3 items each side: none
    assert incons["pooled"]["auc_parted"] is None  # 4 parting items with the outcome, 4 without
    rows_de = rows[(rows["language"] == "de") & (rows["item_id"] != "q3")].assign(
        code=lambda d: d["divergence_layer"].fillna(5).astype(int),
        y=lambda d: d["inconsistent"].astype(float),
    )
    one = effect(rows_de, [1, 2, 3, 4, 5], 5, sorted(rows_de["item_id"]), np.ones((1, 6)), min_group=1)
    assert one["pooled"]["auc"] == pytest.approx(5 / 9) and one["pooled"]["auc_parted"] == pytest.approx(
        2.5 / 4
    )
    # no transfer: only where English is right (not q6): events q1, q2 at {3, 1}, the rest at {never, 4, 1}
    transfer = summary["effects"]["letters"]["no_transfer"]["pooled"]
    assert (transfer["events"], transfer["n"]) == (4, 10) and transfer["auc"] is None  # 4 < 5 items
    rows_t = rows[(rows["item_id"] != "q3") & rows["no_transfer"].notna()].assign(
        code=lambda d: d["divergence_layer"].fillna(5).astype(int), y=lambda d: d["no_transfer"].astype(float)
    )
    kept = effect(rows_t, [1, 2, 3, 4, 5], 5, sorted(set(rows_t["item_id"])), np.ones((1, 5)), min_group=1)
    assert kept["pooled"]["auc"] == pytest.approx(0.75)
    assert kept["pooled"]["slope"] < 0  # parting later: less often wrong where English is right
    by_layer = summary["inconsistent_by_divergence"]["letters"]  # 5: never parts
    assert {c: (v["n"], v["inconsistent"]) for c, v in by_layer.items()} == {
        "1": (4, 2), "2": (0, 0), "3": (2, 2), "4": (2, 0), "5": (4, 2)
    }  # fmt: skip
    agreeing = summary["agreement_by_layer"]["letters"]["consistent"]
    assert agreeing == pytest.approx([2 / 3, 2 / 3, 2 / 3, 1 / 3])  # q0, q4, q5
    assert list(summary["effects"]) == ["letters"]  # the synthetic records hold no cloze scores
    assert summary["not_computed"] == {"de": 0, "zh": 0}
    assert json.loads((tmp_path / f"{table}_summary.json").read_text())["effects"]["letters"]
    assert (tmp_path / f"fig_{table}.png").is_file()


def test_the_rank_rule_and_its_own_fingerprint(tmp_path: Path) -> None:
    ds = toy_dataset()
    write_synthetic(tmp_path, ds)
    run_divergence("synthetic", ds, tmp_path, layers=LAYERS, n_boot=0)
    from crosslens.store import RunMismatchError

    with pytest.raises(RunMismatchError, match="agreement"):
        run_divergence("synthetic", ds, tmp_path, layers=LAYERS, n_boot=0, agreement="rank")
    with pytest.raises(RunMismatchError, match="layers"):
        run_divergence("synthetic", ds, tmp_path, layers=LAYERS[1:], n_boot=0)
    shutil.rmtree(tmp_path / "lens")  # the readings made again through another lens of the same kind
    write_synthetic(tmp_path / "again", ds)
    for path in (tmp_path / "again" / "lens").glob("*.parquet"):
        meta = pq.read_schema(path).metadata
        info = json.loads(meta[b"crosslens"])
        info["fingerprint"]["lens"] = {"kind": "logit", "softcap": "other"}
        table = pq.read_table(path).replace_schema_metadata({**meta, b"crosslens": json.dumps(info)})
        (tmp_path / "lens").mkdir(exist_ok=True)
        pq.write_table(table, tmp_path / "lens" / path.name)
    with pytest.raises(RunMismatchError, match="sources"):  # rows from the old readings are not mixed in
        run_divergence("synthetic", ds, tmp_path, layers=LAYERS, n_boot=0)
    other = tmp_path / "rank"
    write_synthetic(other, ds)
    summary = run_divergence("synthetic", ds, other, layers=LAYERS, n_boot=0, agreement="rank", min_rho=0.99)
    rows = Store(other).read("divergence")
    # the English reading swaps the first two choices where it disagrees: rho < 1, so the same layers part
    q1 = rows[(rows["item_id"] == "q1") & (rows["language"] == "de")].iloc[0]
    assert int(q1["divergence_layer"]) == 3 and summary["min_rho"] == 0.99


def test_more_items_extend_and_missing_readings_wait(tmp_path: Path) -> None:
    ds = toy_dataset()
    write_synthetic(tmp_path, ds, {k: v for k, v in PLANTED.items() if k in ("q0", "q1", "q2")})
    first = run_divergence("synthetic", ds, tmp_path, layers=LAYERS, n_boot=0)
    assert first["not_computed"] == {"de": 4, "zh": 4}
    shards = {p: p.read_bytes() for p in (tmp_path / "divergence").glob("*.parquet")}
    write_synthetic(tmp_path / "more", ds)
    for table in ("lens", "records"):  # the readings of the other items arrive (a larger --limit)
        for p in (tmp_path / "more" / table).glob("*.parquet"):
            p.rename(tmp_path / table / f"more-{p.name}")
    assert run_divergence("synthetic", ds, tmp_path, layers=LAYERS, n_boot=0)["not_computed"] == {
        "de": 0,
        "zh": 0,
    }
    assert all(p.read_bytes() == b for p, b in shards.items())  # the first rows stay as they were
    rows = Store(tmp_path).read("divergence")
    assert len(rows) == 14 and not rows.duplicated(["language", "item_id"]).any()


def test_a_folder_without_readings_or_with_other_layers_is_one_line(tmp_path: Path) -> None:
    from crosslens.stages.base import run_stage
    from crosslens.stages.divergence.stage import MissingResultsError

    ds = toy_dataset()
    with pytest.raises(MissingResultsError, match="lens and no records"):
        run_stage(divergence_stage("synthetic", ds, tmp_path, layers=LAYERS))
    write_synthetic(tmp_path, ds)
    with pytest.raises(MissingResultsError, match=r"holds layers \[1, 2, 3, 4\], not every one of \[2, 6\]"):
        run_stage(divergence_stage("synthetic", ds, tmp_path, layers=[2, 6]))
    from crosslens.store import RunMismatchError

    with pytest.raises(RunMismatchError, match="model: 'synthetic' -> 'other'"):
        run_stage(divergence_stage("other", ds, tmp_path, layers=LAYERS))
    assert not (tmp_path / "divergence").exists() and "divergence" not in Store(tmp_path).read_run().stages


# -- the command and the experiment on a tiny model's real readings -------------------------------------
def _argv(command: str, model: Path, out: Path, *extra: str) -> list[str]:
    base = [
        "-m",
        str(model),
        "-d",
        "crosslens-mini",
        "--languages",
        "en,de,zh",
        "--limit",
        "8",
        "-o",
        str(out),
    ]
    return [command, *base, "--layers", "1,2,4", *extra]


def test_the_command_reads_the_folder_and_loads_no_model(
    saved_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    assert main(["eval", *_argv("eval", saved_model, out)[1:-2], "--batch-size", "8"]) == 0
    assert main(_argv("lens", saved_model, out, "--batch-size", "8")) == 0
    capsys.readouterr()
    monkeypatch.setattr("crosslens.models.loading.load_model", lambda *a, **k: pytest.fail("a model loaded"))
    assert main(_argv("divergence", saved_model, out, "--n-boot", "50")) == 0
    printed = "".join(capsys.readouterr().out.split())  # rich wraps long lines and cells
    assert "logitlens,letters" in printed and "pooled" in printed and "fig_divergence.png" in printed, printed
    summary = json.loads((out / "divergence_summary.json").read_text())
    assert summary["layers"] == [1, 2, 4] and summary["languages"] == ["de", "zh"]
    rows = Store(out).read("divergence")
    assert len(rows) == 16 and set(rows["lens"]) == {"logit"}
    # the readings' final layer is the model's own output: where they agree there, the native and the
    # English answer texts rank alike after the native prompt
    lens = Store(out).read("lens")
    last = lens[(lens["layer"] == 4) & lens["form"].isin(["native", "en"])]
    for row in rows.itertuples():
        g = last[(last["language"] == row.language) & (last["item_id"] == row.item_id)]
        native = g[g["form"] == "native"].sort_values("choice")["logprob"].to_numpy()
        english = g[g["form"] == "en"].sort_values("choice")["logprob"].to_numpy()
        assert row.agree[-1] == (native.argmax() == english.argmax())
    run = json.loads((out / "run.json").read_text())["stages"]["divergence"]
    assert set(run["fingerprint"]["sources"]) == {"lens", "records"} and run["fingerprint"]["layers"] == [
        1,
        2,
        4,
    ]
