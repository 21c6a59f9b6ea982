"""Experiment configs: every mistake is one clear line naming the option, found before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import crosslens.models.loading
from crosslens.cli import main
from crosslens.experiment.config import ConfigError, load_config, parse_config
from crosslens.experiment.runner import demo_config_path, run_experiment
from crosslens.scoring.options import ScoringOptions
from crosslens.stages.options import EveryLayers, RunOptions
from crosslens.stages.registry import stage_defs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A model folder with a config only: reading its depth must not need weights."""
    folder = tmp_path / "tiny-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 4}))
    return folder


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record (and refuse) any attempt to load a model."""
    calls: list[str] = []

    def refuse(spec: str, *args: object, **kwargs: object) -> None:
        calls.append(spec)
        raise AssertionError(f"a model was loaded: {spec}")

    monkeypatch.setattr(crosslens.models.loading, "load_model", refuse)
    return calls


def _base(model_dir: Path, out: Path) -> dict:
    return {
        "models": [str(model_dir)],
        "datasets": [{"name": "crosslens-mini", "languages": ["en", "de", "zh"], "limit": 12}],
        "layers": [1, 2],
        "steering": {"layers": [2], "gammas": [-1, 1], "n_vectors": 4},
        "pca": {"n_items": 4},
        "output": str(out),
    }


def _write(tmp_path: Path, data: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


BAD = [
    (
        "unknown top-level key",
        lambda c: c.update(modles=["x"]),
        "modles: unknown key (did you mean 'models'?",
    ),
    ("unknown nested key", lambda c: c["steering"].update(gama=[1]), "steering.gama: unknown key"),
    ("unknown dataset key", lambda c: c["datasets"][0].update(lang=["en"]), "datasets[0].lang: unknown key"),
    (
        "unknown dataset",
        lambda c: c["datasets"][0].update(name="belebel"),
        "datasets[0].name: unknown dataset 'belebel' (did you mean 'belebele'?)",
    ),
    (
        "language the dataset lacks",
        lambda c: c["datasets"][0].update(languages=["en", "xx"]),
        "datasets[0].languages: crosslens-mini has no language 'xx'",
    ),
    ("lens layer beyond depth", lambda c: c.update(layers=[2, 9]), "layers: [9] beyond the depth of"),
    (
        "steering layer beyond depth",
        lambda c: c["steering"].update(layers=[2, 5]),
        "steering.layers: [5] beyond the depth of",
    ),
    (
        "steering layer 0",
        lambda c: c["steering"].update(layers=[0]),
        "steering.layers[0]: must be >= 1, got 0",
    ),
    ("empty gammas", lambda c: c["steering"].update(gammas=[]), "steering.gammas: must not be empty"),
    ("no models", lambda c: c.update(models=[]), "models: must not be empty"),
    (
        "unknown model alias",
        lambda c: c.update(models=["gemma-3-27m"]),
        "models[0]: unknown model spec 'gemma-3-27m'",
    ),
    (
        "missing model folder",
        lambda c: c.update(models=["./no/such/model"]),
        "models[0]: ./no/such/model is not",
    ),
    (
        "bad layer schedule",
        lambda c: c.update(layers="all"),
        "layers: expected a list of layer numbers or {every: N}",
    ),
    (
        "bad batch size",
        lambda c: c.update(batch_size="big"),
        "batch_size: must be a positive integer or 'auto'",
    ),
    ("bad device", lambda c: c.update(device="gpu"), "device: 'gpu' is not a device"),
    (
        "dataset twice",
        lambda c: c["datasets"].append({"name": "crosslens-mini"}),
        "datasets[1].name: dataset",
    ),
    ("missing data_dir", lambda c: c["datasets"][0].update(data_dir="/no/such/dir"), "datasets[0].data_dir:"),
    (
        "steering override for an unknown model",
        lambda c: c["steering"].update(layers_by_model={"m/x": [1]}),
        "steering.layers_by_model: 'm/x' is not one of the models",
    ),
    (
        "max_memory without device auto",
        lambda c: c.update(max_memory={0: "20GiB"}),
        "max_memory: is only used with device: auto",
    ),
    ("unknown ray key", lambda c: c.update(ray={"workers": 2}), "ray.workers: unknown key"),
    (
        "no ray workers",
        lambda c: c.update(ray={"workers_per_model": 0}),
        "ray.workers_per_model: must be >= 1",
    ),
]


@pytest.mark.parametrize("what, change, message", BAD, ids=[b[0] for b in BAD])
def test_bad_config_fails_before_any_model_loads(
    what: str,
    change,
    message: str,
    model_dir: Path,
    tmp_path: Path,
    no_model_loading: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = _base(model_dir, tmp_path / "out")
    change(data)
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        run_experiment(path, progress=False)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: "), text
    assert message in text, text
    assert no_model_loading == []
    assert not (tmp_path / "out").exists()
    # The CLI prints the same single line and exits with status 2.
    assert main(["run", str(path), "--no-progress"]) == 2
    stderr = capsys.readouterr().err.strip()
    assert message.split(":")[0] in stderr and len(stderr.splitlines()) == 1


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("models: [a\ndatasets: x\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: invalid YAML at line \d+"):
        load_config(path)


def test_n_vectors_larger_than_the_data_fails_before_loading(
    model_dir: Path, tmp_path: Path, no_model_loading: list[str]
) -> None:
    data = _base(model_dir, tmp_path / "out")
    data["steering"]["n_vectors"] = 12
    with pytest.raises(ConfigError, match="steering.n_vectors: 12 leaves no items to evaluate"):
        run_experiment(_write(tmp_path, data), progress=False)
    assert no_model_loading == []


def test_defaults_and_layer_schedule(model_dir: Path, tmp_path: Path) -> None:
    config = parse_config({"models": [str(model_dir)], "datasets": [{"name": "crosslens-mini"}]})
    assert config.layers == EveryLayers(every=4)
    assert config.lens_layers(42)[:3] == [2, 6, 10] and config.lens_layers(42)[-1] == 42
    assert config.steering is None and not config.steering_enabled
    assert config.group(RunOptions).batch(config.device) == 16
    assert config.output == Path("runs")


def test_unknown_backend(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"backend 'slurm' is not available \(backends: local, ray\)"):
        run_experiment(_write(tmp_path, _base(model_dir, tmp_path / "out")), backend="slurm")


def test_demo_configs_are_shipped_identically() -> None:
    """`crosslens demo` runs the quick config, `--full` the full one: both as in examples/, both every
    stage that needs no trained lens, the quick one a subset of the full one's items and settings."""
    quick, full = demo_config_path(), demo_config_path(full=True)
    assert quick.read_bytes() == (EXAMPLES / "demo-quick.yaml").read_bytes()
    assert full.read_bytes() == (EXAMPLES / "demo.yaml").read_bytes()
    untrained = {d.key for d in stage_defs() if not d.key.startswith("tuned_")}
    configs = [load_config(path, check_models=False) for path in (quick, full)]
    for config in configs:
        assert config.models == ["gemma-3-270m"] and config.dtype == "float32"
        assert config.datasets[0].name == "crosslens-mini" and "en" in config.datasets[0].languages
        assert {d.key for d in config.stages()} == untrained
        assert config.steering.gammas == [-2, 0, 2] and config.steering.controls >= 1
    q, f = configs
    assert q.datasets[0].limit == 24 and f.datasets[0].limit is None
    assert set(q.datasets[0].languages) < set(f.datasets[0].languages) and len(f.datasets[0].languages) == 10
    assert set(q.steering.layers) < set(f.steering.layers) and q.output != f.output


def test_demo_command_picks_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The demo command runs the quick config by default and the full one with --full, into --output."""
    import crosslens.experiment.runner as runner

    ran: list[tuple[int | None, Path]] = []

    def fake_run(config, progress: bool = True) -> Path:
        ran.append((config.datasets[0].limit, config.output))
        return config.output / "report.html"

    monkeypatch.setattr(runner, "run_experiment", fake_run)
    assert main(["demo", "--output", str(tmp_path / "q")]) == 0
    assert main(["demo", "--full"]) == 0
    assert ran == [(24, tmp_path / "q"), (None, Path("runs/demo"))]


def test_paper_config_is_valid() -> None:
    config = load_config(EXAMPLES / "paper.yaml", check_models=False)
    assert [d.name for d in config.datasets] == ["belebele", "mmmlu", "mhellaswag"]
    assert len(config.models) == 6 and config.dtype == "bfloat16"
    assert config.steering.layers_for("google/gemma-2-2b") == [6, 10]
    assert config.steering.layers_for("Qwen/Qwen2.5-3B") == [12]
    assert len(config.datasets[1].languages) == 15 and "EN_US" in config.datasets[1].languages
    assert "divergence" in [d.key for d in config.stages()]


def test_tuned_lens_config_is_valid() -> None:
    config = load_config(EXAMPLES / "tuned-lens.yaml", check_models=False)
    assert config.lens.lenses == ["logit", "tuned"] and config.lens.tuned == "tuned"
    assert config.lens.train.dataset.name == "xstorycloze" and config.lens.train.tokens == 4096
    assert [d.key for d in config.stages()] == [
        "eval",
        "lens",
        "tuned_lens",
        "divergence",
        "tuned_divergence",
    ]


def test_instruct_fewshot_config_is_valid() -> None:
    config = load_config(EXAMPLES / "instruct-fewshot.yaml", check_models=False)
    opts = config.group(ScoringOptions)
    assert (opts.num_fewshot, opts.apply_chat_template, opts.cloze_norm) == (3, True, "byte")
    assert opts.system_instruction.startswith("Answer with the letter")
    assert [d.key for d in config.stages()] == ["eval", "lens"]


def test_address_needs_the_ray_backend(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from crosslens.cli import main

    path = _write(tmp_path, _base(model_dir, tmp_path / "out"))
    assert main(["run", str(path), "--address", "head:6379"]) == 2
    err = capsys.readouterr().err
    assert "--address is for the ray backend" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
