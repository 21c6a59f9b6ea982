"""What an output folder may reuse: the five silent-mixing cases of 0.1, for every stage they apply to.

Each refusal leaves the folder byte-identical (every visible file: shards, activations, vectors,
run.json, summaries, figures) and prints one ``error:`` line naming what differs; each extension
computes only what is missing and leaves the files already there untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import tiny_model
from crosslens.cli import main
from crosslens.models.loading import ModelLoadError, ModelSpec
from crosslens.store import Store, unit_name
from helpers import QUESTIONS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TABLES = {
    "eval": "records",
    "lens": "lens",
    "words": "words",
    "latent": "latent",
    "pca": "pca",
    "similarity": "similarity",
    "neurons": "ablation",
    "steer": "steer",
    "inspect-items": "inspect",
}
OPTIONS = {
    "eval": [],
    "lens": ["--layers", "1,2"],
    "words": ["--layers", "1,2", "--n-concepts", "6", "--n-boot", "20"],
    "latent": ["--layers", "1,2"],
    "pca": ["--layers", "1,2", "--n-items", "5"],
    "similarity": ["--layers", "1,2", "--n-items", "5", "--n-boot", "20"],
    "neurons": ["--n-text-items", "2", "--top-rate", "0.05", "--ablate", "de", "--n-boot", "20"],
    "steer": ["--layers", "1,2", "--gammas", "-1,1", "--n-vectors", "3"],
    "inspect-items": ["--layers", "1,2", "--top-k", "2"],
}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every visible file below ``folder`` with its bytes (lock files are hidden and change by design)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


def run(stage: str, model: Path | str, data: Path, out: Path, *extra: str) -> int:
    args = [stage, "-m", str(model), "-d", "jsonl", "--data-dir", str(data), "-o", str(out)]
    return main([*args, "--batch-size", "4", *OPTIONS[stage], *extra])


def refused(capsys: pytest.CaptureFixture[str], code: int, *words: str) -> str:
    """Assert a refusal: exit 2, one ``error:`` line naming each of ``words``, no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def write_jsonl(folder: Path, change: dict[tuple[str, int], str] | None = None) -> Path:
    """The toy set as jsonl files; ``change`` rewrites the question of (language, row) keys."""
    folder.mkdir(parents=True, exist_ok=True)
    for lang, rows in QUESTIONS.items():
        with open(folder / f"{lang}.jsonl", "w", encoding="utf-8") as fh:
            for k, (q, c, g) in enumerate(rows):
                q = (change or {}).get((lang, k), q)
                fh.write(json.dumps({"id": f"q{k}", "question": q, "choices": c, "answer": g}) + "\n")
    return folder


def shard_table(out: Path, stage: str) -> pd.DataFrame:
    return pd.read_parquet(out / TABLES[stage])


@pytest.fixture(scope="module")
def other_model(tiny_llama_dir: Path) -> Path:
    """A second model of the same depth as ``saved_model`` (4 blocks): a different fingerprint only."""
    return tiny_llama_dir


# -- case 1: another model, template or dtype into the same folder ---------------------------------------
@pytest.mark.parametrize("stage", list(TABLES))
def test_another_model_template_or_dtype_is_refused(
    stage: str,
    saved_model: Path,
    other_model: Path,
    toy_jsonl_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    assert run(stage, saved_model, toy_jsonl_dir, out) == 0
    before = snapshot(out)
    assert any(k.startswith(TABLES[stage] + "/") for k in before)
    capsys.readouterr()

    def no_load(*args: object, **kw: object) -> None:
        raise AssertionError("a refused folder must not wait for a model to load")

    monkeypatch.setattr("crosslens.models.loading.load_model", no_load)
    refused(capsys, run(stage, other_model, toy_jsonl_dir, out), "model", str(other_model))
    refused(capsys, run(stage, saved_model, toy_jsonl_dir, out, "--template", "mmmlu"), "template")
    refused(capsys, run(stage, saved_model, toy_jsonl_dir, out, "--dtype", "bfloat16"), "dtype")
    assert snapshot(out) == before
    monkeypatch.undo()
    assert run(stage, saved_model, toy_jsonl_dir, out) == 0  # the same command resumes: nothing changes
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k.endswith(".parquet")} == {
        k: v for k, v in before.items() if k.endswith(".parquet")
    }


# -- case 2: steering vectors of another model, and reruns with more languages or layers ----------------
def test_vectors_of_another_model_are_refused(
    saved_model: Path, other_model: Path, toy_jsonl_dir: Path, tmp_path: Path, capsys
) -> None:
    from crosslens.data.registry import load_dataset
    from crosslens.models.loading import load_model
    from crosslens.stages.steering.stage import VECTORS_FILE, steer_stage

    out = tmp_path / "out"
    ds = load_dataset("jsonl", data_dir=toy_jsonl_dir)
    stage = steer_stage(load_model(str(saved_model)), ds, out, ds.languages, [1, 2], [-1, 1], n_vectors=3)
    stage.begin()  # what a run killed right after saving the vectors leaves: vectors, no steering rows
    assert (out / VECTORS_FILE).is_file() and not (out / "steer").exists()
    before = snapshot(out)
    capsys.readouterr()
    line = refused(capsys, run("steer", other_model, toy_jsonl_dir, out), VECTORS_FILE, "model")
    assert "steering vectors" in line
    assert snapshot(out) == before


def test_steering_extends_to_more_languages_and_layers(
    saved_model: Path, toy_jsonl_dir: Path, tmp_path: Path
) -> None:
    from crosslens.stages.steering.stage import VECTORS_FILE, SteeringVectors

    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert run("steer", saved_model, toy_jsonl_dir, out, "--languages", "en,de") == 0
    first = {k: v for k, v in snapshot(out).items() if k.startswith("steer/")}
    v1 = SteeringVectors.load(out / VECTORS_FILE)
    wider = ["--languages", "en,de,zh", "--layers", "1,2,3", "--gammas", "-1,1,2"]
    assert run("steer", saved_model, toy_jsonl_dir, out, *wider) == 0  # 0.1: KeyError 'zh' / KeyError 3
    after = snapshot(out)
    assert all(after[k] == v for k, v in first.items())  # old shards untouched
    v2 = SteeringVectors.load(out / VECTORS_FILE)
    assert v2.get("de", 1).equal(v1.get("de", 1)) and v2.has("zh", 3) and v2.has("de", 3)
    assert run("steer", saved_model, toy_jsonl_dir, fresh, *wider) == 0
    keys = ["language", "item_id", "layer", "gamma"]
    a = shard_table(out, "steer").sort_values(keys).reset_index(drop=True)
    b = shard_table(fresh, "steer").sort_values(keys).reset_index(drop=True)
    assert (
        not a.duplicated(keys).any() and len(a) == len(b) == 4 * 3 * 12
    )  # items x languages x (3 layers x 4 gammas)
    pd.testing.assert_frame_equal(a[keys + ["pred"]], b[keys + ["pred"]])
    assert (
        a["label_logprobs"].explode().astype(float) - b["label_logprobs"].explode().astype(float)
    ).abs().max() < 1e-4
    s1 = json.loads((out / "steer_summary.json").read_text())
    s2 = json.loads((fresh / "steer_summary.json").read_text())
    assert [(s["layer"], s["gamma"]) for s in s1["settings"]] == [
        (s["layer"], s["gamma"]) for s in s2["settings"]
    ]
    # A narrower rerun reads the subset: nothing is written, the summary covers only what was asked.
    before = {k: v for k, v in snapshot(out).items() if k.startswith("steer/")}
    assert run("steer", saved_model, toy_jsonl_dir, out, "--languages", "en,de") == 0
    assert {k: v for k, v in snapshot(out).items() if k.startswith("steer/")} == before
    narrow = json.loads((out / "steer_summary.json").read_text())
    assert {(s["layer"], s["gamma"]) for s in narrow["settings"]} == {
        (x, g) for x in (1, 2) for g in (-1, 0, 1)
    }
    assert set(narrow["unsteered_accuracy"]) == {"de"}


@pytest.mark.parametrize("stage", ["eval", "lens", "latent"])
def test_more_languages_or_layers_extend(
    stage: str, saved_model: Path, toy_jsonl_dir: Path, tmp_path: Path
) -> None:
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert run(stage, saved_model, toy_jsonl_dir, out, "--languages", "en,de") == 0
    first = {k: v for k, v in snapshot(out).items() if k.startswith(TABLES[stage] + "/")}
    more = ["--languages", "en,de,zh"] + (["--layers", "1,2,4"] if stage in ("lens", "latent") else [])
    assert run(stage, saved_model, toy_jsonl_dir, out, *more) == 0
    assert all(snapshot(out)[k] == v for k, v in first.items())
    assert run(stage, saved_model, toy_jsonl_dir, fresh, *more) == 0
    a, b = shard_table(out, stage), shard_table(fresh, stage)
    keys = [c for c in ("language", "item_id", "layer", "form", "choice", "lens", "position") if c in a]
    assert len(a) == len(b) and not a.duplicated(keys).any()
    summary = {"eval": "summary.json"}.get(stage, f"{stage}_summary.json")
    s = json.loads((out / summary).read_text())
    assert set(s["languages"]) == {"en", "de", "zh"}
    if stage != "eval":
        assert s["layers"] == [1, 2, 4]


def test_pca_extends_to_more_layers_and_refuses_other_languages(
    saved_model: Path, toy_jsonl_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    assert run("pca", saved_model, toy_jsonl_dir, out) == 0
    first = {k: v for k, v in snapshot(out).items() if k.startswith("pca/")}
    assert run("pca", saved_model, toy_jsonl_dir, out, "--layers", "1,2,3") == 0
    assert all(snapshot(out)[k] == v for k, v in first.items())
    summary = json.loads((out / "pca_summary.json").read_text())
    assert summary["layers"] == [1, 2, 3]
    assert sorted(set(Store(out).read("pca")["layer"])) == [1, 2, 3]
    before = snapshot(out)
    capsys.readouterr()
    refused(capsys, run("pca", saved_model, toy_jsonl_dir, out, "--languages", "en,de"), "languages")
    assert snapshot(out) == before


def test_inspect_extends_to_more_languages_and_layers_and_refuses_another_top_k(
    saved_model: Path, toy_jsonl_dir: Path, tmp_path: Path, capsys
) -> None:
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert run("inspect-items", saved_model, toy_jsonl_dir, out, "--languages", "en,de") == 0
    first = {k: v for k, v in snapshot(out).items() if k.startswith("inspect/")}
    more = ["--languages", "en,de,zh", "--layers", "1,2,4"]
    assert run("inspect-items", saved_model, toy_jsonl_dir, out, *more) == 0
    assert all(snapshot(out)[k] == v for k, v in first.items())
    assert run("inspect-items", saved_model, toy_jsonl_dir, fresh, *more) == 0
    keys = ["language", "item_id", "lens", "layer", "position", "rank"]
    a, b = (shard_table(f, "inspect-items").sort_values(keys, ignore_index=True) for f in (out, fresh))
    assert not a.duplicated(keys).any()
    pd.testing.assert_frame_equal(a, b)
    s = json.loads((out / "inspect_summary.json").read_text())
    assert s["languages"] == ["en", "de", "zh"] and s["layers"] == [1, 2, 4]
    before = snapshot(out)
    capsys.readouterr()
    refused(capsys, run("inspect-items", saved_model, toy_jsonl_dir, out, "--top-k", "3"), "top_k")
    assert snapshot(out) == before


def test_latent_extends_to_a_lens_kind_and_refuses_another_lens_or_token_table(
    saved_model: Path, toy_jsonl_dir: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows of each lens kind are rows of their own: a tuned lens extends a logit-lens folder. The same
    kind through another lens file, or another token -> language table, is refused."""
    from dataclasses import replace

    import torch

    from crosslens.data.token_languages import token_languages
    from crosslens.lenses.lens import LensInfo, TunedLens, model_identity
    from crosslens.models.loading import load_model

    def saved_lens(seed: int) -> Path:
        lm = load_model(str(saved_model))  # the model the command reads with: its identity is the lens's
        lens = TunedLens(lm.anatomy, [1, 2], LensInfo(model_identity(lm), [1, 2]))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for lin in lens.translators.values():
                lin.bias.copy_(0.1 * torch.randn(lin.bias.shape, generator=g))
        lens.save(tmp_path / f"lens-{seed}")
        return tmp_path / f"lens-{seed}"

    out = tmp_path / "out"
    assert run("latent", saved_model, toy_jsonl_dir, out) == 0
    first = {k: v for k, v in snapshot(out).items() if k.startswith("latent/")}
    tuned = ["--lens", "logit", "--lens", f"tuned:{saved_lens(0)}"]
    assert run("latent", saved_model, toy_jsonl_dir, out, *tuned) == 0
    assert all(snapshot(out)[k] == v for k, v in first.items())
    rows = shard_table(out, "latent")
    assert rows.groupby("lens").size().to_dict() == {"logit": 42, "tuned": 42}  # 7 items x 3 languages x 2
    assert json.loads((out / "latent_summary.json").read_text())["lenses"] == ["logit", "tuned"]
    before = snapshot(out)
    capsys.readouterr()
    refused(
        capsys, run("latent", saved_model, toy_jsonl_dir, out, "--lens", f"tuned:{saved_lens(1)}"), "lenses"
    )
    real = token_languages
    monkeypatch.setattr(
        "crosslens.stages.latent.stage.token_languages", lambda tok: replace(real(tok), method="other-rules")
    )
    refused(capsys, run("latent", saved_model, toy_jsonl_dir, out), "token_table", "other-rules")
    assert snapshot(out) == before


@pytest.mark.parametrize("stage", ["words", "inspect-items"])
def test_a_token_table_from_other_text_lists_is_refused(
    stage: str, saved_model: Path, toy_jsonl_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """The masses and tags read through the token -> language table depend on our bundled text lists as
    on wordfreq: a folder whose table was built from other lists is refused, naming the table."""
    out = tmp_path / "out"
    assert run(stage, saved_model, toy_jsonl_dir, out) == 0
    before = snapshot(out)
    capsys.readouterr()
    monkeypatch.setenv("CROSSLENS_CACHE", str(tmp_path / "cache"))  # the table rebuilt there, not in yours
    monkeypatch.setattr("crosslens.data.token_languages.text_lists_sha256", lambda: "0" * 64)
    refused(capsys, run(stage, saved_model, toy_jsonl_dir, out), "token_languages", "text_lists")
    assert snapshot(out) == before


# -- case 3: changed data under the same dataset name ---------------------------------------------------
# (the word tasks read no item of the dataset, only its name, languages and source: their own data,
# the word list, is refused when it changes by tests/test_words.py)
@pytest.mark.parametrize("stage", [s for s in TABLES if s != "words"])
def test_changed_data_under_the_same_name_is_refused(
    stage: str, saved_model: Path, tmp_path: Path, capsys
) -> None:
    good = write_jsonl(tmp_path / "good")
    # Same ids and answers, every German question changed: every stage reads some of them.
    good2 = write_jsonl(tmp_path / "good2", {("de", k): f"Frage {k}?" for k in range(len(QUESTIONS["de"]))})
    out = tmp_path / "out"
    assert run(stage, saved_model, good, out) == 0
    before = snapshot(out)
    capsys.readouterr()
    refused(capsys, run(stage, saved_model, good2, out), "data_source", str(good2))
    shutil.rmtree(good)
    good2.rename(good)  # the same --data-dir, new content: only the items' digests can tell
    refused(capsys, run(stage, saved_model, good, out), "different")
    assert snapshot(out) == before


# -- case 4: a changed item selection ---------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["eval", "lens", "latent"])
def test_larger_limit_extends_smaller_limit_reads_the_subset(
    stage: str, saved_model: Path, toy_jsonl_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    summary = {"eval": "summary.json"}.get(stage, f"{stage}_summary.json")
    assert run(stage, saved_model, toy_jsonl_dir, out, "--limit", "3") == 0
    first = {k: v for k, v in snapshot(out).items() if k.startswith(TABLES[stage] + "/")}
    assert run(stage, saved_model, toy_jsonl_dir, out, "--limit", "6") == 0  # 0.1: duplicate records
    assert all(snapshot(out)[k] == v for k, v in first.items())
    df = shard_table(out, stage)
    keys = [c for c in ("language", "item_id", "layer", "form", "choice", "lens", "position") if c in df]
    assert not df.duplicated(keys).any() and df["item_id"].nunique() == 6
    assert json.loads((out / summary).read_text())["n_items"] == 6
    shards = {k: v for k, v in snapshot(out).items() if k.startswith(TABLES[stage] + "/")}
    assert run(stage, saved_model, toy_jsonl_dir, out, "--limit", "2") == 0
    assert {k: v for k, v in snapshot(out).items() if k.startswith(TABLES[stage] + "/")} == shards
    assert json.loads((out / summary).read_text())["n_items"] == 2
    if stage == "eval":  # `crosslens metrics` recomputes the same summary: the recorded selection
        before = (out / summary).read_text()
        assert main(["metrics", str(out)]) == 0
        assert (out / summary).read_text() == before


@pytest.mark.parametrize("stage", ["pca", "steer"])
def test_another_limit_is_refused_where_items_are_sampled(
    stage: str, saved_model: Path, toy_jsonl_dir: Path, tmp_path: Path, capsys
) -> None:
    """PCA and steering draw a seeded sample of the selected items; another selection is another
    sample (another analysis, other vectors), refused before anything is written."""
    out = tmp_path / "out"
    assert run(stage, saved_model, toy_jsonl_dir, out, "--limit", "6") == 0
    before = snapshot(out)
    capsys.readouterr()
    refused(capsys, run(stage, saved_model, toy_jsonl_dir, out), "items")
    assert snapshot(out) == before


def test_experiment_with_a_larger_limit_extends_every_stage(saved_model: Path, tmp_path: Path) -> None:
    from crosslens.experiment.runner import run_experiment

    def config(limit: int) -> dict:
        return {
            "models": [str(saved_model)],
            "datasets": [{"name": "crosslens-mini", "languages": ["en", "de"], "limit": limit}],
            "layers": [1, 2],
            "pca": {"enabled": False},
            "batch_size": 8,
            "chunk_size": 4,
            "output": str(tmp_path / "runs"),
        }

    from crosslens.experiment.config import parse_config

    run_experiment(parse_config(config(6)), progress=False)
    folder = tmp_path / "runs" / saved_model.name / "crosslens-mini"
    first = snapshot(folder)
    run_experiment(parse_config(config(10)), progress=False)
    after = snapshot(folder)
    assert all(after[k] == v for k, v in first.items() if k.endswith(".parquet"))
    for name in ("summary.json", "lens_summary.json"):
        assert json.loads((folder / name).read_text())["n_items"] == 10
    records = pd.read_parquet(folder / "records")
    assert not records.duplicated(["language", "item_id"]).any() and len(records) == 20


# -- case 5: a folder without run.json ---------------------------------------------------------------------
@pytest.mark.parametrize("stage", list(TABLES))
def test_a_folder_without_run_json_still_refuses_another_model(
    stage: str, saved_model: Path, other_model: Path, toy_jsonl_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    assert run(stage, saved_model, toy_jsonl_dir, out) == 0
    (out / "run.json").unlink()
    before = snapshot(out)
    capsys.readouterr()
    refused(capsys, run(stage, other_model, toy_jsonl_dir, out), "model")
    assert snapshot(out) == before


# -- case 6: the same model by another path, or as a copy ---------------------------------------------
@pytest.mark.parametrize("stage", ["eval", "latent", "similarity", "neurons", "steer"])  # shards, artefacts
def test_the_same_model_by_another_path_or_as_a_copy_resumes(
    stage: str,
    saved_model: Path,
    other_model: Path,
    toy_jsonl_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A model is known by its content: a folder made with ``--model /abs/model`` resumes with
    ``./model`` and with a byte-identical copy elsewhere, reusing every shard and artefact (activations,
    vectors, neuron statistics); another model is still refused before it loads."""
    out = tmp_path / "out"
    assert run(stage, saved_model.resolve(), toy_jsonl_dir, out) == 0
    files = {k: v for k, v in snapshot(out).items() if k.endswith((".parquet", ".safetensors"))}
    copy = tmp_path / "elsewhere" / "copy-of-the-model"
    shutil.copytree(saved_model, copy)
    monkeypatch.chdir(saved_model.parent)
    for spec in (f"./{saved_model.name}", copy):
        assert run(stage, spec, toy_jsonl_dir, out) == 0, capsys.readouterr().err
        assert {k: v for k, v in snapshot(out).items() if k.endswith((".parquet", ".safetensors"))} == files
    capsys.readouterr()
    monkeypatch.setattr("crosslens.models.loading.load_model", lambda *a, **k: pytest.fail("model loaded"))
    before = snapshot(out)
    line = refused(capsys, run(stage, other_model, toy_jsonl_dir, out), "model_id", str(other_model))
    assert str(saved_model.resolve()) in line  # the spec it was made with, beside its identity
    assert snapshot(out) == before


def test_fingerprints_compare_models_by_identity_and_older_ones_by_spec() -> None:
    """The compatibility rule (docs/evaluation.md): where both fingerprints record the model's content
    identity the spec is a label; a fingerprint written before identities is compared by its spec."""
    from crosslens.store import describe_mismatch, fingerprint_diff

    now = {"model": "./m", "model_id": "folder:sha256:aa", "revision": "local:1", "dtype": "float32"}
    assert fingerprint_diff({**now, "model": "/abs/m"}, now) == []
    assert fingerprint_diff({**now, "model_id": "folder:sha256:bb"}, now) == ["model_id"]
    assert "model: '/x' -> './m'" in describe_mismatch(
        {**now, "model": "/x", "model_id": "folder:sha256:bb"}, now
    )
    before = {k: v for k, v in now.items() if k != "model_id"}
    assert fingerprint_diff(before, now) == []  # written before identities, under the same spec: reused
    assert fingerprint_diff({**before, "model": "/abs/m"}, now) == ["model"]
    assert fingerprint_diff({**before, "revision": "local:2"}, now) == ["revision"]
    # A GGUF model's older revision is its file's hash, i.e. its identity: the spec is a label there too.
    gguf = {"model": "gguf:/a/m.gguf", "model_id": "gguf:sha256:cc", "revision": "sha256:cc"}
    assert fingerprint_diff({"model": "gemma-3-270m", "revision": "sha256:cc"}, gguf) == []
    other = {"model": "gemma-3-270m", "revision": "sha256:dd"}
    assert fingerprint_diff(other, gguf) == ["model_id", "revision"]


# -- kill -9 between the vectors and the first steering unit ---------------------------------------------
def test_run_killed_between_vectors_and_first_steering_unit_resumes(
    saved_model: Path, tmp_path: Path
) -> None:
    from crosslens.experiment.runner import run_experiment
    from crosslens.stages.steering.stage import VECTORS_FILE

    def config(out: Path) -> Path:
        path = tmp_path / f"{out.name}.yaml"
        data = {
            "models": [str(saved_model)],
            "datasets": [{"name": "crosslens-mini", "languages": ["en", "de", "zh"], "limit": 10}],
            "layers": [1, 2],
            "steering": {"layers": [2, 3], "gammas": [-1, 1], "n_vectors": 3},
            "pca": {"n_items": 4},
            "batch_size": 8,
            "chunk_size": 4,
            "output": str(out),
        }
        path.write_text(yaml.safe_dump(data))
        return path

    killed = config(tmp_path / "killed")
    script = (
        "import os, signal, sys\n"
        "from crosslens.stages.steering import stage as steering\n"
        "prepare = steering.SteerStage.prepare\n"
        "def die(self):\n"
        "    prepare(self)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "steering.SteerStage.prepare = die\n"
        "from crosslens.experiment.runner import run_experiment\n"
        "run_experiment(sys.argv[1], progress=False)\n"
    )
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(killed)], env=env, capture_output=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    folder = Path(saved_model.name) / "crosslens-mini"
    assert (tmp_path / "killed" / folder / VECTORS_FILE).is_file()
    assert not (tmp_path / "killed" / folder / "steer").exists()

    run_experiment(killed, progress=False)  # resume
    whole = config(tmp_path / "whole")
    run_experiment(whole, progress=False)
    for name in ("summary.json", "lens_summary.json", "steer_summary.json"):
        a = json.loads((tmp_path / "killed" / folder / name).read_text())
        b = json.loads((tmp_path / "whole" / folder / name).read_text())
        assert a == b, name
    keys = ["language", "item_id", "layer", "gamma"]
    a = pd.read_parquet(tmp_path / "killed" / folder / "steer").sort_values(keys).reset_index(drop=True)
    b = pd.read_parquet(tmp_path / "whole" / folder / "steer").sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


# -- one model spec --------------------------------------------------------------------------------------
def test_model_spec_is_decided_in_one_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ModelSpec.parse("gemma-3-270m").kind == "alias"
    gguf = ModelSpec.parse("gguf:~/m/model-q4.gguf")
    assert gguf.kind == "gguf" and gguf.location == str(Path("~/m/model-q4.gguf").expanduser())
    assert gguf.slug == "model-q4"
    hub = ModelSpec.parse("google/gemma-2-2b@abc123")
    assert (hub.kind, hub.location, hub.revision, hub.slug) == ("hub", "google/gemma-2-2b", "abc123",
                                                               "google--gemma-2-2b@abc123")  # fmt: skip
    assert ModelSpec.parse("./not/there").kind == "local"  # written as a path: never a Hub id
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert ModelSpec.parse("org/name").kind == "local"  # an existing folder wins, as in transformers
    assert ModelSpec.parse("org/other").kind == "hub"
    assert ModelSpec.parse("gemma-3-27m").kind == "name"
    assert "did you mean 'gemma-3-270m'" in str(ModelSpec.parse("gemma-3-27m").unknown())
    with pytest.raises(ModelLoadError, match="gguf:PATH"):
        ModelSpec.parse("gguf:")


def test_shard_names_are_injective_in_the_language_code() -> None:
    assert unit_name("x", "pt BR", 0, ["a"]) != unit_name("x", "pt-BR", 0, ["a"])
    assert unit_name("x", "de", 0, ["a"], [1]) != unit_name("x", "de", 0, ["a"], [2])


def test_api_cli_and_config_expose_the_same_options() -> None:
    import typer.main

    import crosslens
    from crosslens.cli import app
    from crosslens.data.options import DatasetConfig
    from crosslens.experiment.config import ExperimentConfig

    for name in ("run_experiment", "load_config", "write_report", "ModelSpec", "stage_defs"):
        assert getattr(crosslens, name) is not None
    for name, stage in (("run_inspect", "inspect"), ("inspect_prompt", "inspect"), ("run_words", "words"),
                        ("run_latent", "latent"), ("run_divergence", "divergence")):  # fmt: skip
        assert getattr(crosslens, name) is getattr(import_module(f"crosslens.stages.{stage}.stage"), name)
    assert set(crosslens.__all__) >= {"run_inspect", "inspect_prompt", "run_words", "run_latent"}
    commands = {c.name: c for c in typer.main.get_command(app).commands.values()}
    params = {
        name: {o for p in cmd.params for o in p.opts + p.secondary_opts} for name, cmd in commands.items()
    }
    assert {"--limit", "--strict", "--pivot-file", "--pivot"} <= params["pca"]
    for cmd in ("eval", "lens", "pca", "steer", "similarity", "neurons", "words"):
        assert {"--pivot-file", "--pivot", "--strict", "--limit", "--template", "--split"} <= params[cmd], cmd
        assert {"--seed", "--batch-size", "--device", "--dtype", "--model", "--out"} <= params[cmd], cmd
    assert {"--no-cloze", "--padding-side", "--num-fewshot", "--cloze-norm"} <= params["eval"]
    assert "--num-fewshot" not in params["pca"] and "--cloze-norm" in params["steer"]
    assert {"cloze", "padding_side"} <= set(ExperimentConfig.model_fields)
    assert {"pivot", "pivot_file", "strict", "limit", "template", "split"} <= set(DatasetConfig.model_fields)


def test_tiny_models_share_a_depth() -> None:
    """The model-mixing tests above rely on two different models with the same number of blocks."""
    assert tiny_model("gemma3").anatomy.n_layers == tiny_model("llama").anatomy.n_layers == 4


def test_experiment_refuses_another_model_in_the_same_folder_before_loading(
    saved_model: Path, other_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two model folders with the same name map to one result folder: the second run is refused."""
    from crosslens.experiment.config import ExperimentConfig, parse_config
    from crosslens.experiment.runner import run_experiment
    from crosslens.store import RunMismatchError

    a, b = tmp_path / "a" / "model", tmp_path / "b" / "model"
    shutil.copytree(saved_model, a)
    shutil.copytree(other_model, b)

    def config(model: Path) -> ExperimentConfig:
        data = {
            "models": [str(model)],
            "datasets": [{"name": "crosslens-mini", "languages": ["en", "de"], "limit": 4}],
            "layers": [1, 2],
            "pca": {"n_items": 3},
            "output": str(tmp_path / "runs"),
        }
        return parse_config(data)

    run_experiment(config(a), progress=False)
    before = snapshot(tmp_path / "runs")
    monkeypatch.setattr(ExperimentConfig, "load", lambda self, spec: pytest.fail("model loaded"))
    with pytest.raises(RunMismatchError, match="model"):
        run_experiment(config(b), progress=False)
    assert snapshot(tmp_path / "runs") == before


def test_experiment_with_steering_refuses_another_limit_before_writing(
    saved_model: Path, tmp_path: Path
) -> None:
    """0.1 evaluated the new items, wrote a summary over the wrong ones, then crashed in steering.
    Now every stage is checked first: steering's vector sample differs, so nothing is written."""
    from crosslens.experiment.config import parse_config
    from crosslens.experiment.runner import run_experiment
    from crosslens.store import RunMismatchError

    def config(limit: int):
        return parse_config(
            {
                "models": [str(saved_model)],
                "datasets": [{"name": "crosslens-mini", "languages": ["en", "de"], "limit": limit}],
                "layers": [1, 2],
                "steering": {"layers": [2], "gammas": [-1, 1], "n_vectors": 3},
                "pca": {"enabled": False},
                "chunk_size": 4,
                "output": str(tmp_path / "runs"),
            }
        )

    run_experiment(config(8), progress=False)
    before = snapshot(tmp_path / "runs")  # also experiment.json and the report: they describe the first run
    with pytest.raises(RunMismatchError, match="vector_items"):
        run_experiment(config(12), progress=False)
    assert snapshot(tmp_path / "runs") == before


def test_dtype_auto_is_the_hardwares_dtype_and_recorded_concretely(
    saved_model: Path, toy_jsonl_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """``--dtype auto`` is bfloat16 where the device multiplies it, else float32; the folder records the
    concrete dtype, so the same command on a machine of the other kind is refused, never mixed."""
    import torch

    import crosslens.models.devices as models
    import crosslens.models.loading as loading
    from crosslens.experiment.config import ExperimentConfig

    for units, want in ((False, torch.float32), (True, torch.bfloat16)):
        monkeypatch.setattr(models, "bf16_units", lambda device, units=units: units)
        assert loading.resolve_dtype("auto") == want
        assert models.dtype_name("auto", "cpu") == str(want).removeprefix("torch.")
        config = {"models": ["x"], "datasets": [{"name": "jsonl"}], "dtype": "auto"}
        assert ExperimentConfig.model_validate(config).dtype == str(want).removeprefix("torch.")
    assert loading.resolve_dtype("float16") == torch.float16  # an explicit dtype is never replaced

    monkeypatch.setattr(models, "bf16_units", lambda device: False)
    out = tmp_path / "out"
    assert run("eval", saved_model, toy_jsonl_dir, out, "--dtype", "auto") == 0
    assert (
        json.loads((out / "run.json").read_text())["stages"]["records"]["fingerprint"]["dtype"] == "float32"
    )
    before = snapshot(out)
    assert run("eval", saved_model, toy_jsonl_dir, out, "--dtype", "float32") == 0  # the same folder
    assert snapshot(out) == before
    capsys.readouterr()
    monkeypatch.setattr(models, "bf16_units", lambda device: True)
    monkeypatch.setattr("crosslens.models.loading.load_model", lambda *a, **k: pytest.fail("loaded"))
    refused(capsys, run("eval", saved_model, toy_jsonl_dir, out, "--dtype", "auto"), "dtype", "bfloat16")
    refused(
        capsys, run("eval", saved_model, toy_jsonl_dir, out, "--dtype", "bf16-mixed"), "dtype", "bf16-mixed"
    )
    assert snapshot(out) == before


LEGACY = Path(__file__).parent / "data" / "folder_before_layout"


#: Summary keys added since the folder was written (computed from what it holds; nothing else may change):
#: the neurons stage's drawn neuron ids, its controls against the null, their count, the cloze normalisation.
ADDED = {"neurons_summary.json": {"neurons", "controls", "cloze_norm"}}


def _same_summary(old: object, new: object, path: str = "", added: set[str] = frozenset()) -> None:
    """Equal JSON, key for key (``added``: keys the new one may have besides); figure paths name the
    folder they were drawn in: only their names count."""
    if isinstance(old, dict):
        assert isinstance(new, dict) and old.keys() <= new.keys() and not new.keys() - old.keys() - added, (
            f"{path}: {sorted(old)} != {sorted(new)}"
        )
        for k in old:
            _same_summary(old[k], new[k], f"{path}.{k}", added)
    elif isinstance(old, list):
        assert isinstance(new, list) and len(old) == len(new), path
        for i, (a, b) in enumerate(zip(old, new)):
            _same_summary(a, b, f"{path}[{i}]", added)
    elif isinstance(old, str) and old.endswith(".png"):
        assert isinstance(new, str) and Path(old).name == Path(new).name, path
    elif isinstance(old, float) and isinstance(new, float):
        assert old == pytest.approx(new, rel=1e-12, abs=1e-12, nan_ok=True), path
    else:
        assert old == new, f"{path}: {old!r} != {new!r}"


def test_a_folder_written_before_the_layout_is_reused(tmp_path: Path) -> None:
    """tests/data/folder_before_layout (crosslens before the stage folders): the same calls today
    reuse every shard and artefact as it is (fingerprints unchanged: written before content
    identities, they are compared by spec) and give the same summaries. The only files added are the
    neuron sets the folder never saved (``neuron_sets/``, drawn from its own statistics and seed)."""
    from crosslens.data.registry import load_dataset
    from crosslens.scoring.options import EvalOptions
    from crosslens.stages.evaluate.stage import evaluate
    from crosslens.stages.lens.stage import run_lens
    from crosslens.stages.neurons.stage import run_neurons
    from crosslens.stages.pca.stage import run_pca
    from crosslens.stages.similarity.stage import run_similarity
    from crosslens.stages.steering.stage import run_steering

    out = tmp_path / "folder"
    shutil.copytree(LEGACY, out)
    data = {
        p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.suffix in (".parquet", ".safetensors")
    }
    old = {p.name: json.loads(p.read_text()) for p in out.glob("*_summary.json")} | {
        "summary.json": json.loads((out / "summary.json").read_text())
    }
    lm = tiny_model("gemma3")
    ds = load_dataset("crosslens-mini", ["en", "de", "zh"]).limit(8)
    opts = EvalOptions(batch_size=8, chunk_size=4)
    evaluate(lm, ds, out, opts=opts)
    run_lens(lm, ds, out, layers=[2, 4], opts=opts)
    run_pca(lm, ds, out, layers=[2, 4], n_items=6)
    run_similarity(lm, ds, out, layers=[2, 4], n_items=6, n_boot=20)
    run_neurons(lm, ds, out, ablate=["zh"], n_text_items=3, top_rate=0.05, n_boot=20, opts=opts)
    run_steering(lm, ds, out, ds.languages, [2], [-1.0, 1.0], n_vectors=3, opts=opts, controls=1)
    now = {
        p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.suffix in (".parquet", ".safetensors")
    }
    assert {p: now[p] for p in data} == data, "a shard or artefact was written again"
    assert {p.parts[0] for p in set(now) - set(data)} == {"neuron_sets"}
    for name, summary in old.items():
        _same_summary(summary, json.loads((out / name).read_text()), name, ADDED.get(name, set()))


# -- divergence: computed from the folder's lens readings and records, never from other ones ---------------
def _divergence(model: Path, data: Path, out: Path, *extra: str) -> int:
    args = ["divergence", "-m", str(model), "-d", "jsonl", "--data-dir", str(data), "-o", str(out)]
    return main([*args, "--layers", "1,2", "--n-boot", "20", *extra])


@pytest.fixture(scope="module")
def readings(saved_model: Path, toy_jsonl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the tiny model's records and logit-lens readings of the toy set (layers 1, 2)."""
    out = tmp_path_factory.mktemp("readings") / "out"
    assert run("eval", saved_model, toy_jsonl_dir, out) == 0
    assert run("lens", saved_model, toy_jsonl_dir, out) == 0
    return out


def test_divergence_refuses_readings_of_another_model_template_or_dtype(
    readings: Path, saved_model: Path, other_model: Path, toy_jsonl_dir: Path, tmp_path: Path, capsys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    out = tmp_path / "out"
    shutil.copytree(readings, out)
    monkeypatch.setattr("crosslens.models.loading.load_model", lambda *a, **k: pytest.fail("a model loaded"))
    assert _divergence(saved_model, toy_jsonl_dir, out) == 0
    before = snapshot(out)
    capsys.readouterr()
    refused(capsys, _divergence(other_model, toy_jsonl_dir, out), "model", str(other_model))
    refused(capsys, _divergence(saved_model, toy_jsonl_dir, out, "--template", "mmmlu"), "template")
    refused(capsys, _divergence(saved_model, toy_jsonl_dir, out, "--dtype", "bfloat16"), "dtype")
    # another rule over the same readings is another analysis: refused, not mixed
    refused(capsys, _divergence(saved_model, toy_jsonl_dir, out, "--agreement", "rank"), "agreement")
    assert snapshot(out) == before
    # readings made again with another prompt than the records: refused before anything is written
    shutil.rmtree(out / "lens")
    monkeypatch.undo()
    assert run("lens", saved_model, toy_jsonl_dir, out, "--num-fewshot", "1") == 0
    before = snapshot(out)
    capsys.readouterr()
    refused(capsys, _divergence(saved_model, toy_jsonl_dir, out), "different prompts", "fewshot")
    assert snapshot(out) == before
    (out / "run.json").unlink()  # a folder without run.json refuses the same way
    refused(capsys, _divergence(other_model, toy_jsonl_dir, out), "model")


def test_divergence_extends_to_more_items_and_reads_a_subset(
    saved_model: Path, toy_jsonl_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    for limit in ("3", "6"):
        for stage in ("eval", "lens"):
            assert run(stage, saved_model, toy_jsonl_dir, out, "--limit", limit) == 0
        assert _divergence(saved_model, toy_jsonl_dir, out, "--limit", limit) == 0
        if limit == "3":
            first = {k: v for k, v in snapshot(out).items() if k.startswith("divergence/")}
    assert all(snapshot(out)[k] == v for k, v in first.items())
    rows = Store(out).read("divergence")
    assert len(rows) == 12 and not rows.duplicated(["language", "item_id"]).any()  # 6 items x de, zh
    assert (
        json.loads((out / "divergence_summary.json").read_text())["n_rows"]
        + json.loads((out / "divergence_summary.json").read_text())["identical"]
        == 12
    )
    shards = {k: v for k, v in snapshot(out).items() if k.startswith("divergence/")}
    assert _divergence(saved_model, toy_jsonl_dir, out, "--limit", "2") == 0
    assert {k: v for k, v in snapshot(out).items() if k.startswith("divergence/")} == shards
    summary = json.loads((out / "divergence_summary.json").read_text())
    assert summary["n_rows"] + summary["identical"] == 4


def test_divergence_refuses_changed_data(
    readings: Path, saved_model: Path, toy_jsonl_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    shutil.copytree(readings, out)
    good = tmp_path / "good"
    shutil.copytree(toy_jsonl_dir, good)
    changed = write_jsonl(
        tmp_path / "changed", {("de", k): f"Frage {k}?" for k in range(len(QUESTIONS["de"]))}
    )
    before = snapshot(out)
    capsys.readouterr()
    refused(capsys, _divergence(saved_model, changed, out), "data_source", str(changed))
    shutil.rmtree(good)
    changed.rename(good)  # the same --data-dir, new content: only the items' digests can tell
    for folder in ("lens", "records"):  # the readings record the folder they were read from
        for path in (out / folder).glob("*.parquet"):
            meta = pq.read_schema(path).metadata
            info = json.loads(meta[b"crosslens"])
            info["fingerprint"]["data_source"] = str(good)
            table = pq.read_table(path).replace_schema_metadata({**meta, b"crosslens": json.dumps(info)})
            pq.write_table(table, path)
    before = snapshot(out)
    refused(capsys, _divergence(saved_model, good, out), "different data")
    assert snapshot(out) == before
