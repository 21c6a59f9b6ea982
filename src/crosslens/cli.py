"""The ``crosslens`` command: a thin shell over the Python API (callable as ``main(argv)`` in tests)."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import sys
from collections.abc import Iterator, Sequence
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
from typer.exceptions import Abort, TyperException  # typer raises its own (vendored click) errors

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
Limit = Annotated[int | None, typer.Option(min=1, help="first N aligned items only")]
BatchSize = Annotated[str, typer.Option(help="prompts per forward pass, or 'auto' (halves on out-of-memory)")]
Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto (split across GPUs)")]
Dtype = Annotated[
    str,
    typer.Option(
        help="float32, bfloat16, float16, bf16-mixed (bfloat16 matmuls, float32 residual stream) or auto "
        "(bfloat16 where the device has bfloat16 matrix units)"
    ),
]
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
ClozeNorm = Annotated[
    str,
    typer.Option(
        help="full-answer score: log-prob per char, byte or token, pmi (minus the log-prob after an empty "
        "prompt) or none (the total)"
    ),
]
NumFewshot = Annotated[
    int,
    typer.Option(
        min=0, help="exemplars with their answer letters before each question (same items in every language)"
    ),
]
FewshotSplit = Annotated[
    str | None,
    typer.Option(
        help="split the exemplars are drawn from (default: items beyond --limit, else held-out items)"
    ),
]
ChatTemplate = Annotated[
    bool,
    typer.Option("--apply-chat-template", help="the prompt as the user turn of the model's chat template"),
]
SystemInstruction = Annotated[
    str | None, typer.Option(help="a system turn (without a chat template: a paragraph before the prompt)")
]
SkipLong = Annotated[
    bool, typer.Option(help="leave out items longer than the model's context (default: refuse them)")
]


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _numbers(value: str | None, option: str, kind: type = int) -> list:
    """A comma-separated list of numbers, or one usage error naming the option and the bad entry."""
    out = []
    for v in _csv(value) or []:
        try:
            out.append(kind(v))
        except ValueError:
            raise typer.BadParameter(
                f"{option}: {v!r} is not {'an integer' if kind is int else 'a number'}"
            ) from None
    return out


def _model(model: str) -> int | None:
    """Check a model spec from its config alone (unknown alias, missing folder or file): its depth,
    or None where it cannot be read offline (a Hub id)."""
    from crosslens.config import model_depth

    return model_depth(model, f"--model {model}")


def _layers(model: str, layers: list[int], option: str, first: int) -> list[int]:
    """Check requested layers against the model's depth from its config, before its weights load."""
    depth = _model(model)
    bad = [x for x in layers if x < first or (depth is not None and x > depth)]
    if bad:
        top = "" if depth is None else f"..{depth}"
        raise typer.BadParameter(f"{option}: layer {bad[0]} does not exist in {model} (layers {first}{top})")
    return layers


def _output(out: Path) -> Path:
    """Refuse an --out that can never be a writable folder, before anything loads."""
    from crosslens.store import check_output

    return check_output(out)


def _padding(side: str) -> str:
    if side not in ("left", "right"):
        raise typer.BadParameter(f"--padding-side must be left or right, got {side!r}")
    return side


def _cloze_norm(norm: str, allowed: Sequence[str] | None = None) -> str:
    from crosslens.evaluate import CLOZE_NORMS

    allowed = allowed or CLOZE_NORMS
    if norm not in allowed:
        raise typer.BadParameter(f"--cloze-norm must be one of {', '.join(allowed)}, got {norm!r}")
    return norm


def _device(device: str) -> str:
    from crosslens.models import check_device

    return check_device(device)


def _dtype(dtype: str, device: str) -> str:
    """The concrete dtype (``auto`` resolved for ``device``): what the folder's fingerprint holds."""
    from crosslens.models import ModelLoadError, dtype_name

    try:
        return dtype_name(dtype, device)
    except ModelLoadError as exc:
        raise typer.BadParameter(f"--dtype: {exc}") from None


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


def _inputs(key: str, model: str, device: str, dtype: str, out: Path, template: str | None, batch_size: str,
            data: tuple) -> tuple:  # fmt: skip
    """Everything checked before a model loads: the output path, the device, the batch size, the
    dataset (``data``: the arguments of :func:`_dataset`), and the folder's ``key`` stage against
    the model, dtype, data source and prompt. Returns (dataset, batch size)."""
    from crosslens.stages import precheck

    _output(out)
    _device(device)
    size = _batch_size(batch_size, device)
    ds = _dataset(*data)
    precheck(out, [key], model, dtype, ds, template)
    return ds, size


def _shots(data: tuple, ds, k: int, split: str | None):
    """Where ``k`` exemplars come from (checked before the model loads): ``split`` of the dataset,
    the items beyond ``--limit``, or None (drawn from the evaluated items, which then skip them)."""
    from crosslens.evaluate import fewshot_pool

    if split is not None and not k:
        raise typer.BadParameter("--fewshot-split needs --num-fewshot")
    if not k:
        return None
    name, languages, data_dir, limit, own_split, strict, pivot_file, pivot = data
    if split is not None:
        return _dataset(name, languages, data_dir, None, split, strict, pivot_file, pivot)
    pool = None
    if limit is not None:
        full = _dataset(name, languages, data_dir, None, own_split, strict, pivot_file, pivot)
        pool = fewshot_pool(full, ds, k)
    if pool is None and k >= len(ds):
        raise typer.BadParameter(
            f"--num-fewshot {k} leaves no item to evaluate ({len(ds)} aligned items); use --fewshot-split"
        )
    return pool


def _loaded(model: str, device: str, dtype: str, ds, template: str | None, skip_long: bool):
    """The loaded model and the dataset without items past its context (refused unless ``skip_long``)."""
    from crosslens.prompts import get_template
    from crosslens.scoring import fit_context

    lm = _load(model, device, dtype)
    ds, skipped = fit_context(lm, ds, get_template(template or ds.template), skip_long)
    if skipped:
        console.print(f"[yellow]skipped {skipped} items longer than {lm.spec}'s context", highlight=False)
    return lm, ds


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
    return (
        _loaded_dataset(name, languages, data_dir, split, strict, pivot_file, pivot)
        .require_items()
        .limit(limit)
    )


@functools.cache
def _loaded_dataset(name: str, languages: str | None, data_dir: Path | None, split: str | None, strict: bool,
                    pivot_file: Path | None, pivot: str | None):  # fmt: skip
    """The files read once per command (the few-shot pool reads the same files beyond ``--limit``)."""
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
    for line in ds.drop_report():
        console.print(f"[yellow]{escape(line)}", highlight=False)
    return ds


def _print_eval(summary: dict) -> None:
    from crosslens.metrics import table1_line

    table = Table(title=f"{summary['dataset']} — {summary['n_items']} items per language")
    table.add_column("language")
    table.add_column("accuracy", justify="right")
    table.add_column("cloze acc.", justify="right")
    table.add_column("cons. w/ pivot", justify="right")
    table.add_column("tr+ from pivot", justify="right")
    cloze = summary.get("cloze_accuracy", {})
    cons_pivot = summary.get("consistency_with_pivot") or {}
    trp_pivot = summary.get("tr_plus_from_pivot") or {}
    for lang, acc in summary["accuracy"].items():
        cons, trp = cons_pivot.get(lang), trp_pivot.get(lang)
        table.add_row(
            lang,
            f"{100 * acc:.1f}",
            f"{100 * cloze[lang]:.1f}" if lang in cloze else "-",
            "-" if cons is None else f"{cons:.3f}",
            "-" if trp is None else f"{trp:.3f}",
        )
    out_console.print(table)
    if summary.get("pivot") is None:
        out_console.print(
            "no English pivot in this run: the columns anchored on English are empty "
            "(give English items with --pivot-file, or add the English language)"
        )
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

    for info in list_datasets():
        langs = ", ".join(info.languages) if info.languages else "(any the folder holds)"
        splits = ", ".join(info.splits) + " (default first)" if info.splits else "–"
        # Sources hold brackets ("data_dir[/test]"): plain text, not rich markup.
        out_console.print(f"[bold]{info.name}[/bold]  {escape(info.description)}", highlight=False)
        for key, value in (("pivot", str(info.pivot)), ("splits", splits), ("languages", langs),
                           ("loads from", info.source)):  # fmt: skip
            out_console.print(f"  {key}: {escape(value)}", highlight=False)


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

    if not prompt.strip():
        raise typer.BadParameter("--prompt is empty: give a text whose next token to predict")
    dtype = _dtype(dtype, device)
    lm = _load(model, _device(device), dtype)
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
    cloze_norm: ClozeNorm = "char",
    num_fewshot: NumFewshot = 0,
    fewshot_split: FewshotSplit = None,
    apply_chat_template: ChatTemplate = False,
    system_instruction: SystemInstruction = None,
    strict: Strict = False,
    pivot_file: PivotFile = None,
    pivot: Pivot = None,
    skip_long: SkipLong = False,
    seed: int = 0,
) -> None:
    """Letter-choice (and cloze) evaluation with consistency and transfer (paper Table 1)."""
    from crosslens.evaluate import EvalOptions, eval_stage

    _padding(padding_side)
    _cloze_norm(cloze_norm)
    _model(model)
    data = (dataset, languages, data_dir, limit, split, strict, pivot_file, pivot)
    dtype = _dtype(dtype, device)
    ds, size = _inputs("eval", model, device, dtype, out, template, batch_size, data)
    shots = _shots(data, ds, num_fewshot, fewshot_split)
    lm, ds = _loaded(model, device, dtype, ds, template, skip_long)
    opts = EvalOptions(
        template=template, batch_size=size, padding_side=padding_side, cloze=not no_cloze,
        cloze_norm=cloze_norm, num_fewshot=num_fewshot, apply_chat_template=apply_chat_template,
        system_instruction=system_instruction,
    )  # fmt: skip
    _print_eval(_run(eval_stage(lm, ds, out, opts=opts, seed=seed, shots_from=shots), "eval"))


@app.command("import-lmeval")
def import_lmeval_cmd(
    results: Annotated[Path, typer.Argument(help="the --output_path of an lm_eval --log_samples run")],
    out: Out,
    family: Annotated[
        str | None, typer.Option(help="task family to import where the folder holds several (a dataset name)")
    ] = None,
    seed: int = 0,
) -> None:
    """Records from lm-evaluation-harness per-sample files, for `crosslens metrics` and `report`."""
    from crosslens.lmeval_import import import_stage

    _output(out)
    _print_eval(_run(import_stage(results, out, family, seed), "import"))


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
    every: Annotated[int, typer.Option(min=1, help="paper schedule: every Nth block ending at the last")] = 4,
    batch_size: BatchSize = "8",
    device: Device = "cpu",
    dtype: Dtype = "float32",
    template: TemplateOpt = None,
    split: Split = None,
    padding_side: Padding = "left",
    strict: Strict = False,
    pivot_file: PivotFile = None,
    pivot: Pivot = None,
    skip_long: SkipLong = False,
    seed: int = 0,
    lens: Annotated[
        list[str] | None,
        typer.Option("--lens", help="logit or tuned:LENS_DIR (repeat to read through several)"),
    ] = None,
    num_fewshot: NumFewshot = 0,
    fewshot_split: FewshotSplit = None,
    apply_chat_template: ChatTemplate = False,
    system_instruction: SystemInstruction = None,
) -> None:
    """Lens readings: native vs English answer probabilities per layer, latent accuracy, Table 2."""
    from crosslens.anatomy import paper_layers
    from crosslens.evaluate import EvalOptions
    from crosslens.lens import lens_stage
    from crosslens.lenses import LensError, load_lens, parse_lens, precheck_lens

    _padding(padding_side)
    requested = _layers(model, _numbers(layers, "--layers"), "--layers", 0)
    try:
        specs = [parse_lens(x) for x in lens or ["logit"]]
        for spec in specs:
            precheck_lens(spec, _model(model))
    except LensError as exc:
        raise typer.BadParameter(f"--lens: {exc}") from None
    data = (dataset, languages, data_dir, limit, split, strict, pivot_file, pivot)
    keys = ["lens" if s.kind == "logit" else "tuned_lens" for s in specs]
    dtype = _dtype(dtype, device)
    ds, size = _inputs(keys[0], model, device, dtype, out, template, batch_size, data)
    _precheck(out, keys[1:], model, dtype, ds, template)
    shots = _shots(data, ds, num_fewshot, fewshot_split)
    lm, ds = _loaded(model, device, dtype, ds, template, skip_long)
    chosen = requested or paper_layers(lm.anatomy.n_layers, every)
    opts = EvalOptions(
        template=template, batch_size=size, padding_side=padding_side, num_fewshot=num_fewshot,
        apply_chat_template=apply_chat_template, system_instruction=system_instruction,
    )  # fmt: skip
    stages = [
        lens_stage(lm, ds, out, layers=chosen, opts=opts, seed=seed, lens=load_lens(s, lm), shots_from=shots)
        for s in specs
    ]
    for stage in stages:
        stage.check()
    for spec, stage in zip(specs, stages):
        _print_lens(_run(stage, f"{spec.kind} lens"), spec.kind)


def _precheck(out: Path, keys: list[str], model: str, dtype: str, ds, template: str | None) -> None:
    from crosslens.stages import precheck

    precheck(out, keys, model, dtype, ds, template)


def _print_lens(summary: dict, kind: str) -> None:
    title = f"{kind} lens: log p(native)/p(English) and latent accuracy (mean over non-pivot languages)"
    table = Table(title=title)
    cols = ["layer", "log ratio", "acc native", "acc en", "acc label"]
    kl = summary.get("val_kl") or {}
    if kl:
        cols += ["val KL tuned", "val KL logit"]
    for col in cols:
        table.add_column(col, justify="right")
    for layer in summary["layers"]:
        acc = summary["latent_accuracy"]
        kls = [f"{kl[k][str(layer)]:.3f}" if str(layer) in kl.get(k, {}) else "–" for k in ("tuned", "logit")]
        table.add_row(
            str(layer),
            f"{summary['log_ratio'][layer]['mean']:+.3f}",
            *(f"{100 * acc[f][layer]['mean']:.1f}" for f in ("native", "en", "label")),
            *(kls if kl else []),
        )
    out_console.print(table)


@app.command("train-lens")
def train_lens_cmd(
    model: Model,
    out: Annotated[Path, typer.Option("--out", "-o", help="the lens folder (resumable)")],
    corpus: Annotated[
        list[Path] | None, typer.Option("--corpus", help="text file, a document per line (repeatable)")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", "-d", help="train on these items' passages and questions")
    ] = None,
    data_dir: DataDir = None,
    languages: Languages = None,
    split: Split = None,
    skip: Annotated[
        int, typer.Option(min=0, help="leave out the dataset's first N items (those a --limit N run reads)")
    ] = 0,
    layers: Annotated[str | None, typer.Option(help="comma-separated layers (default: the paper's)")] = None,
    tokens: Annotated[int, typer.Option(min=1, help="training positions in all")] = 8192,
    batch: Annotated[int, typer.Option(min=1, help="documents per step")] = 8,
    positions: Annotated[int, typer.Option(min=1, help="positions drawn per document and step")] = 32,
    seq_len: Annotated[int, typer.Option(min=2, help="tokens kept of each document")] = 128,
    val_tokens: Annotated[int, typer.Option(min=1, help="validation positions")] = 1024,
    lr: Annotated[float, typer.Option(min=0.0, help="Adam's learning rate (peak)")] = 1e-3,
    head_dtype: Annotated[
        str,
        typer.Option(help="the frozen head's dtype in training: auto (bfloat16 where the hardware has it)"),
    ] = "auto",
    device: Device = "cpu",
    dtype: Dtype = "float32",
    seed: int = 0,
) -> None:
    """Train a tuned lens (Belrose et al. 2023) for MODEL into --out: per layer, KL to the final layer."""
    from crosslens.lens_training import TrainSettings, corpus_from_dataset, corpus_from_files, train_lens

    if (corpus is None) == (dataset is None):
        raise typer.BadParameter("give the text to train on: --corpus FILE... or --dataset NAME")
    settings = TrainSettings(
        tuple(_layers(model, _numbers(layers, "--layers"), "--layers", 0)) or None, tokens, batch, positions,
        seq_len, val_tokens, lr=lr, seed=seed, head_dtype=head_dtype,
    )  # fmt: skip
    settings.check()
    _output(out)
    _device(device)
    if corpus:
        text = corpus_from_files(corpus)
    else:
        ds = _dataset(dataset, languages, data_dir, None, split, False)
        kept = ds.item_ids()[skip:]
        if len(kept) < 2:
            raise typer.BadParameter(f"--skip {skip} leaves {len(kept)} of {dataset}'s {len(ds)} items")
        text = corpus_from_dataset(ds.subset(kept))
    dtype = _dtype(dtype, device)
    lm = _load(model, device, dtype)
    columns = (TextColumn("[bold]train-lens"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn())  # fmt: skip
    per_step = settings.batch * settings.positions
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("positions", total=settings.steps * per_step, loss="")

        def on_step(step: int, steps: int, loss: float) -> None:
            bar.update(task, completed=step * per_step, loss=f"mean KL {loss:.3f} nats")

        lens = train_lens(lm, text, out, settings, on_step)
    table = Table(title=f"validation KL(final || lens), nats per token ({settings.val_tokens} positions)")
    for col in ("layer", "tuned", "logit"):
        table.add_column(col, justify="right")
    for layer in lens.layers:
        table.add_row(str(layer), *(f"{lens.info.val_kl[k][str(layer)]:.3f}" for k in ("tuned", "logit")))
    out_console.print(table)
    speed = lens.info.training.get("tokens_per_second_this_run")
    out_console.print(f"wrote {out} ({lens.info.training['steps']} steps; {speed} positions/s this run)")


@app.command()
def pca(
    model: Model,
    dataset: DatasetOpt,
    out: Out,
    data_dir: DataDir = None,
    languages: Languages = None,
    limit: Limit = None,
    n_items: Annotated[int, typer.Option(min=2, help="parallel items to project (the paper uses 50)")] = 50,
    layers: Annotated[str | None, typer.Option(help="comma-separated layers (>= 1)")] = None,
    every: Annotated[int, typer.Option(min=1, help="paper schedule: every Nth block ending at the last")] = 4,
    batch_size: BatchSize = "8",
    device: Device = "cpu",
    dtype: Dtype = "float32",
    template: TemplateOpt = None,
    split: Split = None,
    strict: Strict = False,
    pivot_file: PivotFile = None,
    pivot: Pivot = None,
    skip_long: SkipLong = False,
    seed: int = 0,
) -> None:
    """Activations at the last prompt token and their 2-D PCA per layer (Fig. 3)."""
    from crosslens.anatomy import paper_layers
    from crosslens.pca import pca_stage

    requested = _layers(model, _numbers(layers, "--layers"), "--layers", 1)
    data = (dataset, languages, data_dir, limit, split, strict, pivot_file, pivot)
    dtype = _dtype(dtype, device)
    ds, size = _inputs("pca", model, device, dtype, out, template, batch_size, data)
    lm, ds = _loaded(model, device, dtype, ds, template, skip_long)
    chosen = requested or [x for x in paper_layers(lm.anatomy.n_layers, every) if x > 0]
    stage = pca_stage(lm, ds, out, chosen, n_items, template, size, seed)
    summary = _run(stage, "pca")
    out_console.print(f"figure: {summary['figure']}")


@app.command()
def similarity(
    model: Model,
    dataset: DatasetOpt,
    out: Out,
    data_dir: DataDir = None,
    languages: Languages = None,
    limit: Limit = None,
    n_items: Annotated[
        int, typer.Option(min=4, help="seeded sample of parallel items (PCA's, by default)")
    ] = 50,
    pool: Annotated[
        str, typer.Option(help="last: the last prompt token's state; mean: mean over the prompt")
    ] = "last",
    n_boot: Annotated[int, typer.Option(min=0, help="bootstrap replicates over items for the CIs")] = 1000,
    layers: Annotated[str | None, typer.Option(help="comma-separated layers (0 = embeddings)")] = None,
    every: Annotated[int, typer.Option(min=1, help="paper schedule: every Nth block ending at the last")] = 4,
    matrix_layer: Annotated[
        int | None, typer.Option(help="layer of the pairwise CKA matrix (default: middle)")
    ] = None,
    batch_size: BatchSize = "8",
    device: Device = "cpu",
    dtype: Dtype = "float32",
    template: TemplateOpt = None,
    split: Split = None,
    strict: Strict = False,
    pivot_file: PivotFile = None,
    pivot: Pivot = None,
    skip_long: SkipLong = False,
    seed: int = 0,
) -> None:
    """Linear CKA (debiased and plain) and parallel vs non-parallel cosine between languages, per
    layer, with bootstrap CIs over items."""
    from crosslens.activations import POOLS
    from crosslens.anatomy import paper_layers
    from crosslens.similarity import similarity_stage

    if pool not in POOLS:
        raise typer.BadParameter(f"--pool must be one of {', '.join(POOLS)}, got {pool!r}")
    requested = _layers(model, _numbers(layers, "--layers"), "--layers", 0)
    if matrix_layer is not None:
        _layers(model, [matrix_layer], "--matrix-layer", 0)
    data = (dataset, languages, data_dir, limit, split, strict, pivot_file, pivot)
    dtype = _dtype(dtype, device)
    ds, size = _inputs("similarity", model, device, dtype, out, template, batch_size, data)
    lm, ds = _loaded(model, device, dtype, ds, template, skip_long)
    chosen = requested or paper_layers(lm.anatomy.n_layers, every)
    stage = similarity_stage(lm, ds, out, chosen, n_items, pool, n_boot, template, size, seed, matrix_layer)
    summary = _run(stage, "similarity")
    _print_similarity(summary)


def _print_similarity(summary: dict) -> None:
    pivot, langs = summary["pivot"], summary["languages"]
    level = round(100 * summary["level"])
    if pivot:
        others = [m for m in langs if m != pivot]
        table = Table(
            title=f"debiased linear CKA with {pivot}, pool={summary['pool']} "
            f"({level} % CIs: similarity_summary.json and the report)"
        )
        table.add_column("layer", justify="right")
        for m in others:
            table.add_column(m, justify="right")
        cka = summary["cka_with_pivot"]["debiased"]
        for layer in summary["layers"]:
            table.add_row(str(layer), *(f"{cka[m][layer]['cka']:.2f}" for m in others))
        out_console.print(table)
    table = Table(title=f"cosine of parallel vs non-parallel pairs, mean over language pairs [{level} % CI]")
    for col in ("layer", "parallel", "non-parallel", "gap"):
        table.add_column(col, justify="right")
    for layer in summary["layers"]:
        c = summary["cosine"][layer]["all_pairs"]
        table.add_row(
            str(layer),
            *(
                f"{c[k]['mean']:+.3f} [{c[k]['ci_low']:+.3f}, {c[k]['ci_high']:+.3f}]"
                for k in ("parallel", "nonparallel", "gap")
            ),
        )
    out_console.print(table)
    out_console.print(f"figures: {', '.join(summary['figures'].values())}")


@app.command()
def steer(
    model: Model,
    dataset: DatasetOpt,
    out: Out,
    layers: Annotated[str, typer.Option(help="comma-separated steering layers (1..n_layers)")],
    gammas: Annotated[
        str, typer.Option(help="comma-separated multipliers; 0 is always added")
    ] = "-3,-2,-1,0,1,2,3",
    n_vectors: Annotated[int, typer.Option(min=1, help="items the vectors are built from (held out)")] = 50,
    controls: Annotated[
        int,
        typer.Option(min=0, help="random directions of each vector's norm (+ the wrong language's vector)"),
    ] = 0,
    positions: Annotated[
        str, typer.Option(help="where gamma * v is added: last (the paper's), all, or last,all")
    ] = "last",
    cloze: Annotated[bool, typer.Option(help="also score the full answer texts under steering")] = True,
    cloze_norm: Annotated[
        str, typer.Option(help="full-answer score: log-prob per char, byte or token, or none (the total)")
    ] = "char",
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
    skip_long: SkipLong = False,
    seed: int = 0,
) -> None:
    """Cross-lingual activation steering sweep over layers and gammas (Figs. 4, 5, 7-11)."""
    from crosslens.evaluate import EvalOptions
    from crosslens.steering import POSITIONS, STEER_CLOZE_NORMS, check_gammas, steer_stage

    gamma_list = _numbers(gammas, "--gammas", float)
    if not gamma_list:
        raise typer.BadParameter("--gammas is empty: give at least one multiplier")
    try:
        check_gammas(gamma_list)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    layer_list = _layers(model, _numbers(layers, "--layers"), "--layers", 1)
    if not layer_list:
        raise typer.BadParameter("--layers is empty: give the blocks to steer")
    where = _csv(positions) or []
    bad = [p for p in where if p not in POSITIONS]
    if bad or not where:
        raise typer.BadParameter(f"--positions must be last, all or last,all; got {positions!r}")
    _cloze_norm(cloze_norm, STEER_CLOZE_NORMS)
    data = (dataset, languages, data_dir, limit, split, strict, pivot_file, pivot)
    dtype = _dtype(dtype, device)
    ds, size = _inputs("steer", model, device, dtype, out, template, batch_size, data)
    if n_vectors >= len(ds):
        raise typer.BadParameter(
            f"--n-vectors {n_vectors} leaves no items to evaluate ({len(ds)} aligned items)"
        )
    lm, ds = _loaded(model, device, dtype, ds, template, skip_long)
    opts = EvalOptions(template=template, batch_size=size, cloze=cloze, cloze_norm=cloze_norm)
    stage = steer_stage(
        lm, ds, out, ds.languages, layer_list, gamma_list, n_vectors, seed, opts, controls, where
    )
    _print_steering(_run(stage, "steer"))


def _print_steering(summary: dict) -> None:
    forms = [("", "letters")] + ([("cloze_", "cloze")] if "cloze" in summary["forms"] else [])
    for prefix, name in forms:
        table = Table(title=f"steering ({name}): change against gamma = 0, mean over steered languages")
        cols = (
            "layer",
            "γ",
            "pos.",
            "acc.",
            "Δ acc",
            "Δ cons. w/ en",
            "Δ tr+ from en",
            "sig. Holm",
            "p vs ctl",
        )
        for col in cols:
            table.add_column(col, justify="right")
        for s in summary["settings"]:
            control = s.get("controls", {}).get(f"{prefix}accuracy", {})
            p = control.get("p_empirical")
            table.add_row(
                str(s["layer"]),
                f"{s['gamma']:+g}",
                s["positions"],
                f"{100 * s[f'{prefix}accuracy']['mean']:.1f}",
                f"{100 * s[f'delta_{prefix}accuracy']['mean']:+.1f}",
                f"{s[f'delta_{prefix}consistency_en']['mean']:+.3f}",
                f"{s[f'delta_{prefix}tr_plus_from_en']['mean']:+.3f}",
                "–" if s["gamma"] == 0 else f"{s[f'{prefix}n_significant_holm']}/{len(s['per_language'])}",
                "–" if p is None or p != p else f"{p:.2f}",
            )
        out_console.print(table)


@app.command()
def neurons(
    model: Model,
    dataset: DatasetOpt,
    out: Out,
    ablate: Annotated[
        str | None,
        typer.Option(help="comma-separated languages whose neurons are deactivated (default: all)"),
    ] = None,
    n_text_items: Annotated[
        int, typer.Option(min=1, help="held-out items whose text the neurons are found from")
    ] = 50,
    top_rate: Annotated[
        float, typer.Option(help="fraction of all neurons kept by LAPE (lowest entropy)")
    ] = 0.01,
    filter_rate: Annotated[
        float, typer.Option(help="quantile of activation probabilities a candidate must exceed somewhere")
    ] = 0.95,
    activation_bar: Annotated[
        float, typer.Option(help="quantile a kept neuron must exceed in a language to be specific to it")
    ] = 0.95,
    n_boot: Annotated[int, typer.Option(min=0, help="bootstrap replicates for the paired CIs")] = 1000,
    cloze: Annotated[bool, typer.Option(help="also score the full answer texts")] = True,
    cloze_norm: ClozeNorm = "char",
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
    skip_long: SkipLong = False,
    seed: int = 0,
) -> None:
    """Language-specific neurons (LAPE) and the causal test: deactivate them, measure accuracy,
    consistency with English and transfer against a random-neuron control."""
    from crosslens.evaluate import EvalOptions
    from crosslens.neurons import check_rates, neuron_stage

    try:
        check_rates(top_rate, filter_rate, activation_bar)
    except ValueError as exc:
        raise typer.BadParameter(f"--{str(exc).replace('_', '-')}") from None
    _cloze_norm(cloze_norm)
    _model(model)
    data = (dataset, languages, data_dir, limit, split, strict, pivot_file, pivot)
    dtype = _dtype(dtype, device)
    ds, size = _inputs("neurons", model, device, dtype, out, template, batch_size, data)
    targets = _csv(ablate)
    for m in targets or []:
        if m not in ds.languages:
            raise typer.BadParameter(
                f"--ablate: {m!r} is not one of the languages ({', '.join(ds.languages)})"
            )
    if n_text_items >= len(ds):
        raise typer.BadParameter(
            f"--n-text-items {n_text_items} leaves no items to evaluate ({len(ds)} aligned items)"
        )
    lm, ds = _loaded(model, device, dtype, ds, template, skip_long)
    opts = EvalOptions(template=template, batch_size=size, cloze=cloze, cloze_norm=cloze_norm)
    stage = neuron_stage(
        lm, ds, out, targets, n_text_items, top_rate, filter_rate, activation_bar, n_boot, seed, opts
    )
    _print_neurons(_run(stage, "neurons"))


def _change(e: dict | None, scale: float, digits: int) -> str:
    """``-0.49 [-0.70, -0.32]``; – where undefined (consistency of English with itself)."""
    if not e or e["delta"] != e["delta"]:
        return "–"
    low, high = scale * e["ci_low"], scale * e["ci_high"]
    return f"{scale * e['delta']:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def _print_neurons(summary: dict) -> None:
    sel = summary["selection"]
    out_console.print(
        f"LAPE kept {sel['n_kept']} of {sel['n_neurons']} neurons; specific per language: "
        + ", ".join(f"{m} {n}" for m, n in summary["n_specific"].items()),
        highlight=False,
    )
    pivot = summary["pivot"]
    for score in ("cloze", "letters"):
        table = Table(
            title=f"deactivating a language's neurons: paired change in that language ({score}, 95 % CI)"
        )
        for col in (
            "ablated",
            "neurons",
            "n",
            "Δ acc (points)",
            "p McNemar",
            "Δ gold score",
            f"Δ cons. w/ {pivot}",
        ):
            table.add_column(col, justify="right")
        for m, kinds in summary["effects"].items():
            for kind, e in kinds.items():
                if score not in e:
                    continue
                own = e[score][m]
                table.add_row(
                    m,
                    kind,
                    str(e["n_neurons"]),
                    _change(own["accuracy"], 100.0, 1),
                    f"{own['accuracy']['p_mcnemar']:.2g}",
                    _change(own["gold_score"], 1.0, 2),
                    _change(own.get("consistency_pivot"), 1.0, 2),
                )
        if table.row_count:
            out_console.print(table)
    out_console.print(f"figures: {', '.join(summary['figures'].values())}")


@app.command("export-vectors")
def export_vectors_cmd(
    folder: Annotated[
        Path, typer.Argument(help="a steering result folder (holding steering_vectors.safetensors)")
    ],
    fmt: Annotated[
        str, typer.Option("--format", help="lm-eval (lm-evaluation-harness's steered model) or gguf")
    ],
    language: Annotated[str, typer.Option(help="the language whose vector v(language -> en) is exported")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the file to write (.pt for lm-eval, .gguf)")],
    layers: Annotated[
        str | None, typer.Option(help="comma-separated layers (default: all in the folder)")
    ] = None,
    coefficient: Annotated[float, typer.Option(help="gamma: the multiplier the other tool applies")] = 1.0,
) -> None:
    """Write steering vectors for lm-evaluation-harness (--model steered) or llama.cpp (control vector)."""
    from crosslens.steering import check_gammas
    from crosslens.vector_export import FORMATS, export_vectors

    if fmt not in FORMATS:
        raise typer.BadParameter(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    try:
        check_gammas([coefficient])
    except ValueError as exc:
        raise typer.BadParameter(str(exc).replace("--gammas", "--coefficient")) from None
    path = export_vectors(folder, out, fmt, language, _numbers(layers, "--layers") or None, coefficient)
    out_console.print(f"wrote {path}")


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


INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C (128 + SIGINT)


def _error(message: str) -> None:
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


def _usage(exc: TyperException) -> str:
    """A usage error as one line: click's message and where to read the options."""
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "crosslens"
    return f"{exc.format_message()} (see '{command} --help')"


def _os_error(exc: OSError) -> str:
    """A file-system fault as one line naming the file; nothing half-written is left behind."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device{where}; free some space and re-run the same command to resume"
    return f"{exc.strerror or exc}{where}"


def main(argv: list[str] | None = None) -> int:
    """Entry point: every known error becomes one ``error:`` line on stderr and exit code 2;
    Ctrl-C is one line and exit code 130."""
    from crosslens.anatomy import UnsupportedModelError
    from crosslens.data import DataError
    from crosslens.models import ModelLoadError
    from crosslens.ray_runner import RayBackendError
    from crosslens.store import RunMismatchError, StoreBusyError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--version"]:
        out_console.print(__version__)
        return 0
    _loaded_dataset.cache_clear()  # files are read once per command, never across commands
    try:
        # typer turns Ctrl-C into a returned 130 here; --help and explicit exits return their code.
        code = app(args=args, standalone_mode=False, prog_name="crosslens")
    except (KeyboardInterrupt, Abort):
        code = INTERRUPTED
    except TyperException as exc:  # usage errors: unknown option, bad value, missing option, ...
        _error(_usage(exc))
        return 2
    except OSError as exc:
        _error(_os_error(exc))
        return 2
    except (
        ModelLoadError,
        DataError,
        RunMismatchError,
        StoreBusyError,
        UnsupportedModelError,
        RayBackendError,
        ValueError,
    ) as exc:
        _error(str(exc))
        return 2
    except SystemExit as exc:
        return int(exc.code or 0)
    if code == INTERRUPTED:
        console.print("interrupted; re-run the same command to resume", highlight=False)
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
