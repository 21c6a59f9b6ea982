"""Experiment configuration: one YAML file describes models x datasets x stages (see docs/report.md).

Everything that can be wrong with a config is found *before* any model is loaded, and reported as
one line naming the file and the option (``examples/bad.yaml: steering.gammas: must not be
empty``): unknown keys (every section forbids extras), unknown datasets or languages, steering
layers beyond a model's depth. A model's depth is read from its config only (a local folder's
``config.json``, the cached conversion of a GGUF file, the GGUF header, or the Hub config), never
from its weights.
"""

from __future__ import annotations

import difflib
import json
import logging
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "ConfigError",
    "DatasetConfig",
    "EveryLayers",
    "SteeringConfig",
    "PcaConfig",
    "LensConfig",
    "LensTrainConfig",
    "RayConfig",
    "ExperimentConfig",
    "load_config",
    "parse_config",
    "check_depth",
    "model_depth",
]

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """An unusable experiment config; the message is one line: ``<file>: <option>: <problem>``."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def runs(self, stage: str) -> bool:
        """Whether this section turns on registry stage ``stage`` (a section may serve several)."""
        return True


class DatasetConfig(_Section):
    """One benchmark: which languages, where its files are, how many items, which prompt."""

    name: str
    languages: list[str] | None = None  # None = every language the dataset has
    data_dir: Path | None = None  # None = $CROSSLENS_DATA, bundled data or the Hub (see docs/data.md)
    split: str | None = None
    limit: Annotated[int, Field(ge=1)] | None = None
    template: str | None = None
    pivot: str | None = None  # the English code, where the dataset's own is not the one wanted (jsonl)
    pivot_file: Path | None = None  # English items for datasets that ship none (xcopa, okapi-arc, jsonl)
    strict: bool = False  # fail on the first data problem instead of dropping the item
    fewshot_split: str | None = None  # the split few-shot exemplars come from (default: unread items)


class EveryLayers(_Section):
    """The paper's layer schedule: every ``every``-th block, ending at the last one."""

    every: Annotated[int, Field(ge=1)] = 4


class SteeringConfig(_Section):
    """Cross-lingual activation steering (paper §2.3); gamma = 0 is always added as the baseline."""

    layers: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    layers_by_model: dict[str, list[Annotated[int, Field(ge=1)]]] = {}  # per-model overrides of ``layers``
    gammas: list[float] = Field(default=[-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0])
    n_vectors: Annotated[int, Field(ge=1)] = 50
    controls: Annotated[int, Field(ge=0)] = 0  # random directions of v's norm per (language, layer)
    positions: list[Literal["last", "all"]] = Field(default=["last"], min_length=1)
    enabled: bool = True

    @field_validator("gammas")
    @classmethod
    def _gammas_usable(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("must not be empty")
        from crosslens.steering import check_gammas

        check_gammas(v)
        return v

    def layers_for(self, spec: str) -> list[int]:
        """The steering layers of one model (its override, else ``layers``)."""
        return self.layers_by_model.get(spec, self.layers)


class PcaConfig(_Section):
    """PCA of last-token activations (Fig. 3) on a seeded sample of parallel items."""

    n_items: Annotated[int, Field(ge=2)] = 50
    enabled: bool = True


class SimilarityConfig(_Section):
    """CKA and cosine similarity between languages per layer (the configured ``layers``)."""

    n_items: Annotated[int, Field(ge=4)] | None = None  # None: pca.n_items (then the two share activations)
    pool: Literal["last", "mean"] = "last"
    n_boot: Annotated[int, Field(ge=0)] = 1000
    matrix_layer: Annotated[int, Field(ge=0)] | None = None  # the layer of the pairwise matrix figure
    enabled: bool = True

    def items(self, config: ExperimentConfig) -> int:
        return self.n_items if self.n_items is not None else config.pca.n_items


class NeuronsConfig(_Section):
    """Language-specific neurons (LAPE) and the causal test of deactivating them (docs/neurons.md)."""

    ablate: list[str] | None = None  # languages whose neurons are deactivated in turn (None: every one)
    n_text_items: Annotated[int, Field(ge=1)] = 50  # held-out items whose text the neurons are found from
    top_rate: Annotated[float, Field(gt=0, le=1)] = 0.01
    filter_rate: Annotated[float, Field(gt=0, le=1)] = 0.95
    activation_bar: Annotated[float, Field(gt=0, le=1)] = 0.95
    n_boot: Annotated[int, Field(ge=0)] = 1000
    enabled: bool = True


class LensTrainConfig(_Section):
    """How ``crosslens run`` trains the tuned lens it reads with (docs/lens.md; the train-lens options)."""

    corpus: list[Path] | None = None  # text files, a document per line
    dataset: DatasetConfig | None = None  # or the inputs of another dataset's items (e.g. xstorycloze train)
    # neither: the inputs of the read dataset's items beyond its limit (never the items the lens reads)
    tokens: Annotated[int, Field(ge=1)] = 8192
    batch: Annotated[int, Field(ge=1)] = 8
    positions: Annotated[int, Field(ge=1)] = 32
    seq_len: Annotated[int, Field(ge=2)] = 128
    val_tokens: Annotated[int, Field(ge=1)] = 1024
    lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1e-3
    checkpoint_every: Annotated[int, Field(ge=1)] = 20
    head_dtype: Literal["auto", "bfloat16", "float32"] = "auto"

    @model_validator(mode="after")
    def _one_source(self) -> LensTrainConfig:
        if self.corpus and self.dataset:
            raise ValueError("give corpus (text files) or dataset, not both")
        return self

    def settings(self, layers: Sequence[int], seed: int) -> Any:
        from crosslens.lens_training import TrainSettings

        return TrainSettings(
            tuple(layers), self.tokens, self.batch, self.positions, self.seq_len, self.val_tokens,
            lr=self.lr, seed=seed, checkpoint_every=self.checkpoint_every, head_dtype=self.head_dtype,
        )  # fmt: skip


class LensConfig(_Section):
    """The multilingual lens (Fig. 2, Table 2) at the configured layers, through each lens of ``lenses``.

    ``lenses``: ``logit`` and/or one tuned lens: ``tuned:PATH`` (a trained lens folder) or ``tuned``
    with ``train:`` (the run trains one per model x dataset into ``<folder>/tuned_lens``).
    """

    enabled: bool = True
    lenses: list[str] = Field(default=["logit"], min_length=1)
    train: LensTrainConfig | None = None

    @field_validator("lenses")
    @classmethod
    def _lenses(cls, v: list[str]) -> list[str]:
        from crosslens.lenses import LensError, parse_lens

        try:
            specs = [parse_lens(x) for x in v]
        except LensError as exc:
            raise ValueError(str(exc)) from None
        if len(set(v)) != len(v) or sum(s.kind == "tuned" for s in specs) > 1:
            raise ValueError("name each lens once, with at most one tuned lens per run")
        return v

    @model_validator(mode="after")
    def _train_iff_bare_tuned(self) -> LensConfig:
        if self.train is not None and "tuned" not in self.lenses:
            raise ValueError(
                "train: trains the lens named 'tuned' in lenses (add it; tuned:PATH is already trained)"
            )
        if self.train is None and "tuned" in self.lenses:
            raise ValueError(
                "lenses: 'tuned' without a folder needs train: {...} (or name a trained one: tuned:PATH)"
            )
        return self

    @property
    def tuned(self) -> str | None:
        """The tuned lens entry of ``lenses`` (``tuned`` or ``tuned:PATH``), if any."""
        return next((x for x in self.lenses if x.split(":")[0] == "tuned"), None)

    def runs(self, stage: str) -> bool:
        return ("logit" in self.lenses) if stage == "lens" else self.tuned is not None


def _layers_kind(value: Any) -> str | None:
    if isinstance(value, list):
        return "layer-list"
    return "every-nth" if isinstance(value, (dict, EveryLayers)) else None


LayerSpec = Annotated[
    Annotated[list[Annotated[int, Field(ge=0)]], Tag("layer-list")]
    | Annotated[EveryLayers, Tag("every-nth")],
    Discriminator(
        _layers_kind,
        custom_error_type="layer_spec",
        custom_error_message="expected a list of layer numbers or {every: N}",
    ),
]


class RayConfig(_Section):
    """How the Ray backend sizes its workers (ignored by the local backend; see docs/cluster.md)."""

    workers_per_model: Annotated[int, Field(ge=1)] = 1  # actors per model, each loads it once
    num_cpus: Annotated[float, Field(gt=0)] = 1.0  # per worker
    num_gpus: Annotated[float, Field(ge=0)] | None = None  # per worker; None: 1 unless device is cpu
    max_retries: Annotated[int, Field(ge=0)] = 3  # restarts of a dead worker and retries of its unit

    def gpus(self, device: str) -> float:
        if self.num_gpus is not None:
            return self.num_gpus
        return 0.0 if device == "cpu" else 1.0


class ExperimentConfig(_Section):
    """A whole experiment: every model is run on every dataset, each into ``output/<model>/<dataset>``."""

    models: list[str] = Field(min_length=1)
    datasets: list[DatasetConfig] = Field(min_length=1)
    layers: LayerSpec = EveryLayers()
    steering: SteeringConfig | None = None  # None: no steering
    neurons: NeuronsConfig | None = None  # None: no neuron analysis
    pca: PcaConfig = PcaConfig()
    similarity: SimilarityConfig | None = None  # None: no similarity stage
    lens: LensConfig = LensConfig()
    seed: int = 0
    device: str = "cpu"
    max_memory: dict[str | int, str] | None = None  # device: auto only, e.g. {0: 70GiB, cpu: 200GiB}
    dtype: Literal["float32", "bfloat16", "float16", "bf16-mixed", "auto"] = "float32"  # auto: for the device
    batch_size: int | Literal["auto"] = "auto"
    output: Path = Path("runs")
    chunk_size: Annotated[int, Field(ge=1)] = 32
    cloze: bool = True  # also score the full answer texts (the --no-cloze of the CLI turns it off)
    cloze_norm: Literal["char", "byte", "token", "pmi", "none"] = "char"  # how full answers are ranked
    # Prompts as lm-eval users run them (the evaluation and the lens; see docs/prompts.md):
    num_fewshot: Annotated[int, Field(ge=0)] = (
        0  # exemplars with their answers, the same items in every language
    )
    apply_chat_template: bool = False  # the prompt as the user turn of the model's chat template
    system_instruction: str | None = None  # a system turn (without a chat template: a paragraph before)
    skip_long: bool = False  # leave out items longer than a model's context (default: refuse them)
    padding_side: Literal["left", "right"] = "left"
    ray: RayConfig = RayConfig()

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, v: Any) -> Any:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError(f"must be a positive integer or 'auto', got {v!r}")

    @field_validator("max_memory")
    @classmethod
    def _memory_needs_auto(cls, v: dict | None, info: ValidationInfo) -> dict | None:
        if v and info.data.get("device") != "auto":
            raise ValueError("is only used with device: auto (which splits a model across devices)")
        return v

    @model_validator(mode="after")
    def _concrete_dtype(self) -> ExperimentConfig:
        """``auto`` becomes the dtype this machine's device runs (what the results record)."""
        from crosslens.models import dtype_name

        object.__setattr__(self, "dtype", dtype_name(self.dtype, self.device))  # frozen model
        return self

    @model_validator(mode="after")
    def _steering_without_pmi(self) -> ExperimentConfig:
        from crosslens.steering import STEER_CLOZE_NORMS

        if self.steering_enabled and self.cloze and self.cloze_norm not in STEER_CLOZE_NORMS:
            raise ValueError(
                f"cloze_norm: steering normalises full answers by {', '.join(STEER_CLOZE_NORMS)}, "
                f"not {self.cloze_norm!r}"
            )
        return self

    @model_validator(mode="after")
    def _prompts_for_eval_and_lens(self) -> ExperimentConfig:
        asked = [
            key
            for key, on in (
                ("num_fewshot", self.num_fewshot),
                ("apply_chat_template", self.apply_chat_template),
                ("system_instruction", self.system_instruction is not None),
            )
            if on
        ]
        others = [
            name
            for name, section in (
                ("pca", self.pca),
                ("similarity", self.similarity),
                ("steering", self.steering),
                ("neurons", self.neurons),
            )
            if section is not None and section.enabled
        ]
        if asked and others:
            raise ValueError(
                f"{asked[0]} shapes the prompts of the evaluation and the lens only; set {others[0]}.enabled "
                "to false (or run it in an experiment of its own with zero-shot prompts)"
            )
        for i, d in enumerate(self.datasets):
            if d.fewshot_split is not None and not self.num_fewshot:
                raise ValueError(f"datasets[{i}].fewshot_split is set but num_fewshot is 0")
        return self

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        from crosslens.models import DEVICE

        if not DEVICE.fullmatch(v):
            raise ValueError(f"{v!r} is not a device (use cpu, cuda, cuda:N, mps or auto)")
        return v

    def load(self, spec: str) -> Any:
        """Load one model of the experiment with its device, dtype and memory settings."""
        from crosslens.models import load_model

        return load_model(spec, device=self.device, dtype=self.dtype, max_memory=self.max_memory)

    def lens_layers(self, n_layers: int) -> list[int]:
        """The layers the lens and PCA read for a model with ``n_layers`` blocks."""
        from crosslens.anatomy import paper_layers

        if isinstance(self.layers, EveryLayers):
            return paper_layers(n_layers, self.layers.every)
        return sorted(set(self.layers))

    def eval_options(self, dataset: int) -> Any:
        """The scoring options of ``datasets[dataset]`` (what the CLI builds from its flags)."""
        from crosslens.evaluate import EvalOptions

        return EvalOptions(
            template=self.datasets[dataset].template,
            batch_size=self.resolved_batch_size(),
            padding_side=self.padding_side,
            chunk_size=self.chunk_size,
            cloze=self.cloze,
            cloze_norm=self.cloze_norm,
            num_fewshot=self.num_fewshot,
            apply_chat_template=self.apply_chat_template,
            system_instruction=self.system_instruction,
        )

    def resolved_batch_size(self) -> int:
        """``auto``: 64 prompts per pass on an accelerator, 16 on CPU (as the CLI does)."""
        if self.batch_size == "auto":
            return 16 if self.device == "cpu" else 64
        return int(self.batch_size)

    @property
    def steering_enabled(self) -> bool:
        return self.steering is not None and self.steering.enabled


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
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
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
    _check_datasets(config, source)
    for spec in config.steering.layers_by_model if config.steering else ():
        if spec not in config.models:
            raise ConfigError(f"{source}: steering.layers_by_model: {spec!r} is not one of the models")
    if (
        config.pca.enabled
        and not isinstance(config.layers, EveryLayers)
        and max(config.layers, default=0) < 1
    ):
        raise ConfigError(
            f"{source}: layers: PCA needs a layer >= 1 (layer 0 is the embeddings), or set pca.enabled: false"
        )
    if config.similarity and config.similarity.enabled and config.similarity.items(config) < 4:
        raise ConfigError(
            f"{source}: similarity.n_items: the debiased CKA estimator needs at least 4 items; set "
            f"similarity.n_items (it defaults to pca.n_items = {config.pca.n_items})"
        )
    if check_models:
        for i, spec in enumerate(config.models):
            depth = model_depth(spec, f"{source}: models[{i}]")
            if depth is not None:
                check_depth(config, spec, depth, source)
    return config


def check_depth(config: ExperimentConfig, spec: str, n_layers: int, source: str = "<config>") -> None:
    """Fail when a configured layer does not exist in a model with ``n_layers`` blocks."""
    if not isinstance(config.layers, EveryLayers):
        bad = [layer for layer in config.layers if layer > n_layers]
        if bad:
            raise ConfigError(f"{source}: layers: {bad} beyond the depth of {spec} (layers 0..{n_layers})")
    sim = config.similarity
    if (
        sim
        and sim.enabled
        and sim.matrix_layer is not None
        and sim.matrix_layer not in config.lens_layers(n_layers)
    ):
        raise ConfigError(
            f"{source}: similarity.matrix_layer: {sim.matrix_layer} is not one of the layers read for {spec} "
            f"({config.lens_layers(n_layers)})"
        )
    if config.lens.enabled and config.lens.tuned and config.lens.train is None:
        from crosslens.lenses import LensError, parse_lens, precheck_lens

        try:
            precheck_lens(parse_lens(config.lens.tuned), n_layers)
        except LensError as exc:
            raise ConfigError(f"{source}: lens.lenses: {exc}") from None
    if config.steering is not None:
        bad = [layer for layer in config.steering.layers_for(spec) if layer > n_layers]
        if bad:
            key = f"layers_by_model.{spec}" if spec in config.steering.layers_by_model else "layers"
            raise ConfigError(
                f"{source}: steering.{key}: {bad} beyond the depth of {spec} (steerable layers 1..{n_layers})"
            )


def _check_datasets(config: ExperimentConfig, source: str) -> None:
    from crosslens.data import list_datasets

    known = {info.name: info for info in list_datasets()}
    seen: set[str] = set()
    for i, ds in enumerate(config.datasets):
        where = f"{source}: datasets[{i}]"
        langs = _check_dataset(ds, where, known)
        if ds.name in seen:
            raise ConfigError(
                f"{where}.name: dataset {ds.name!r} is listed twice (its results would share a folder)"
            )
        seen.add(ds.name)
        for lang in (config.neurons.ablate or []) if config.neurons and langs else []:
            if lang not in langs:
                raise ConfigError(
                    f"{source}: neurons.ablate: {lang!r} is not a language of datasets[{i}] ({ds.name}: "
                    f"{', '.join(langs)})"
                )
    train = config.lens.train
    if train is not None and train.dataset is not None:
        _check_dataset(train.dataset, f"{source}: lens.train.dataset", known)
    for k, path in enumerate(train.corpus or [] if train else []):
        if not path.expanduser().is_file():
            raise ConfigError(f"{source}: lens.train.corpus[{k}]: {path}: no such file")


def _check_dataset(ds: DatasetConfig, where: str, known: dict[str, Any]) -> list[str] | None:
    """One dataset entry against the registry (name, languages, split, files); returns its languages."""
    if ds.name not in known:
        close = difflib.get_close_matches(ds.name, list(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}.name: unknown dataset {ds.name!r}{hint}; known: {', '.join(known)}")
    info = known[ds.name]
    if ds.languages is not None:
        if not ds.languages:
            raise ConfigError(f"{where}.languages: must not be empty (omit it for all languages)")
        twice = sorted({lang for lang in ds.languages if ds.languages.count(lang) > 1})
        if twice:
            raise ConfigError(f"{where}.languages: {twice} listed twice")
        for lang in ds.languages if info.languages else ():
            if lang not in info.languages:
                close = difflib.get_close_matches(lang, info.languages, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(
                    f"{where}.languages: {ds.name} has no language {lang!r}{hint}; "
                    f"it has {', '.join(info.languages)}"
                )
    for key in ("split", "fewshot_split"):
        split = getattr(ds, key, None)
        if split is not None and split not in info.splits:
            raise ConfigError(
                f"{where}.{key}: {ds.name} has no split {split!r} "
                f"(splits: {', '.join(info.splits) or 'none'})"
            )
    if ds.data_dir is not None and not ds.data_dir.expanduser().exists():
        raise ConfigError(f"{where}.data_dir: {ds.data_dir}: no such file or folder")
    if ds.pivot_file is not None and not ds.pivot_file.expanduser().is_file():
        raise ConfigError(f"{where}.pivot_file: {ds.pivot_file}: no such file")
    return ds.languages or info.languages


# -- model depth without weights ----------------------------------------------------------------------
def _depth_from_config(cfg: dict[str, Any]) -> int | None:
    for c in (cfg, cfg.get("text_config") or {}):
        if isinstance(c.get("num_hidden_layers"), int):
            return c["num_hidden_layers"]
    return None


def _gguf_depth(path: Path) -> int:
    """Depth of a GGUF model: its cached conversion's config.json, else the GGUF header."""
    from crosslens.models import cache_root

    root = cache_root()
    for marker in root.glob("*/crosslens.json") if root.is_dir() else ():
        try:
            if json.loads(marker.read_text()).get("gguf") == str(path):
                depth = _depth_from_config(json.loads((marker.parent / "config.json").read_text()))
                if depth is not None:
                    return depth
        except (OSError, ValueError):
            continue
    from gguf import GGUFReader

    reader = GGUFReader(str(path))  # memory-maps the file; reads the header only
    arch_field = reader.fields["general.architecture"]
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode()
    count = reader.fields[f"{arch}.block_count"]
    return int(count.parts[count.data[0]][0])


def model_depth(spec: str, where: str = "model") -> int | None:
    """Number of decoder blocks of ``spec`` from its config alone; None when it cannot be read offline.

    ``where`` prefixes error messages (the config file and option).
    """
    from crosslens.models import ALIASES, ModelLoadError, ModelSpec

    try:
        parsed = ModelSpec.parse(spec)
        if parsed.kind == "alias":
            return _gguf_depth(ALIASES[spec]())
        if parsed.kind == "gguf":
            path = Path(parsed.location)
            if not path.is_file():
                raise ConfigError(f"{where}: GGUF file not found: {path}")
            return _gguf_depth(path)
        if parsed.kind == "local":
            folder = Path(parsed.location)
            if not (folder / "config.json").is_file():
                raise ConfigError(f"{where}: {spec} is not a model folder (no config.json)")
            return _depth_from_config(json.loads((folder / "config.json").read_text()))
        if parsed.kind == "name":
            raise parsed.unknown()
    except ModelLoadError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    name, revision = parsed.location, parsed.revision
    try:
        from transformers import AutoConfig

        return _depth_from_config(AutoConfig.from_pretrained(name, revision=revision).to_dict())
    except Exception as exc:  # offline, gated or missing: the depth is checked again once the model loads
        logger.warning(
            "%s: cannot read the depth of %s before loading it (%s); its layers are checked when it loads",
            where,
            spec,
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        )
        return None


# -- error messages ---------------------------------------------------------------------------------
def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The config section class inside an annotation (``list[DatasetConfig]``, ``X | None``, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _walk(loc: Sequence[str | int]) -> tuple[str, type[BaseModel] | None]:
    """Dotted option name for a pydantic error location, skipping union tags; and its section class."""
    model: type[BaseModel] | None = ExperimentConfig
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif model is not None and part in model.model_fields:
            name += f".{part}" if name else part
            model = _submodel(model.model_fields[part].annotation)
    return name, model


def _describe(exc: ValidationError) -> str:
    """The first validation error as ``option: problem``."""
    err = exc.errors()[0]
    loc = err["loc"]
    if err["type"] == "extra_forbidden":
        parent, model = _walk(loc[:-1])
        key = str(loc[-1])
        allowed = list(model.model_fields) if model else []
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"{parent + '.' if parent else ''}{key}: unknown key ({hint}allowed: {', '.join(allowed)})"
    name, _ = _walk(loc)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "too_short" and err.get("input") in ([], ()):
        msg = "must not be empty"
    elif err["type"] == "missing":
        msg = "required option is missing"
    return f"{name or '(top level)'}: {msg}"
