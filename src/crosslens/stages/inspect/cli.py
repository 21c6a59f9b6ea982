"""The inspection on the command line: ``crosslens inspect`` for one prompt, and the stage's summary."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from crosslens.console import out_console
from crosslens.lenses.kinds import check_trained_lenses
from crosslens.models.options import ModelOptions
from crosslens.options import Group, OptionError, options_command
from crosslens.stages.inspect.config import InspectConfig
from crosslens.stages.options import LayerOptions

__all__ = ["print_summary", "add_commands", "print_last_position"]


def print_last_position(title: str, rows: dict[str, list[dict[str, Any]]]) -> None:
    """Per layer (row) and prompt (column, e.g. a language): the top next token at the prompt's last
    position and its probability; a single prompt also gets its language and the entropy."""
    layers = sorted({c["layer"] for cells in rows.values() for c in cells})
    cells = {name: {c["layer"]: c for c in per} for name, per in rows.items()}
    table = Table(title=title)
    table.add_column("layer", justify="right")
    single = len(rows) == 1
    for name in rows:
        table.add_column("top token" if single else name)
    if single:
        for col in ("p", "language", "entropy"):
            table.add_column(col, justify="right")
    for layer in layers:
        row = [str(layer)]
        for per in cells.values():
            c = per.get(layer)
            row.append(
                "–" if c is None else (repr(c["token"]) if single else f"{c['token']!r} {c['prob']:.2f}")
            )
        if single:
            c = next(iter(cells.values())).get(layer, {})
            row += [f"{c['prob']:.3f}", c["token_language"], f"{c['entropy']:.2f}"] if c else ["–"] * 3
        table.add_row(*row)
    out_console.print(table)


def print_summary(summary: dict[str, Any], out: Path | None = None) -> None:
    """The top token at each language's last prompt position, per layer, through each lens."""
    for lens, per_language in summary["last_position"].items():
        print_last_position(f"{lens} lens: top next token at the last prompt position", per_language)


def _param(name: str, annotation: Any, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


_EXTRA = [
    _param("spec", Annotated[str, typer.Option("--model", "-m", help="alias, gguf:PATH, folder or Hub id")]),
    _param("prompt", Annotated[str | None, typer.Option(help="the text to read through the lens")], None),
    _param(
        "dataset",
        Annotated[str | None, typer.Option("--dataset", "-d", help="or read an item of this dataset")],
        None,
    ),
    _param("item", Annotated[str | None, typer.Option(help="the item's id (default: the first)")], None),
    _param("language", Annotated[str | None, typer.Option(help="the item's language")], None),
    _param("data_dir", Annotated[Path | None, typer.Option(help="folder with the dataset's files")], None),
    _param("split", Annotated[str | None, typer.Option(help="dataset split where it has several")], None),
    _param(
        "template",
        Annotated[str | None, typer.Option(help="prompt template name or text (default: the dataset's)")],
        None,
    ),
    _param(
        "out",
        Annotated[
            Path, typer.Option("--out", "-o", help="folder for inspect.html, inspect.png, inspect.parquet")
        ],
        Path("runs/inspect"),
    ),
]

_DATASET_FLAGS = {
    "name": "--dataset",
    "languages": "--language",
    "data_dir": "--data-dir",
    "split": "--split",
}


def _item_prompt(
    dataset: str, language: str | None, item: str | None, data_dir: Path | None, split: str | None,
    template: str | None,
) -> tuple[str, str, str]:  # fmt: skip
    """The zero-shot prompt of a dataset item (read and checked before any model loads): its text,
    item id and language."""
    import difflib

    from crosslens.data.options import DatasetConfig
    from crosslens.data.prompts import get_template, render

    config = DatasetConfig(name=dataset, languages=[language] if language else None, data_dir=data_dir,
                           split=split)  # fmt: skip
    try:
        known = config.check()
    except OptionError as exc:
        raise typer.BadParameter(f"{_DATASET_FLAGS.get(exc.field, exc.field)}: {exc.message}") from None
    if language is None:
        choice = f" (one of: {', '.join(known)})" if known else ""
        raise typer.BadParameter(f"--dataset needs --language: the language of the item to read{choice}")
    ds = config.read().require_items()
    ids = ds.item_ids()
    item_id = ids[0] if item is None else item
    if item_id not in ids:
        close = difflib.get_close_matches(item_id, ids, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise typer.BadParameter(
            f"--item: {dataset} has no item {item_id!r} in {language}{hint}; its {len(ids)} ids run from "
            f"{ids[0]!r} to {ids[-1]!r}: the 'id' of each item in its files (`crosslens datasets` says where "
            "they load from); leave --item out for the first"
        )
    return render(ds.item(language, item_id), get_template(template or ds.template)), item_id, language


def _check_layers(spec: str, layers: Sequence[int], depth: int | None) -> None:
    bad = [x for x in layers if depth is not None and x > depth]
    if bad:
        raise OptionError("layers", f"layer {bad[0]} does not exist in {spec} (layers 0..{depth})")


def add_commands(app: typer.Typer) -> None:
    """``crosslens inspect``: the lens picture of one prompt, into a folder."""

    groups = {"model": Group(ModelOptions), "layers": Group(LayerOptions), "section": Group(InspectConfig)}

    @options_command(app, "inspect", groups, _EXTRA)
    def inspect_cmd(
        model: ModelOptions,
        layers: LayerOptions,
        section: InspectConfig,
        spec: str,
        prompt: str | None,
        dataset: str | None,
        item: str | None,
        language: str | None,
        data_dir: Path | None,
        split: str | None,
        template: str | None,
        out: Path,
    ) -> None:
        """Draw the lens picture of one prompt (--prompt TEXT, or --dataset D --language L [--item ID]):
        per layer and position the top next tokens, their probabilities and languages, and the entropy;
        writes inspect.html (hover a cell for the top-k), inspect.png and inspect.parquet into --out."""
        from crosslens.models.loading import ModelLoadError, load_with, model_depth
        from crosslens.stages.inspect.stage import inspect_prompt, last_position, write_pictures
        from crosslens.stages.options import layers_read
        from crosslens.store import check_output

        if (prompt is None) == (dataset is None):
            raise typer.BadParameter(
                "give the text to read: --prompt TEXT, or --dataset D --language L [--item ID] (not both)"
            )
        if prompt is not None:
            item_flags = {"--item": item, "--language": language, "--data-dir": data_dir, "--split": split,
                          "--template": template}  # fmt: skip
            given = [flag for flag, value in item_flags.items() if value is not None]
            if given:
                raise typer.BadParameter(
                    f"{given[0]} reads a dataset item: give --dataset too, or leave it out"
                )
            if not prompt.strip():
                raise typer.BadParameter("--prompt is empty: give a text to read through the lens")
        check_output(out)
        model.available()
        try:
            depth = model_depth(spec)
        except ModelLoadError as exc:
            raise ModelLoadError(f"--model {spec}: {exc}") from None
        _check_layers(spec, layers.layers or [], depth)
        check_trained_lenses(section.lenses, n_layers=depth)
        if dataset is not None:
            text, item_id, language = _item_prompt(dataset, language, item, data_dir, split, template)
            title = f"{spec}: {dataset} item {item_id} ({language})"
        else:
            text, title = str(prompt), f"{spec}: lens picture"
        lm = load_with(model, spec, verbose=True)
        n_layers = lm.anatomy.n_layers
        _check_layers(spec, layers.layers or [], n_layers)
        wanted = layers_read(layers.spec(), n_layers)
        reading = inspect_prompt(lm, text, section.lenses, wanted, section.top_k)
        notes = [
            f"{lm.spec} ({lm.anatomy.model_type}, {n_layers} blocks, {lm.precision}); layers "
            f"{', '.join(map(str, wanted))} (0 = embeddings); top {section.top_k} tokens per cell.",
            "Languages: P(language | token) from wordfreq word frequencies and Unicode scripts (crosslens."
            "data.token_languages); 'none' = no identifiable language, 'ja/zh' = tied.",
        ]
        page, png, table = write_pictures(reading, out, title, text, notes)
        for lens in dict.fromkeys(reading["lens"]):
            rows = reading[reading["lens"] == lens]
            print_last_position(
                f"{lens} lens: top next token at the last position", {"prompt": last_position(rows)}
            )
        out_console.print(f"wrote {page}, {png} and {table}", highlight=False)
