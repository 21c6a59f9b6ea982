"""Experiment configuration: one YAML file describes models x datasets x stages (see docs/report.md).

The file's top level holds the options every stage shares (the model's device and dtype, batching
and seed, prompts and answer scoring: the same options objects the CLI's flags fill), ``models``,
``datasets`` and ``layers``; each registered stage adds its own section (``steering:``, ``pca:``,
...) — this module knows none of them by name, it composes what :mod:`crosslens.stages.registry`
declares.

Everything that can be wrong with a config is found *before* any model is loaded, and reported as
one line naming the file and the key (``examples/bad.yaml: steering.gammas: must not be empty``):
unknown keys (every section forbids extras), unknown datasets or languages, options a stage does
not honour, layers beyond a model's depth. A model's depth is read from its config only, never
from its weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationError, model_validator

from crosslens.data.options import DatasetConfig
from crosslens.errors import CrosslensError
from crosslens.files import FileFormatError, read_text
from crosslens.models.loading import ModelLoadError, load_with, model_depth
from crosslens.models.options import ModelOptions
from crosslens.options import OptionError, Options, describe_yaml
from crosslens.scoring.options import PROMPT_FIELDS, ScoringOptions
from crosslens.stages.context import Settings
from crosslens.stages.options import EveryLayers, LayerSpec, RunOptions, layers_read
from crosslens.stages.registry import StageDef, sections, stage_defs

__all__ = ["ConfigError", "RayConfig", "ExperimentConfig", "load_config", "parse_config", "check_depth"]


class ConfigError(CrosslensError, ValueError):
    """An unusable experiment config; the message is one line: ``<file>: <key>: <problem>``."""


class RayConfig(Options):
    """How the Ray backend sizes its workers (ignored by the local backend; see docs/cluster.md)."""

    workers_per_model: Annotated[int, Field(ge=1, le=1024)] = 1  # actors per model, each loads it once
    num_cpus: Annotated[float, Field(gt=0)] = 1.0  # per worker
    num_gpus: Annotated[float, Field(ge=0)] | None = None  # per worker; None: 1 unless device is cpu
    max_retries: Annotated[int, Field(ge=0, le=100)] = 3  # restarts of a dead worker and retries of its unit

    def gpus(self, device: str) -> float:
        if self.num_gpus is not None:
            return self.num_gpus
        return 0.0 if device == "cpu" else 1.0


_ROOT_GROUPS: tuple[type[Options], ...] = (ModelOptions, RunOptions, ScoringOptions)


class ExperimentConfig(ModelOptions, RunOptions, ScoringOptions):
    """A whole experiment: every model is run on every dataset, each into ``output/<model>/<dataset>``.

    Stage sections are read from the top level of the YAML into ``sections`` (validated by each
    stage's own options class) and are reachable as attributes (``config.steering``).
    """

    models: list[str] = Field(min_length=1)
    datasets: list[DatasetConfig] = Field(min_length=1)
    layers: LayerSpec = EveryLayers()
    output: Path = Path("runs")
    ray: RayConfig = RayConfig()
    sections: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data: Any) -> Any:
        """Move every registered stage's section into ``sections``, validated by its own class; a
        section left out is on with its defaults where its stage is on by default, else off."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        given = dict(data.pop("sections", None) or {})
        out: dict[str, Any] = {}
        for key, (options, default_on) in sections().items():
            raw = data.pop(key) if key in data else given.pop(key, _DEFAULT)
            if raw is _DEFAULT:
                out[key] = options() if default_on else None
            elif raw is None or isinstance(raw, options):
                out[key] = raw
            else:
                try:
                    out[key] = options.model_validate(raw)
                except ValidationError as exc:
                    raise ValueError(_SECTION_ERROR + describe_yaml(exc, options, key)) from None
        if given:
            raise ValueError(f"{_SECTION_ERROR}sections: unknown stage sections {sorted(given)}")
        data["sections"] = out
        return data

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections")
        if sections is not None and name in sections:
            return sections[name]
        return super().__getattr__(name)  # type: ignore[misc]

    def section(self, key: str | None) -> Options | None:
        return None if key is None else self.sections.get(key)

    def group(self, options: type[Options]) -> Any:
        """The config's values of one root options group (``RunOptions``, ``ScoringOptions``, ...)."""
        return options.model_validate({k: getattr(self, k) for k in options.model_fields})

    def settings(self, defn: StageDef | None = None) -> Settings:
        """The options a stage sees (its own section included)."""
        return Settings(
            model=self.group(ModelOptions),
            run=self.group(RunOptions),
            scoring=self.group(ScoringOptions),
            layers=self.layers,
            section=self.section(defn.section) if defn else None,
            sections=dict(self.sections),
            models=tuple(self.models),
            stages=tuple(d.key for d in self.stages()),
        )

    def stages(self) -> list[StageDef]:
        """The registered stages this config turns on, in run order."""
        return [d for d in stage_defs() if d.turned_on(self.section(d.section))]

    def load(self, spec: str) -> Any:
        """Load one model of the experiment with its device, dtype and memory settings."""
        return load_with(self.group(ModelOptions), spec)

    def lens_layers(self, n_layers: int) -> list[int]:
        """The layers the run reads for a model with ``n_layers`` blocks."""
        return layers_read(self.layers, n_layers)

    def as_yaml(self) -> dict[str, Any]:
        """The config as its YAML file spells it (sections at the top level)."""
        data = self.model_dump(mode="json", exclude={"sections"})
        for key, value in self.sections.items():
            data[key] = None if value is None else value.model_dump(mode="json")
        return data

    @property
    def steering_enabled(self) -> bool:
        s = self.sections.get("steering")
        return s is not None and s.enabled


_DEFAULT = object()
_SECTION_ERROR = "\x00"  # marks a section's own message, already spelled as its YAML key


# -- loading ----------------------------------------------------------------------------------------
class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path, check_models: bool = True) -> ExperimentConfig:
    """Read and fully validate a YAML config (``check_models=False`` skips reading model depths)."""
    path = Path(path)
    try:
        data = yaml.load(read_text(path), Loader=_UniqueKeyLoader)
    except FileFormatError as exc:
        raise ConfigError(str(exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    return parse_config(data, source=str(path), check_models=check_models)


def parse_config(data: Any, source: str = "<config>", check_models: bool = True) -> ExperimentConfig:
    """Validate a config mapping (as read from YAML); raises :class:`ConfigError` on the first problem."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping of options at the top level, got {type(data).__name__}"
        )
    try:
        config = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None
    for i, d in enumerate(config.datasets):
        try:
            d.check()
        except OptionError as exc:
            raise ConfigError(f"{source}: datasets[{i}].{exc.field}: {exc.message}") from None
        if d.name in [e.name for e in config.datasets[:i]]:
            raise ConfigError(
                f"{source}: datasets[{i}].name: dataset {d.name!r} is listed twice (its results would share "
                "a folder)"
            )
        if d.fewshot_split is not None and not config.num_fewshot:
            raise ConfigError(f"{source}: datasets[{i}].fewshot_split is set but num_fewshot is 0")
    _check_stages(config, source)
    if check_models:
        for i, spec in enumerate(config.models):
            try:
                depth = model_depth(spec)
            except ModelLoadError as exc:
                raise ConfigError(f"{source}: models[{i}]: {exc}") from None
            if depth is not None:
                check_depth(config, spec, depth, source)
    return config


def _check_stages(config: ExperimentConfig, source: str) -> None:
    """Every enabled stage's own checks, and the shared options only some stages honour."""
    on = config.stages()
    defaults = ScoringOptions()
    for name in PROMPT_FIELDS:
        if getattr(config, name) == getattr(defaults, name):
            continue
        ignoring = [d for d in on if name not in d.scoring]
        if ignoring:
            users = [d.key for d in stage_defs() if name in d.scoring]
            off = ignoring[0].section or ignoring[0].key
            raise ConfigError(
                f"{source}: {name} shapes the prompts of {', '.join(users)} only; set {off}.enabled to false "
                "(or run that stage in an experiment of its own with zero-shot prompts)"
            )
    for d in on:
        if d.check is not None:
            settings = config.settings(d)
            try:
                d.check(settings)
            except OptionError as exc:
                raise ConfigError(f"{source}: {yaml_key(config, d, exc.field)}: {exc.message}") from None


def yaml_key(config: ExperimentConfig, defn: StageDef | None, field: str) -> str:
    """How the YAML spells an options field a stage's check named: its section's key, else the root's."""
    section = config.section(defn.section) if defn else None
    if section is not None and field.split(".")[0].split("[")[0] in type(section).model_fields:
        return f"{defn.section}.{field}"
    return field


def check_depth(config: ExperimentConfig, spec: str, n_layers: int, source: str = "<config>") -> None:
    """Fail when a configured layer does not exist in a model with ``n_layers`` blocks."""
    if not isinstance(config.layers, EveryLayers):
        bad = [layer for layer in config.layers if layer > n_layers]
        if bad:
            raise ConfigError(f"{source}: layers: {bad} beyond the depth of {spec} (layers 0..{n_layers})")


def _describe(exc: ValidationError) -> str:
    """The first validation error as ``key: problem`` (a section's message is already spelled so)."""
    err = exc.errors()[0]
    msg = str(err.get("ctx", {}).get("error", "")) if err["type"] == "value_error" else ""
    if msg.startswith(_SECTION_ERROR):
        return msg.removeprefix(_SECTION_ERROR)
    return describe_yaml(exc, ExperimentConfig, extra_keys=list(sections()))
