"""The ``crosslens`` command: a thin shell over the Python API (callable as ``main(argv)`` in tests)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from crosslens import __version__

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=__doc__ and "Cross-lingual consistency, logit lens and activation steering for causal LMs.",
)
console = Console(stderr=True)
out_console = Console()

Model = Annotated[
    str, typer.Option("--model", "-m", help="alias (gemma-3-270m, smollm2-135m), gguf:PATH, folder or Hub id")
]
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="dataset name (see `crosslens datasets`)")]
DataDir = Annotated[
    Path | None, typer.Option(help="folder with the dataset's official files (default: the Hub)")
]
Languages = Annotated[str | None, typer.Option(help="comma-separated language codes (default: all)")]
Limit = Annotated[int | None, typer.Option(help="first N aligned items only")]
BatchSize = Annotated[str, typer.Option(help="prompts per forward pass, or 'auto' (halves on out-of-memory)")]
Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto (split across GPUs)")]
Dtype = Annotated[str, typer.Option(help="float32, bfloat16 or float16")]
Out = Annotated[Path, typer.Option("--out", "-o", help="output folder (resumable)")]
TemplateOpt = Annotated[
    str | None, typer.Option(help="prompt template name or text (default: the dataset's)")
]
Split = Annotated[str | None, typer.Option(help="dataset split where it has several")]
Padding = Annotated[str, typer.Option(help="padding side for batched prompts: left or right")]
PivotFile = Annotated[
    Path | None, typer.Option(help="English items for a dataset that ships none (xcopa, okapi-arc, jsonl)")
]
Pivot = Annotated[str | None, typer.Option(help="the English language code, if not the dataset's own")]
Strict = Annotated[bool, typer.Option(help="fail on the first data problem instead of dropping the item")]


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _batch_size(value: str, device: str) -> int:
    if value == "auto":
        return 64 if device != "cpu" else 16
    try:
        size = int(value)
    except ValueError:
        raise typer.BadParameter(
            f"--batch-size must be a positive integer or 'auto', got {value!r}"
        ) from None
    if size < 1:
        raise typer.BadParameter(f"--batch-size must be >= 1, got {size}")
    return size


def _precheck(key: str, out: Path, model: str, dtype: str, ds, template: str | None) -> None:
    """Refuse a folder made with another model, dtype, data source or prompt before loading the model."""
    from crosslens.evaluate import prompt_fingerprint
    from crosslens.prompts import get_template
    from crosslens.stages import stage_def
    from crosslens.store import Store

    expected = prompt_fingerprint(model, dtype, ds, get_template(template or ds.template))
    Store(out).precheck(stage_def(key).table, expected)


def _run(stage, what: str) -> dict:
    """Check the folder, then run a planned stage with a progress bar over its items."""
    from crosslens.stages import run_stage

    stage.check()
    with _progress(sum(len(u.item_ids) for u in stage.units), what) as advance:
        return run_stage(stage, advance)


@contextlib.contextmanager
def _progress(total: int, what: str) -> Iterator:
    columns = (
        TextColumn(f"[bold]{what}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


def _load(model: str, device: str, dtype: str, trust_remote_code: bool = False):
    from crosslens.models import load_model

    with console.status(f"loading {model}"):
        lm = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    console.print(
        f"loaded {model} ({lm.anatomy.model_type}, {lm.anatomy.n_layers} layers) in {lm.load_seconds:.1f}s"
    )
    return lm


def _dataset(
    name: str,
    languages: str | None,
    data_dir: Path | None,
    limit: int | None,
    split: str | None,
    strict: bool,
    pivot_file: Path | None = None,
    pivot: str | None = None,
):
    from crosslens.data import load_dataset

    ds = load_dataset(
        name,
        _csv(languages),
        data_dir=data_dir,
        strict=strict,
        split=split,
        pivot_file=pivot_file,
        pivot=pivot,
    )
    for lang, n in ds.dropped.items():
        if n:
            console.print(f"[yellow]{name}/{lang}: dropped {n} items missing in other languages")
    return ds.limit(limit)


def _print_eval(summary: dict) -> None:
    from crosslens.metrics import table1_line

    table = Table(title=f"{summary['dataset']} — {summary['n_items']} items per language")
    table.add_column("language")
    table.add_column("accuracy", justify="right")
    table.add_column("cloze acc.", justify="right")
    table.add_column("cons. w/ pivot", justify="right")
    table.add_column("tr+ from pivot", justify="right")
    cloze = summary.get("cloze_accuracy", {})
    for lang, acc in summary["accuracy"].items():
        cons = summary.get("consistency_with_pivot", {}).get(lang)
        trp = summary.get("tr_plus_from_pivot", {}).get(lang)
        table.add_row(
            lang,
            f"{100 * acc:.1f}",
            f"{100 * cloze[lang]:.1f}" if lang in cloze else "-",
            "-" if cons is None else f"{cons:.3f}",
            "-" if trp is None else f"{trp:.3f}",
        )
    out_console.print(table)
    out_console.print("letters: " + table1_line(summary))
    if summary.get("cloze"):
        out_console.print("cloze:   " + table1_line(summary["cloze"]))


@app.command()
def version() -> None:
    """Print the crosslens version."""
    out_console.print(__version__)


@app.command()
def datasets() -> None:
    """List datasets, their languages and where they load from."""
    from crosslens.data import list_datasets

    table = Table()
    for col in ("name", "pivot", "languages", "loads from"):
        table.add_column(col)
    for info in list_datasets():
        langs = ", ".join(info.languages) if info.languages else "(any)"
        # Sources hold brackets ("mmlu/okapi/[dev|val]"): cells are plain text, not rich markup.
        table.add_row(*(escape(cell) for cell in (info.name, str(info.pivot), langs, info.source)))
    out_console.print(table)


@app.command()
def info(
    model: Model = "gemma-3-270m",
    device: Device = "cpu",
    dtype: Dtype = "float32",
    prompt: Annotated[
        str, typer.Option(help="text whose next token is predicted")
    ] = "The capital of France is the city of",
) -> None:
    """Load a model, print its anatomy and one real next-token prediction."""
    import torch

    lm = _load(model, device, dtype)
    for key, value in lm.describe().items():
        out_console.print(f"{key:>20}: {value}")
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids.to(lm.input_device)
    with torch.inference_mode():
        logp = lm.model(ids).logits[0, -1].float().log_softmax(-1)
    top = logp.topk(5)
    out_console.print(
        f"{prompt!r} -> "
        + ", ".join(
            f"{lm.tokenizer.decode(int(i))!r} ({float(v.exp()):.2f})" for v, i in zip(top.values, top.indices)
        )
    )


@app.command("eval")
def eval_cmd(
    model: Model,
    dataset: DatasetOpt,
    out: Out,
    data_dir: DataDir = None,
    languages: Languages = None,
    limit: Limit = None,
    batch_size: BatchSize = "8",
    device: Device = "cpu",
    dtype: Dtype = "float32",
    template: TemplateOpt = None,
    split: Split = None,
    padding_side: Padding = "left",
    no_cloze: Annotated[bool, typer.Option("--no-cloze", help="skip full-answer (cloze) scoring")] = False,
    strict: Strict = False,
    pivot_file: PivotFile = None,
    pivot: Pivot = None,
    seed: int = 0,
) -> None:
    """Zero-shot letter-choice (and cloze) evaluation with consistency and transfer (paper Table 1)."""
    from crosslens.evaluate import EvalOptions, eval_stage

    ds = _dataset(dataset, languages, data_dir, limit, split, strict, pivot_file, pivot)
    _precheck("eval", out, model, dtype, ds, template)
    lm = _load(model, device, dtype)
    opts = EvalOptions(
        template=template,
        batch_size=_batch_size(batch_size, device),
        padding_side=padding_side,
        cloze=not no_cloze,
    )
    _print_eval(_run(eval_stage(lm, ds, out, opts=opts, seed=seed), "eval"))


@app.command()
def metrics(
    out: Annotated[Path, typer.Argument(help="an output folder with records/")], seed: int = 0
) -> None:
    """Recompute summary.json from the records alone and print it."""
    from crosslens.evaluate import summarize_records
    from crosslens.store import Store

    store = Store(out)
    stage = store.read_run().get("stages", {}).get("records")
    if not stage:
        raise typer.BadParameter(f"{out} has no evaluation run (no records stage in run.json)")
    items = stage.get("selection", {}).get("items")  # what summary.json was computed on
    summary = summarize_records(
        store, stage["dataset"], stage["languages"], stage["pivot"], seed=seed, items=items
    )
    _print_eval(summary)


@app.command()
def lens(
    model: Model,
    dataset: DatasetOpt,
    out: Out,
    data_dir: DataDir = None,
    languages: Languages = None,
    limit: Limit = None,
    layers: Annotated[str | None, typer.Option(help="comma-separated layers")] = None,
    every: Annotated[int, typer.Option(help="paper schedule: every Nth block ending at the last")] = 4,
    batch_size: BatchSize = "8",
    device: Device = "cpu",
    dtype: Dtype = "float32",
    template: TemplateOpt = None,
    split: Split = None,
    padding_side: Padding = "left",
    strict: Strict = False,
    pivot_file: PivotFile = None,
    pivot: Pivot = None,
    seed: int = 0,
) -> None:
    """Logit lens: native vs English answer probabilities per layer, latent accuracy, Table 2."""
    from crosslens.anatomy import paper_layers
    from crosslens.evaluate import EvalOptions
    from crosslens.lens import lens_stage

    ds = _dataset(dataset, languages, data_dir, limit, split, strict, pivot_file, pivot)
    _precheck("lens", out, model, dtype, ds, template)
    lm = _load(model, device, dtype)
    chosen = [int(x) for x in _csv(layers)] if layers else paper_layers(lm.anatomy.n_layers, every)
    opts = EvalOptions(
        template=template, batch_size=_batch_size(batch_size, device), padding_side=padding_side
    )
    summary = _run(lens_stage(lm, ds, out, layers=chosen, opts=opts, seed=seed), "lens")
    table = Table(title="log p(native)/p(English) and latent accuracy (mean over non-pivot languages)")
    for col in ("layer", "log ratio", "acc native", "acc en", "acc label"):
        table.add_column(col, justify="right")
    for layer in summary["layers"]:
        acc = summary["latent_accuracy"]
        table.add_row(
            str(layer),
            f"{summary['log_ratio'][layer]['mean']:+.3f}",
            *(f"{100 * acc[f][layer]['mean']:.1f}" for f in ("native", "en", "label")),
        )
    out_console.print(table)


@app.command()
def pca(
    model: Model,
    dataset: DatasetOpt,
    out: Out,
    data_dir: DataDir = None,
    languages: Languages = None,
    limit: Limit = None,
    n_items: Annotated[int, typer.Option(help="parallel items to project (the paper uses 50)")] = 50,
    layers: Annotated[str | None, typer.Option(help="comma-separated layers")] = None,
    every: int = 4,
    batch_size: BatchSize = "8",
    device: Device = "cpu",
    dtype: Dtype = "float32",
    template: TemplateOpt = None,
    split: Split = None,
    strict: Strict = False,
    pivot_file: PivotFile = None,
    pivot: Pivot = None,
    seed: int = 0,
) -> None:
    """Activations at the last prompt token, 2-D PCA per layer (Fig. 3) and an alignment number."""
    from crosslens.anatomy import paper_layers
    from crosslens.pca import pca_stage

    ds = _dataset(dataset, languages, data_dir, limit, split, strict, pivot_file, pivot)
    _precheck("pca", out, model, dtype, ds, template)
    lm = _load(model, device, dtype)
    chosen = [int(x) for x in _csv(layers)] if layers else paper_layers(lm.anatomy.n_layers, every)
    chosen = [layer for layer in chosen if layer > 0] if not layers else chosen
    stage = pca_stage(lm, ds, out, chosen, n_items, template, _batch_size(batch_size, device), seed)
    summary = _run(stage, "pca")
    table = Table(title="cross-language alignment of last-token states (cosine)")
    for col in ("layer", "parallel", "non-parallel", "gap"):
        table.add_column(col, justify="right")
    for layer, a in summary["alignment"].items():
        table.add_row(
            str(layer), f"{a['parallel_cosine']:.3f}", f"{a['nonparallel_cosine']:.3f}", f"{a['gap']:+.3f}"
        )
    out_console.print(table)
    out_console.print(f"figure: {summary['figure']}")


@app.command()
def steer(
    model: Model,
    dataset: DatasetOpt,
    out: Out,
    layers: Annotated[str, typer.Option(help="comma-separated steering layers (1..n_layers)")],
    gammas: Annotated[
        str, typer.Option(help="comma-separated multipliers; 0 is always added")
    ] = "-3,-2,-1,0,1,2,3",
    n_vectors: Annotated[int, typer.Option(help="items the vectors are built from (held out)")] = 50,
    data_dir: DataDir = None,
    languages: Languages = None,
    limit: Limit = None,
    batch_size: BatchSize = "8",
    device: Device = "cpu",
    dtype: Dtype = "float32",
    template: TemplateOpt = None,
    split: Split = None,
    strict: Strict = False,
    pivot_file: PivotFile = None,
    pivot: Pivot = None,
    seed: int = 0,
) -> None:
    """Cross-lingual activation steering sweep over layers and gammas (Figs. 4, 5, 7-11)."""
    from crosslens.evaluate import EvalOptions
    from crosslens.steering import steer_stage

    ds = _dataset(dataset, languages, data_dir, limit, split, strict, pivot_file, pivot)
    gamma_list = [float(g) for g in _csv(gammas) or []]
    _precheck("steer", out, model, dtype, ds, template)
    lm = _load(model, device, dtype)
    opts = EvalOptions(template=template, batch_size=_batch_size(batch_size, device))
    layer_list = [int(x) for x in _csv(layers) or []]
    stage = steer_stage(lm, ds, out, ds.languages, layer_list, gamma_list, n_vectors, seed, opts)
    summary = _run(stage, "steer")
    table = Table(title="steering: change against gamma = 0, mean over steered languages")
    for col in ("layer", "gamma", "accuracy", "Δ acc", "Δ cons. w/ en", "Δ tr+ from en"):
        table.add_column(col, justify="right")
    for s in summary["settings"]:
        table.add_row(
            str(s["layer"]),
            f"{s['gamma']:+g}",
            f"{100 * s['accuracy']['mean']:.1f}",
            f"{100 * s['delta_accuracy']['mean']:+.1f}",
            f"{s['delta_consistency_en']['mean']:+.3f}",
            f"{s['delta_tr_plus_from_en']['mean']:+.3f}",
        )
    out_console.print(table)


@app.command("run")
def run_cmd(
    config: Annotated[Path, typer.Argument(help="experiment YAML (keys: docs/report.md)")],
    backend: Annotated[
        str,
        typer.Option(help="local (this process) or ray (units as Ray tasks; pip install 'crosslens[ray]')"),
    ] = "local",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (ray backend; default: start a local Ray)")
    ] = None,
    progress: Annotated[bool, typer.Option(help="show the progress bar")] = True,
) -> None:
    """Run every model x dataset of an experiment config (resumable) and write the report."""
    from crosslens.runner import run_experiment

    path = run_experiment(config, backend=backend, progress=progress, address=address)
    out_console.print(f"report: {path}")


@app.command("report")
def report_cmd(out: Annotated[Path, typer.Argument(help="a result folder or a run root")]) -> None:
    """Redraw the figures and write report.html (self-contained) and report.md."""
    from crosslens.report import write_report

    out_console.print(f"report: {write_report(out)}")


@app.command()
def demo(
    output: Annotated[Path | None, typer.Option(help="output folder (default: runs/demo)")] = None,
    progress: Annotated[bool, typer.Option(help="show the progress bar")] = True,
) -> None:
    """Run the bundled demo: gemma-3-270m on crosslens-mini, every stage, then the report."""
    from crosslens.config import load_config
    from crosslens.runner import demo_config_path, run_experiment

    config = load_config(demo_config_path())
    if output is not None:
        config = config.model_copy(update={"output": output})
    path = run_experiment(config, progress=progress)
    out_console.print(f"demo report: {path.resolve()}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: known errors become one line on stderr and exit code 2."""
    from crosslens.anatomy import UnsupportedModelError
    from crosslens.data import DataError
    from crosslens.models import ModelLoadError
    from crosslens.ray_runner import RayBackendError
    from crosslens.store import RunMismatchError, StoreBusyError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--version":
        out_console.print(__version__)
        return 0
    if argv is not None and argv[:1] == ["--version"]:
        out_console.print(__version__)
        return 0
    try:
        app(args=argv, standalone_mode=False)
    except (
        ModelLoadError,
        DataError,
        RunMismatchError,
        StoreBusyError,
        UnsupportedModelError,
        RayBackendError,
        ValueError,
    ) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return 2
    except SystemExit as exc:  # typer/click exits (help, usage errors)
        return int(exc.code or 0)
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
