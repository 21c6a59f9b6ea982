"""``crosslens import-lmeval`` and ``crosslens export-vectors``: crosslens results to and from other tools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crosslens.console import out_console
from crosslens.options import MAX_SEED, OptionError, csv_ints

__all__ = ["add_commands"]


def add_commands(app: typer.Typer) -> None:
    @app.command("import-lmeval")
    def import_lmeval_cmd(
        results: Annotated[Path, typer.Argument(help="the --output_path of an lm_eval --log_samples run")],
        out: Annotated[Path, typer.Option("--out", "-o", help="output folder (resumable)")],
        family: Annotated[
            str | None,
            typer.Option(help="task family to import where the folder holds several (a dataset name)"),
        ] = None,
        seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="bootstrap seed")] = 0,
    ) -> None:
        """Records from lm-evaluation-harness per-sample files, for `crosslens metrics` and `report`."""
        from crosslens.console import progress
        from crosslens.interop.lmeval_import import import_stage
        from crosslens.stages.base import run_stage
        from crosslens.stages.evaluate.cli import print_summary
        from crosslens.store import check_output

        check_output(out)
        stage = import_stage(results, out, family, seed)
        stage.check()
        with progress(sum(len(u.item_ids) for u in stage.units), "import") as (advance, _, _):
            print_summary(run_stage(stage, advance))

    @app.command("export-vectors")
    def export_vectors_cmd(
        folder: Annotated[
            Path, typer.Argument(help="a steering result folder (holding steering_vectors.safetensors)")
        ],
        fmt: Annotated[
            str, typer.Option("--format", help="lm-eval (lm-evaluation-harness's steered model) or gguf")
        ],
        language: Annotated[
            str, typer.Option(help="the language whose vector v(language -> en) is exported")
        ],
        out: Annotated[Path, typer.Option("--out", "-o", help="the file to write (.pt for lm-eval, .gguf)")],
        layers: Annotated[
            str | None, typer.Option(help="comma-separated layers (default: all in the folder)")
        ] = None,
        coefficient: Annotated[
            float, typer.Option(help="gamma: the multiplier the other tool applies")
        ] = 1.0,
    ) -> None:
        """Write steering vectors for lm-eval (--model steered) or llama.cpp (a control vector)."""
        from crosslens.interop.vector_export import FORMATS, export_vectors
        from crosslens.stages.steering.config import check_gammas

        if fmt not in FORMATS:
            raise typer.BadParameter(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        try:
            check_gammas([coefficient])
            wanted = csv_ints(layers) if layers else None
        except OptionError as exc:
            raise typer.BadParameter(f"--coefficient: {exc.message}") from None
        except ValueError as exc:
            raise typer.BadParameter(f"--layers: {exc}") from None
        try:
            path = export_vectors(folder, out, fmt, language, wanted, coefficient)
        except OptionError as exc:  # the options' fields are spelled as this command's flags
            raise typer.BadParameter(f"--{exc.field.replace('_', '-')}: {exc.message}") from None
        out_console.print(f"wrote {path}")
