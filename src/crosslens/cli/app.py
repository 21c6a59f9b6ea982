"""The ``crosslens`` command: a thin shell over the Python API (callable as ``main(argv)`` in tests).

The app is built from the registry each time :func:`main` runs, so a stage or lens kind registered
by a plugin (or a test) has its command like the built-in ones. Every known error becomes one
``error:`` line on stderr and exit code 2.
"""

from __future__ import annotations

import errno
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.exceptions import Abort, TyperException  # typer raises its own (vendored click) errors

from crosslens import __version__
from crosslens.console import console, escape, out_console

__all__ = ["build_app", "main"]

INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C (128 + SIGINT)


def _general(app: typer.Typer) -> None:
    """The commands that are no stage: version, datasets, info, run, report, demo."""

    @app.command()
    def version() -> None:
        """Print the crosslens version."""
        out_console.print(__version__)

    @app.command()
    def datasets() -> None:
        """List datasets, their languages and where they load from."""
        from crosslens.data.registry import list_datasets

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
        model: Annotated[str, typer.Option("--model", "-m", help="alias, gguf:PATH, folder or Hub id")] = (
            "gemma-3-270m"
        ),
        device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto")] = "cpu",
        dtype: Annotated[
            str, typer.Option(help="float32, bfloat16, float16, bf16-mixed or auto")
        ] = "float32",
        prompt: Annotated[
            str, typer.Option(help="text whose next token is predicted")
        ] = "The capital of France is the city of",
    ) -> None:
        """Load a model, print its anatomy and one real next-token prediction."""
        import torch

        from crosslens.models.loading import load_with
        from crosslens.models.options import ModelOptions
        from crosslens.options import OptionError, flag_of, from_cli

        if not prompt.strip():
            raise typer.BadParameter("--prompt is empty: give a text whose next token to predict")
        try:
            options = from_cli(ModelOptions, {"device": device, "dtype": dtype}).available()
        except OptionError as exc:
            raise typer.BadParameter(f"{flag_of(ModelOptions, exc.field)}: {exc.message}") from None
        lm = load_with(options, model, verbose=True)
        for key, value in lm.describe().items():
            out_console.print(f"{key:>20}: {value}")
        ids = lm.tokenizer(prompt, return_tensors="pt").input_ids.to(lm.input_device)
        with torch.inference_mode():
            logp = lm.model(ids).logits[0, -1].float().log_softmax(-1)
        top = logp.topk(5)
        out_console.print(
            f"{prompt!r} -> "
            + ", ".join(
                f"{lm.tokenizer.decode(int(i))!r} ({float(v.exp()):.2f})"
                for v, i in zip(top.values, top.indices)
            )
        )

    @app.command("run")
    def run_cmd(
        config: Annotated[Path, typer.Argument(help="experiment YAML (keys: docs/report.md)")],
        backend: Annotated[
            str,
            typer.Option(
                help="local (this process) or ray (units as Ray tasks; pip install 'crosslens[ray]')"
            ),
        ] = "local",
        address: Annotated[
            str | None, typer.Option(help="Ray cluster address (ray backend; default: start a local Ray)")
        ] = None,
        progress: Annotated[bool, typer.Option(help="show the progress bar")] = True,
    ) -> None:
        """Run every model x dataset of an experiment config (resumable) and write the report."""
        from crosslens.experiment.runner import run_experiment

        path = run_experiment(config, backend=backend, progress=progress, address=address)
        out_console.print(f"report: {path}")

    @app.command("report")
    def report_cmd(out: Annotated[Path, typer.Argument(help="a result folder or a run root")]) -> None:
        """Redraw the figures and write report.html (self-contained) and report.md."""
        from crosslens.experiment.report import write_report

        out_console.print(f"report: {write_report(out)}")

    @app.command()
    def demo(
        full: Annotated[
            bool,
            typer.Option(
                "--full",
                help="every item and setting (examples/demo.yaml, about 12 minutes on 2 cores) instead of "
                "the quick demo (examples/demo-quick.yaml)",
            ),
        ] = False,
        output: Annotated[
            Path | None, typer.Option(help="output folder (default: runs/demo-quick, with --full runs/demo)")
        ] = None,
        progress: Annotated[bool, typer.Option(help="show the progress bar")] = True,
    ) -> None:
        """Run the bundled demo: gemma-3-270m on crosslens-mini, every stage, then the report."""
        from crosslens.experiment.config import load_config
        from crosslens.experiment.runner import demo_config_path, run_experiment

        config = load_config(demo_config_path(full))
        if output is not None:
            config = config.model_copy(update={"output": output})
        path = run_experiment(config, progress=progress)
        out_console.print(f"demo report: {path.resolve()}")


def build_app() -> typer.Typer:
    """The typer app: the general commands, one per registered stage, and the interop commands."""
    from crosslens.cli.stages import add_stage_commands
    from crosslens.interop.cli import add_commands as add_interop

    app = typer.Typer(
        add_completion=False,
        no_args_is_help=True,
        help="Cross-lingual consistency, logit lens and activation steering for causal LMs.",
    )
    _general(app)
    add_stage_commands(app)
    add_interop(app)
    return app


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
    from crosslens.errors import CrosslensError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--version"]:
        out_console.print(__version__)
        return 0
    try:
        # typer turns Ctrl-C into a returned 130 here; --help and explicit exits return their code.
        code = build_app()(args=args, standalone_mode=False, prog_name="crosslens")
    except (KeyboardInterrupt, Abort):
        code = INTERRUPTED
    except TyperException as exc:  # usage errors: unknown option, bad value, missing option, ...
        _error(_usage(exc))
        return 2
    except OSError as exc:
        _error(_os_error(exc))
        return 2
    except (CrosslensError, ValueError) as exc:
        _error(str(exc))
        return 2
    except SystemExit as exc:
        return int(exc.code or 0)
    if code == INTERRUPTED:
        console.print("interrupted; re-run the same command to resume", highlight=False)
    return code if isinstance(code, int) else 0


def __getattr__(name: str) -> typer.Typer:
    if name == "app":  # the built-in commands' app, for documentation tools and tests
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
