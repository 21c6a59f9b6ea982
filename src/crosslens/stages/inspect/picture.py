"""The lens picture of one prompt: a layers x positions grid, as a self-contained HTML page and a PNG.

Each cell is the lens's top token at that layer and position (the prediction of the *next* token),
coloured by its probability, with its language as a small tag; in the HTML page, hovering a cell
shows the top-k tokens with their probabilities and languages and the entropy. The page needs no
script and loads nothing (one ``<style>`` block; the hover box is CSS ``:hover`` on a hidden
element present in every cell). Tokens are shown escaped, whitespace made visible (``␣`` space,
``↵`` newline, ``⇥`` tab, ``\\uXXXX`` for other invisible characters, ``∅`` for an empty token).

The PNG shows the last :data:`PNG_POSITIONS` positions of a longer prompt (the page shows all);
its text is drawn with whichever installed fonts cover the token's script, and a character no
installed font has is written as ``\\uXXXX`` rather than as an empty box.
"""

from __future__ import annotations

import functools
import html
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import font_manager
from matplotlib.ft2font import FT2Font

from crosslens.render.figures import new_figure, save
from crosslens.store import atomic_write_text

__all__ = ["visible", "cell_colors", "grid_of", "html_page", "png_picture", "PNG_POSITIONS"]

PNG_POSITIONS = 24  # positions a PNG shows (the last ones): wider grids are unreadable as an image
CMAP = "YlGnBu"  # probability 0 -> pale yellow, 1 -> dark blue (readable in grey print)
_SHOWN = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def visible(text: str) -> str:
    """``text`` with whitespace and invisible characters made visible (see the module docstring)."""
    if not text:
        return "∅"
    out = []
    for ch in text:
        if ch in _SHOWN:
            out.append(_SHOWN[ch])
        elif unicodedata.category(ch)[0] in "CZ":  # other spaces, controls, format and private-use marks
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def cell_colors(prob: float) -> tuple[str, str]:
    """Background and text colour (hex) of a cell whose top token has probability ``prob``."""
    r, g, b, _ = matplotlib.colormaps[CMAP](float(np.clip(prob, 0.0, 1.0)))
    light = 0.299 * r + 0.587 * g + 0.114 * b > 0.55
    return matplotlib.colors.to_hex((r, g, b)), "#111111" if light else "#ffffff"


def grid_of(
    reading: pd.DataFrame, lens: str
) -> tuple[list[int], list[int], dict[tuple[int, int], pd.DataFrame]]:
    """One lens's cells: its layers (ascending), positions, and (layer, position) -> its top-k rows."""
    rows = reading[reading["lens"] == lens].sort_values(["layer", "position", "rank"])
    cells = {(int(k[0]), int(k[1])): g for k, g in rows.groupby(["layer", "position"], sort=True)}
    return sorted({k[0] for k in cells}), sorted({k[1] for k in cells}), cells


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.2em;color:#222}
h1{font-size:1.25em;margin:0 0 .3em} h2{font-size:1.05em;margin:1.2em 0 .4em}
p.meta{color:#555;margin:.2em 0;font-size:.9em} p.prompt{font-family:monospace;white-space:pre-wrap;
background:#f6f6f6;padding:.5em;max-width:80em}
table.grid{border-collapse:collapse;font-size:12px}
table.grid th{font-weight:normal;color:#444;padding:2px 4px;white-space:nowrap}
th.layer{text-align:right} th.input{font-family:monospace;vertical-align:top;max-width:7em;overflow:hidden;
text-overflow:ellipsis}
td.cell{position:relative;border:1px solid #fff;padding:2px 4px;min-width:3.2em;max-width:7em;
font-family:monospace;cursor:default}
td.cell .tok{display:block;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
td.cell .lang{display:block;font-size:9px;opacity:.75;white-space:nowrap;overflow:hidden;
text-overflow:ellipsis}
td.cell .tip{display:none;position:absolute;top:100%;left:0;z-index:10;background:#fff;color:#111;
border:1px solid #888;box-shadow:0 2px 6px rgba(0,0,0,.25);padding:4px 6px;white-space:nowrap;
font-size:12px}
td.cell:hover .tip{display:block} td.cell:hover{outline:2px solid #e4572e}
.tip table{border-collapse:collapse} .tip td{padding:1px 5px} .tip td.p{text-align:right}
.tip .where,.tip .h{color:#555}
.legend span{display:inline-block;width:2.2em;text-align:center;font-size:11px}
"""


def _tip(cell: pd.DataFrame, layer: int, position: int) -> str:
    e = html.escape
    first = cell.iloc[0]
    rows = "".join(
        f"<tr><td>{int(r.rank)}</td><td>{e(visible(r.token))}</td><td class='p'>{r.prob:.3f}</td>"
        f"<td>{e(r.token_language)}</td></tr>"
        for r in cell.itertuples()
    )
    return (
        f"<div class='tip'><div class='where'>layer {layer}, position {position} "
        f"(after {e(visible(first.input_token))})</div><table>{rows}</table>"
        f"<div class='h'>entropy {first.entropy:.2f} nats</div></div>"
    )


def _grid_html(reading: pd.DataFrame, lens: str) -> str:
    e = html.escape
    layers, positions, cells = grid_of(reading, lens)
    lines = ["<table class='grid'>"]
    for layer in reversed(layers):  # the last layer on top, as the model's output
        tds = []
        for pos in positions:
            cell = cells[(layer, pos)]
            top = cell.iloc[0]
            bg, fg = cell_colors(top.prob)
            tds.append(
                f"<td class='cell' data-layer='{layer}' data-position='{pos}' "
                f"style='background:{bg};color:{fg}'><span class='tok'>{e(visible(top.token))}</span>"
                f"<span class='lang'>{e(top.token_language)} {top.prob:.2f}</span>"
                f"{_tip(cell, layer, pos)}</td>"
            )
        lines.append(f"<tr><th class='layer'>layer {layer}</th>{''.join(tds)}</tr>")
    inputs = {pos: cells[(layers[0], pos)].iloc[0].input_token for pos in positions}
    heads = "".join(f"<th class='input'>{e(visible(inputs[p]))}<br>{p}</th>" for p in positions)
    lines.append(f"<tr><th class='layer'>input</th>{heads}</tr></table>")
    return "\n".join(lines)


def _legend() -> str:
    spans = []
    for p in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        bg, fg = cell_colors(p)
        spans.append(f"<span style='background:{bg};color:{fg}'>{p:.1f}</span>")
    return f"<p class='meta legend'>probability of the top token: {''.join(spans)}</p>"


def html_page(reading: pd.DataFrame, title: str, prompt: str, notes: Sequence[str] = ()) -> str:
    """The page of one prompt's reading (the rows of one prompt, one grid per lens)."""
    e = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        *(f"<p class='meta'>{e(n)}</p>" for n in notes),
        f"<p class='prompt'>{e(prompt)}</p>",
        "<p class='meta'>Each cell: the lens's most probable <em>next</em> token after the input token below "
        "it, at that layer (last layer on top), its language and probability; hover a cell for the top "
        "tokens and the entropy. ␣ is a space, ↵ a newline.</p>",
        _legend(),
    ]
    for lens in dict.fromkeys(reading["lens"]):
        parts += [f"<h2>{e(str(lens))} lens</h2>", _grid_html(reading, str(lens))]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_page(reading: pd.DataFrame, path: Path, title: str, prompt: str, notes: Sequence[str] = ()) -> Path:
    """:func:`html_page` written atomically to ``path``."""
    atomic_write_text(path, html_page(reading, title, prompt, notes))
    return path


# -- the PNG ------------------------------------------------------------------------------------------------
_FALLBACKS = (
    "DejaVu Sans",
    "Noto Sans",
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Noto Sans Devanagari",
    "Noto Sans Arabic",
    "Noto Sans Bengali",
    "Noto Sans Thai",
    "Noto Sans Hebrew",
    "Noto Sans Tamil",
    "Noto Sans Georgian",
    "Noto Sans Armenian",
    "Noto Sans Ethiopic",
    "Droid Sans Fallback",
    "WenQuanYi Zen Hei",
)


@functools.cache
def _fonts() -> tuple[tuple[str, ...], frozenset[int], frozenset[int]]:
    """The installed families of :data:`_FALLBACKS` (matplotlib falls back along them glyph by glyph),
    the code points their regular faces cover together, and those the first (the default) covers."""
    families, covered, default = [], set(), frozenset()
    for name in _FALLBACKS:
        try:
            path = font_manager.findfont(font_manager.FontProperties(family=name), fallback_to_default=False)
            charmap = FT2Font(path).get_charmap()
        except (ValueError, OSError, RuntimeError):  # not installed, or an unreadable file: no help
            continue
        default = default or frozenset(charmap)
        covered.update(charmap)
        families.append(name)
    return tuple(families), frozenset(covered), default


def _text(text: str) -> tuple[str, list[str] | None]:
    """``text`` as drawn (a character no installed font covers written as ``\\uXXXX``) and the font
    families to draw it with: the fallback list only where the default font lacks a character (a
    fallback lookup per text is what makes a grid of hundreds of cells slow)."""
    families, covered, default = _fonts()
    drawn = "".join(ch if ord(ch) in covered else f"\\u{ord(ch):04x}" for ch in text)
    return drawn, (list(families) if any(ord(ch) not in default for ch in drawn) else None)


def _short(text: str, n: int) -> str:
    text = visible(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def png_picture(reading: pd.DataFrame, path: str | Path, title: str) -> Path:
    """The grid of every lens of ``reading`` (one prompt) as a PNG: one panel per lens."""
    lenses = list(dict.fromkeys(str(x) for x in reading["lens"]))
    layers, positions, _ = grid_of(reading, lenses[0])
    shown = positions[-PNG_POSITIONS:]
    cols, rows = len(shown), len(layers)
    fig = new_figure(max(6.0, 0.62 * cols + 1.6), len(lenses) * (0.46 * rows + 1.3) + 0.5)
    axes = fig.subplots(len(lenses), 1, squeeze=False).ravel()
    cmap = matplotlib.colormaps[CMAP]
    image = None
    for ax, lens in zip(axes, lenses):
        layers, _, cells = grid_of(reading, lens)
        probs = np.array([[cells[(ell, p)].iloc[0].prob for p in shown] for ell in layers])
        image = ax.imshow(probs, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", origin="lower")
        for i, ell in enumerate(layers):
            for j, p in enumerate(shown):
                top = cells[(ell, p)].iloc[0]
                colour = cell_colors(top.prob)[1]
                text, family = _text(_short(top.token, 7))
                ax.text(
                    j, i + 0.13, text, ha="center", va="center", fontsize=7, color=colour, fontfamily=family
                )
                ax.text(j, i - 0.27, str(top.token_language), ha="center", va="center", fontsize=5.5,
                        color=colour, alpha=0.8)  # fmt: skip
        inputs = [_text(_short(cells[(layers[0], p)].iloc[0].input_token, 10)) for p in shown]
        ax.set_xticks(range(cols), [t for t, _ in inputs], rotation=60, ha="right", fontsize=6.5)
        for label, (_, family) in zip(ax.get_xticklabels(), inputs):
            if family:
                label.set_fontfamily(family)
        ax.set_yticks(range(rows), [str(ell) for ell in layers], fontsize=7)
        ax.set_ylabel("layer", fontsize=8)
        more = f" (the last {cols} of {len(positions)} positions)" if cols < len(positions) else ""
        ax.set_title(f"{lens} lens{more}", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8, pad=0.01).set_label("p(top token)", fontsize=8)
    text, family = _text(title)
    fig.suptitle(text, fontsize=10, fontfamily=family)
    return save(fig, path)
