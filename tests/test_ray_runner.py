"""The Ray backend: the same records and summaries as the local one, a killed worker recovered.

A local Ray runtime (``ray.init(num_cpus=2)``) runs the tiny model saved as a local folder, so the
workers load it from disk as they would a real model on a cluster.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from crosslens.experiment.config import parse_config
from crosslens.experiment.ray import RayBackendError
from crosslens.experiment.runner import EXPERIMENT, run_experiment
from crosslens.store import Store, StoreBusyError
from test_runner import _config, _files, _summaries

ray = pytest.importorskip("ray")

TABLES = ("records", "lens", "latent", "divergence", "similarity", "ablation", "steer")
KEYS = ("language", "language_a", "language_b", "estimator", "pool", "item_id", "layer", "gamma", "form",
        "choice", "ablated", "neurons", "lens", "position")  # fmt: skip


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ray_config(out: Path, model: Path) -> dict:
    return _config(out, str(model), limit=12, chunk_size=2) | {
        "ray": {"workers_per_model": 2, "max_retries": 2},
        "latent": {"positions": "answer"},
    }


def _tables(folder: Path) -> dict[str, pd.DataFrame]:
    """Every table of a result folder in a canonical row order; no row may appear twice."""
    out = {}
    for table in TABLES:
        df = Store(folder).read(table)
        keys = [c for c in KEYS if c in df]
        assert len(df) > 0 and not df.duplicated(subset=keys).any(), f"{table}: empty or duplicated rows"
        out[table] = df.sort_values(keys).reset_index(drop=True)
    return out


def _assert_same_results(a: Path, b: Path) -> None:
    ta, tb = _tables(a), _tables(b)
    for table in TABLES:
        pd.testing.assert_frame_equal(ta[table], tb[table], check_exact=False, atol=1e-6)
    assert _same_json(_summaries(a), _summaries(b))


def _same_json(a: object, b: object) -> bool:
    """Equal JSON, floats to 1e-6 (workers and the test process may round differently)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        return all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        return all(_same_json(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-6, nan_ok=True)
        return True
    assert a == b
    return True


def _folder(root: Path, model: Path) -> Path:
    return root / model.name / "crosslens-mini"


@pytest.fixture(scope="module")
def local_reference(saved_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("local")
    run_experiment(parse_config(_ray_config(root, saved_model)), progress=False)
    return _folder(root, saved_model)


def test_ray_backend_writes_what_the_local_backend_writes(
    ray_runtime: None,
    saved_model: Path,
    local_reference: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative output root means the same folder to every worker
    config = parse_config(_ray_config(Path("."), saved_model))
    report = run_experiment(config, backend="ray", progress=False)
    report = tmp_path / report
    assert report.is_file() and report.read_text().count("<img ") == 12  # 9 + latent's two + divergence's one
    _assert_same_results(local_reference, _folder(tmp_path, saved_model))

    # Re-running resumes: nothing is recomputed, the summaries come out the same.
    files = _files(tmp_path)
    run_experiment(config, backend="ray", progress=False)
    assert _files(tmp_path) == files
    _assert_same_results(local_reference, _folder(tmp_path, saved_model))


def _worker_pids(busy_only: bool = False) -> set[int]:
    """Processes of ModelWorker actors (Ray titles them ``ray::ModelWorker[.method]``)."""
    pids = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            title = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::ModelWorker") and (not busy_only or "run_unit" in title):
            pids.add(int(proc.name))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds worker processes in /proc")
def test_a_worker_killed_mid_unit_is_replaced_and_its_unit_retried(
    ray_runtime: None, saved_model: Path, local_reference: Path, tmp_path: Path
) -> None:
    import os
    import signal

    records = _folder(tmp_path, saved_model) / "records"
    killed: list[int] = []
    seen: set[int] = set()

    def kill_one_busy_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            seen.update(_worker_pids())
            if records.is_dir() and any(records.glob("[!.]*.parquet")):
                for pid in _worker_pids(busy_only=True):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    break
            time.sleep(0.002)

    killer = threading.Thread(target=kill_one_busy_worker, daemon=True)
    killer.start()
    run_experiment(parse_config(_ray_config(tmp_path, saved_model)), backend="ray", progress=False)
    killer.join(timeout=5)
    assert killed, "no worker was caught running a unit"
    assert killed[0] in seen
    _assert_same_results(local_reference, _folder(tmp_path, saved_model))


def test_a_second_run_into_a_busy_output_root_is_refused(saved_model: Path, tmp_path: Path) -> None:
    config = parse_config(_ray_config(tmp_path, saved_model))
    with Store(tmp_path).lock(EXPERIMENT):  # a run in progress (this process stands in for it)
        with pytest.raises(StoreBusyError, match="busy"):
            run_experiment(config, progress=False)
        with pytest.raises(StoreBusyError, match="busy"):
            run_experiment(config, backend="ray", progress=False)
    assert not (tmp_path / saved_model.name).exists(), "the refused run must write nothing"


def test_missing_ray_is_one_clear_error(
    saved_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(RayBackendError, match=r"pip install 'crosslens\[ray\]'"):
        run_experiment(parse_config(_ray_config(tmp_path, saved_model)), backend="ray", progress=False)


def test_ray_runs_a_stage_and_a_lens_kind_registered_in_the_driver(
    ray_runtime: None, saved_model: Path, tmp_path: Path
) -> None:
    """The toy stage and lens of tests/toy_plugin.py, registered here only: Ray workers register
    them again from what the driver sends, and write what the local backend writes."""
    import toy_plugin
    from crosslens.lenses.kinds import register_lens, unregister_lens
    from crosslens.stages.registry import register, unregister
    from test_architecture import _config as toy_config

    cloudpickle = ray.cloudpickle  # Ray's own copy pickles what goes to the workers
    cloudpickle.register_pickle_by_value(toy_plugin)  # workers cannot import the tests folder
    register(toy_plugin.STAGE)
    register_lens(toy_plugin.LENS)
    try:
        for backend in ("local", "ray"):
            data = toy_config(tmp_path / backend, str(saved_model)) | {"ray": {"workers_per_model": 2}}
            run_experiment(parse_config(data), backend=backend, progress=False)
        local, remote = (_folder(tmp_path / b, saved_model) for b in ("local", "ray"))
        for table in ("toy", "lens_half"):
            keys = [
                k for k in ("language", "item_id", "layer", "form", "choice") if k in Store(local).read(table)
            ]
            pd.testing.assert_frame_equal(
                Store(local).read(table).sort_values(keys).reset_index(drop=True),
                Store(remote).read(table).sort_values(keys).reset_index(drop=True),
            )
        assert "Toy tokens per language" in (tmp_path / "ray" / "report.md").read_text()
    finally:
        unregister("toy")
        unregister_lens("half")
        cloudpickle.unregister_pickle_by_value(toy_plugin)
