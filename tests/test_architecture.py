"""The package's shape: layers import only downward, no stage imports another, and a new stage or
lens kind is one definition plus one registration line, with no edit under ``src/``.

The toy stage and lens of ``tests/toy_plugin.py`` are registered here and run through the CLI, the
local runner, ``crosslens run`` and the report (the Ray runner: ``tests/test_ray_runner.py``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grimp
import pytest
import yaml

import toy_plugin
from conftest import tiny_model
from crosslens.cli import main
from crosslens.experiment.config import ConfigError, parse_config
from crosslens.experiment.runner import run_experiment
from crosslens.lenses.kinds import register_lens, unregister_lens
from crosslens.stages.registry import BUILTIN, register, stage_defs, unregister
from crosslens.store import Store

ROOT = Path(__file__).resolve().parents[1]


def test_the_layer_contracts_hold() -> None:
    """import-linter's contracts of pyproject.toml (layers; no cycle anywhere), imports inside
    functions and under TYPE_CHECKING included."""
    lint = Path(sys.executable).with_name("lint-imports")
    cmd = [str(lint), "--config", str(ROOT / "pyproject.toml")]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "2 kept, 0 broken" in res.stdout


def _stage_packages(graph: grimp.ImportGraph) -> list[str]:
    return sorted(m for m in graph.find_children("crosslens.stages") if graph.find_children(m))


def test_no_stage_imports_another_or_reaches_up() -> None:
    """Every folder below crosslens.stages, whatever its name: no import chain to another stage
    folder, and the modules stages share import no stage folder (the registry imports them by name)."""
    graph = grimp.build_graph("crosslens")
    packages = _stage_packages(graph)
    assert {f"crosslens.stages.{p.rsplit('.', 1)[-1]}" for p in packages} >= set(BUILTIN)
    for a in packages:
        for b in packages:
            if a != b:
                chain = graph.find_shortest_chain(importer=a, imported=b, as_packages=True)
                assert chain is None, f"{a} reaches {b}: {' -> '.join(chain)}"
    shared = [m for m in graph.find_children("crosslens.stages") if m not in packages]
    for module in shared:
        for p in packages:
            chain = graph.find_shortest_chain(importer=module, imported=p, as_packages=True)
            assert chain is None, f"shared {module} reaches the stage {p}: {' -> '.join(chain)}"


@pytest.fixture
def toy() -> Iterator[None]:
    register(toy_plugin.STAGE)
    register_lens(toy_plugin.LENS)
    try:
        yield
    finally:
        unregister("toy")
        unregister_lens("half")


def test_the_cli_starts_without_torch_or_pandas() -> None:
    """`crosslens --help` stays fast: building the app (every stage's options) imports neither torch
    nor pandas; a stage's config module imports them inside the checks that need them."""
    code = (
        "import sys; from crosslens.cli.app import build_app; build_app(); "
        "print(sorted({'torch', 'pandas'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_registered_stage_and_lens_are_known_everywhere(toy: None) -> None:
    keys = [d.key for d in stage_defs()]
    assert keys[-1] == "toy" and "half_lens" in keys
    half = next(d for d in stage_defs() if d.key == "half_lens")
    assert (half.table, half.summary, half.command_name) == ("lens_half", "lens_half_summary.json", "lens")


def test_the_cli_runs_a_registered_stage(toy: None, saved_model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "toy"
    base = [
        "-m",
        str(saved_model),
        "-d",
        "crosslens-mini",
        "--languages",
        "en,de",
        "--limit",
        "4",
        "-o",
        str(out),
    ]
    assert main(["toy", *base, "--factor", "3"]) == 0
    printed = capsys.readouterr().out
    assert "toy: factor 3" in printed and "fig_toy.png" in printed.replace("\n", "")  # a wrapped path
    rows = Store(out).read("toy")
    assert len(rows) == 8 and (rows["tokens"] % 3 == 0).all()
    assert json.loads((out / "toy_summary.json").read_text())["factor"] == 3
    assert (out / "fig_toy.png").is_file()
    # A CLI error names the flag only; the folder is untouched.
    before = sorted(p.name for p in out.iterdir())
    assert main(["toy", *base, "--factor", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err.splitlines()[0]] and "--factor: must be >= 1, got 0" in err
    assert "toy.factor" not in err
    assert main(["toy", *base, "--factor", "9999"]) == 2
    assert "--factor: 9999 is absurd" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
    # The lens command reads through the registered lens kind too.
    assert (
        main(["lens", *base[:-2], "--layers", "2,4", "--lens", "logit", "--lens", "half", "-o", str(out)])
        == 0
    )
    assert "half lens" in capsys.readouterr().out
    assert json.loads((out / "lens_half_summary.json").read_text())["lens"] == "half"


def test_a_command_whose_stages_need_no_model_loads_none(
    saved_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``StageDef.needs_model=False``: the command builds the stage from the plan and loads nothing;
    an experiment builds it from the job's context like any other stage."""
    register(toy_plugin.COUNT)
    try:
        monkeypatch.setattr(
            "crosslens.models.loading.load_model", lambda *a, **k: pytest.fail("a model loaded")
        )
        out = tmp_path / "count"
        argv = ["-m", str(saved_model), "-d", "crosslens-mini", "--languages", "en,de", "--limit", "3"]
        assert main(["toy-count", *argv, "-o", str(out)]) == 0
        assert len(Store(out).read("toy_count")) == 6
        assert json.loads((out / "run.json").read_text())["stages"]["toy_count"]["built_from"] == "Plan"
        monkeypatch.undo()
        lm = tiny_model("gemma3")
        config = {k: v for k, v in _config(tmp_path / "runs", lm.spec).items() if k != "toy"}
        config["lens"] = {"enabled": False}
        run_experiment(parse_config(config, check_models=False), progress=False, models={lm.spec: lm})
        run = json.loads((tmp_path / "runs" / "tiny-gemma3" / "crosslens-mini" / "run.json").read_text())
        assert run["stages"]["toy_count"]["built_from"] == "JobContext"
    finally:
        unregister("toy_count")


def _config(out: Path, spec: str) -> dict:
    return {
        "models": [spec],
        "datasets": [{"name": "crosslens-mini", "languages": ["en", "de"], "limit": 4}],
        "layers": [2, 4],
        "pca": {"enabled": False},
        "lens": {"lenses": ["logit", "half"]},
        "toy": {"factor": 5},
        "output": str(out),
    }


def test_the_experiment_and_report_run_a_registered_stage(toy: None, tmp_path: Path) -> None:
    lm = tiny_model("gemma3")
    report = run_experiment(parse_config(_config(tmp_path / "runs", lm.spec), check_models=False),
                            progress=False, models={lm.spec: lm})  # fmt: skip
    folder = tmp_path / "runs" / "tiny-gemma3" / "crosslens-mini"
    assert json.loads((folder / "toy_summary.json").read_text())["factor"] == 5
    assert (folder / "lens_half").is_dir() and (folder / "fig2_lens_half.png").is_file()
    md = report.with_name("report.md").read_text()
    for text in ("Toy table across folders", "Toy tokens per language", "| toy factor | 5 |", "toy tokens",
                 "Half lens per layer", "tiny-gemma3 · half lens", "fig_toy.png"):  # fmt: skip
        assert text in md, text
    # A YAML error names the key only.
    with pytest.raises(ConfigError) as err:
        parse_config(_config(tmp_path, lm.spec) | {"toy": {"factor": 0}}, check_models=False)
    assert "toy.factor: must be >= 1, got 0" in str(err.value) and "--factor" not in str(err.value)
    with pytest.raises(ConfigError, match=r"toy.fctor: unknown key \(did you mean 'factor'\?"):
        parse_config(_config(tmp_path, lm.spec) | {"toy": {"fctor": 2}}, check_models=False)


def test_crosslens_run_runs_a_registered_stage(toy: None, saved_model: Path, tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path / "runs", str(saved_model))))
    assert main(["run", str(path), "--no-progress"]) == 0
    folder = tmp_path / "runs" / saved_model.name / "crosslens-mini"
    assert json.loads((folder / "toy_summary.json").read_text())["factor"] == 5
    assert "Toy tokens per language" in (tmp_path / "runs" / "report.md").read_text()
    shutil.rmtree(tmp_path / "runs")
