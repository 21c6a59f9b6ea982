"""The experiment runner: end to end on a tiny model, idempotent re-runs, and kill-and-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import crosslens.console
from conftest import tiny_model
from crosslens.experiment.config import parse_config
from crosslens.experiment.runner import run_experiment
from crosslens.models.loading import ModelSpec

SUMMARIES = (
    "summary.json",
    "lens_summary.json",
    "divergence_summary.json",
    "pca_summary.json",
    "similarity_summary.json",
    "neurons_summary.json",
    "steer_summary.json",
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(out: Path, model: str, limit: int = 12, chunk_size: int = 6) -> dict:
    return {
        "models": [model],
        "datasets": [{"name": "crosslens-mini", "languages": ["en", "de", "zh", "ru"], "limit": limit}],
        "layers": [1, 2, 4],
        "steering": {"layers": [2, 3], "gammas": [-1, 1], "n_vectors": 4},
        "pca": {"n_items": 6},
        "similarity": {"n_boot": 50},
        "neurons": {"ablate": ["zh"], "n_text_items": 4, "top_rate": 0.05, "n_boot": 50},
        "divergence": {"n_boot": 50},
        "batch_size": 8,
        "chunk_size": chunk_size,
        "output": str(out),
    }


def _summaries(folder: Path) -> dict[str, dict]:
    out = {}
    for name in SUMMARIES:
        data = json.loads((folder / name).read_text())
        data.pop("figure", None)  # the figures' paths name the folder
        data.pop("figures", None)
        out[name] = data
    return out


def _files(root: Path) -> dict[str, int]:
    """Every file holding model outputs (shards, activations, vectors) with its modification time in ns."""
    return {
        p.relative_to(root).as_posix(): p.stat().st_mtime_ns
        for p in root.rglob("*")
        if p.suffix == ".safetensors"
        or p.parent.name in ("records", "lens", "divergence", "steer", "similarity", "ablation", "neurons")
    }


def test_end_to_end_then_rerun_skips_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lm = tiny_model("gemma3")
    config = parse_config(_config(tmp_path / "runs", lm.spec), check_models=False)

    advanced: list[float] = []
    totals: list[float] = []

    class CountingProgress(crosslens.console.Progress):  # the one display: its bar must reach exactly 100 %
        def add_task(self, description: str, total: float | None = None, **kw: object) -> int:
            totals.append(total or 0)
            return super().add_task(description, total=total, **kw)

        def advance(self, task_id: int, advance: float = 1) -> None:
            advanced.append(advance)
            super().advance(task_id, advance)

    monkeypatch.setattr(crosslens.console, "Progress", CountingProgress)
    report = run_experiment(config, progress=True, models={lm.spec: lm})
    assert totals == [sum(advanced)] and totals[0] > 0

    folder = tmp_path / "runs" / "tiny-gemma3" / "crosslens-mini"
    assert report == tmp_path / "runs" / "report.html"
    assert report.read_text().count("<img ") == 10
    assert (tmp_path / "runs" / "experiment.json").is_file()
    first = _summaries(folder)
    assert first["summary.json"]["languages"] == ["de", "en", "ru", "zh"]
    assert first["lens_summary.json"]["layers"] == [1, 2, 4]
    assert first["divergence_summary.json"]["layers"] == [1, 2, 4]
    assert first["pca_summary.json"]["layers"] == [1, 2, 4]
    assert first["similarity_summary.json"]["layers"] == [1, 2, 4]
    assert list(first["neurons_summary.json"]["effects"]) == ["zh"]
    assert {s["layer"] for s in first["steer_summary.json"]["settings"]} == {2, 3}
    files = _files(tmp_path / "runs")
    assert any(name.startswith("tiny-gemma3/crosslens-mini/records/") for name in files)

    run_experiment(config, progress=False, models={lm.spec: lm})
    assert _files(tmp_path / "runs") == files, "a finished experiment must not recompute anything"
    assert _summaries(folder) == first


def test_english_is_always_evaluated(tmp_path: Path) -> None:
    lm = tiny_model("gemma3")
    data = _config(tmp_path / "runs", lm.spec, limit=8)
    data["datasets"][0]["languages"] = ["de", "zh"]
    data.update(steering=None, neurons=None, similarity=None, divergence=None, pca={"enabled": False})
    data["lens"] = {"enabled": False}
    run_experiment(parse_config(data, check_models=False), progress=False, models={lm.spec: lm})
    summary = json.loads((tmp_path / "runs" / "tiny-gemma3" / "crosslens-mini" / "summary.json").read_text())
    assert summary["languages"] == ["de", "en", "zh"]
    assert not (tmp_path / "runs" / "tiny-gemma3" / "crosslens-mini" / "lens").exists()


def test_model_slugs() -> None:
    def slug(spec: str) -> str:
        return ModelSpec.parse(spec).slug

    assert slug("google/gemma-2-2b") == "google--gemma-2-2b"
    assert slug("gemma-3-270m") == "gemma-3-270m"
    assert slug("gguf:/x/y/model-q4.gguf") == "model-q4"
    assert slug("/tmp/some/folder/") == "folder"


def test_kill_and_resume_gives_the_uninterrupted_results(saved_model: Path, tmp_path: Path) -> None:
    killed_cfg = tmp_path / "killed.yaml"
    killed_cfg.write_text(
        yaml.safe_dump(_config(tmp_path / "killed", str(saved_model), limit=12, chunk_size=2))
    )
    records = tmp_path / "killed" / saved_model.name / "crosslens-mini" / "records"
    script = (
        "import sys; from crosslens.experiment.runner import run_experiment; "
        "run_experiment(sys.argv[1], progress=False)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(killed_cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while not (records.is_dir() and any(p for p in records.glob("[!.]*.parquet"))):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no shard appeared"
            time.sleep(0.005)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (records.parent / "summary.json").exists()

    run_experiment(killed_cfg, progress=False)  # resume
    whole_cfg = tmp_path / "whole.yaml"
    whole_cfg.write_text(
        yaml.safe_dump(_config(tmp_path / "whole", str(saved_model), limit=12, chunk_size=2))
    )
    run_experiment(whole_cfg, progress=False)
    folder = Path(saved_model.name) / "crosslens-mini"
    assert _summaries(tmp_path / "killed" / folder) == _summaries(tmp_path / "whole" / folder)
