"""The lens on the command line: its readings per layer as a table, and ``crosslens train-lens``."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import TextColumn
from rich.table import Table

from crosslens.console import out_console
from crosslens.lenses.options import TrainOptions
from crosslens.models.options import ModelOptions
from crosslens.options import MAX_SEED, Group, OptionError, csv, csv_ints, options_command

__all__ = ["print_summary", "add_commands"]


def print_summary(summary: dict[str, Any], out: Path | None = None) -> None:
    """Log ratio and latent accuracy per layer (a tuned lens adds the validation KL of both lenses)."""
    kind = summary.get("lens", "logit")
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


def _param(name: str, annotation: Any, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


_EXTRA = [
    _param("spec", Annotated[str, typer.Option("--model", "-m", help="alias, gguf:PATH, folder or Hub id")]),
    _param("out", Annotated[Path, typer.Option("--out", "-o", help="the lens folder (resumable)")]),
    _param(
        "corpus",
        Annotated[
            list[Path] | None, typer.Option("--corpus", help="text file, a document per line (repeatable)")
        ],
        None,
    ),
    _param(
        "dataset",
        Annotated[
            str | None, typer.Option("--dataset", "-d", help="train on these items' passages and questions")
        ],
        None,
    ),
    _param("data_dir", Annotated[Path | None, typer.Option(help="folder with the dataset's files")], None),
    _param("languages", Annotated[str | None, typer.Option(help="comma-separated language codes")], None),
    _param("split", Annotated[str | None, typer.Option(help="dataset split where it has several")], None),
    _param(
        "skip",
        Annotated[
            int,
            typer.Option(min=0, help="leave out the dataset's first N items (those a --limit N run reads)"),
        ],
        0,
    ),
    _param(
        "layers",
        Annotated[str | None, typer.Option(help="comma-separated layers (default: the paper's)")],
        None,
    ),
    _param("seed", Annotated[int, typer.Option(min=0, max=MAX_SEED, help="random seed")], 0),
]


def add_commands(app: typer.Typer) -> None:
    """``crosslens train-lens``: a tuned lens for one model, into a folder of its own."""

    @options_command(app, "train-lens", {"model": Group(ModelOptions), "train": Group(TrainOptions)}, _EXTRA)
    def train_lens_cmd(
        model: ModelOptions,
        train: TrainOptions,
        spec: str,
        out: Path,
        corpus: list[Path] | None,
        dataset: str | None,
        data_dir: Path | None,
        languages: str | None,
        split: str | None,
        skip: int,
        layers: str | None,
        seed: int,
    ) -> None:
        """Train a tuned lens (Belrose et al. 2023) for MODEL into --out: per layer, KL to the final layer."""
        from crosslens.console import progress
        from crosslens.data.options import DatasetConfig
        from crosslens.lenses.training import (
            TrainSettings,
            check_lens_folder,
            corpus_from_dataset,
            corpus_from_files,
            precheck_training,
            train_lens,
        )
        from crosslens.models.loading import content_identity, dtype_name, load_with, model_depth
        from crosslens.store import check_output

        if (corpus is None) == (dataset is None):
            raise typer.BadParameter("give the text to train on: --corpus FILE... or --dataset NAME")
        try:
            wanted = csv_ints(layers) if layers else []
        except ValueError as exc:
            raise OptionError("layers", str(exc)) from None
        depth = model_depth(spec)
        bad = [x for x in wanted if x < 0 or (depth is not None and x > depth)]
        if bad:
            raise OptionError("layers", f"layer {bad[0]} does not exist in {spec} (layers 0..{depth})")
        settings = TrainSettings(**train.model_dump(), layers=tuple(wanted) or None, seed=seed)
        check_output(out)
        check_lens_folder(out)
        model.available()
        if corpus:
            text = corpus_from_files(corpus)
        else:
            d = DatasetConfig(name=str(dataset), languages=csv(languages) if languages else None,
                              data_dir=data_dir, split=split)  # fmt: skip
            d.check()
            ds = d.read().require_items()
            kept = ds.item_ids()[skip:]
            if len(kept) < 2:
                raise typer.BadParameter(f"--skip {skip} leaves {len(kept)} of {dataset}'s {len(ds)} items")
            text = corpus_from_dataset(ds.subset(kept))
        known = {"spec": spec, "model_id": content_identity(spec)}
        known |= {} if depth is None else {"n_layers": depth}  # the folder is checked before the load
        precheck_training(out, known, dtype_name(model.dtype, model.device), model.device, settings, text)
        lm = load_with(model, spec, verbose=True)
        finished = (out / "lens.json").is_file()  # then reused as it is (or refused), nothing trained
        loss_column = TextColumn("{task.fields[loss]}")
        # Exactly --tokens positions are trained (lenses.training.schedule): the bar counts them.
        with progress(settings.tokens, "train-lens", True, loss_column, loss="") as (advance, _, _):

            def on_step(step: int, steps: int, loss: float, positions: int) -> None:
                advance(0, completed=positions, loss=f"step {step}/{steps}, mean KL {loss:.3f} nats")

            lens = train_lens(lm, text, out, settings, on_step)
        training = lens.info.training
        counts = training.get("positions") or {}  # a lens trained before counts were recorded has none
        held_out = f" on {counts['validation']:,} held-out positions" if "validation" in counts else ""
        table = Table(title=f"validation KL(final || lens), nats per token{held_out}")
        for col in ("layer", "tuned", "logit"):
            table.add_column(col, justify="right")
        for layer in lens.layers:
            table.add_row(str(layer), *(f"{lens.info.val_kl[k][str(layer)]:.3f}" for k in ("tuned", "logit")))
        out_console.print(table)
        done = f"{counts['train']:,} positions in " if "train" in counts else ""
        done += f"{training['steps']} steps"
        if finished:
            out_console.print(f"reused {out}, trained before with these settings ({done})")
        else:
            speed = training.get("tokens_per_second_this_run")
            out_console.print(f"wrote {out} ({done}; {speed} positions/s this run)")
