"""Cost as the work grows: evaluation against items, the lens against layers read, the steering
grid against the number of settings G.

* **eval vs items**: ``crosslens.evaluate`` (letters; ``--cloze`` adds full answers) on the first
  100, 300 and 900 Belebele items of each language, each size in a fresh process (so its peak
  resident memory is its own) writing into a fresh folder. Time should grow linearly in the items
  and peak memory should not grow at all: records are written per unit of ``chunk_size`` items and
  nothing of a finished unit is kept. Target: peak RSS at 900 items within 10 % of that at 100.
* **lens vs layers**: ``run_lens`` on the same items reading 1, 2, 5, 9 and every layer: one
  forward serves every layer, so the cost should be a constant (the forward) plus a term linear in
  the layers read (one head projection per layer and position read).
* **steering grid vs G**: ``steer_grid`` on crosslens-mini prompts for G = 1 … 50 (layer, gamma)
  settings: a prompt pass per batch plus a term linear in G (one-token rows per setting).

Writes one RESULTS.md section and ``scaling.png`` (three panels) next to this file.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import common
import torch
from scipy import stats

from crosslens.scoring.options import EvalOptions
from crosslens.stages.evaluate.stage import evaluate

PLOT = common.BENCH_DIR / "scaling.png"


def child_eval(args) -> None:
    """One size in this process: load, evaluate into a fresh folder, print a JSON line."""
    with common.scratch_dir() as workdir:
        lm, _ = common.load(args.model, workdir)
    ds = common.belebele(args.languages).limit(args.items)
    loaded_rss = common.psutil.Process().memory_info().rss
    with common.scratch_dir() as out, common.PeakRSS() as mem:
        start, cpu = time.perf_counter(), time.process_time()
        evaluate(lm, ds, Path(out) / "run", opts=EvalOptions(batch_size=args.batch_size, cloze=args.cloze))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(
        json.dumps(
            {
                "items": len(ds.item_ids()),
                "prompts": len(ds.item_ids()) * len(ds.languages),
                "wall": wall,
                "cpu": cpu,
                "rss_loaded_gib": loaded_rss / 2**30,
                "rss_peak_eval_gib": mem.peak / 2**30,
                "ru_maxrss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            }
        )
    )


def eval_sizes(args) -> list[dict]:
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--child", "--items", str(n), "--model", args.model,
               "--batch-size", str(args.batch_size), "--threads", str(args.threads),
               "--languages", *args.languages] + (["--cloze"] if args.cloze else [])  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(f"eval {n} items: {rows[-1]}", flush=True)
    return rows


def lens_layers(args, lm) -> list[tuple[int, float]]:
    from crosslens.stages.lens.stage import run_lens

    ds = common.belebele(args.languages).limit(args.lens_items)
    n = lm.anatomy.n_layers
    out = []
    for k in args.lens_layers:
        layers = sorted({max(1, round(n * (j + 1) / k)) for j in range(k)})
        with common.scratch_dir() as folder:
            start = time.perf_counter()
            run_lens(
                lm, ds, Path(folder) / "lens", layers=layers, opts=EvalOptions(batch_size=args.batch_size)
            )
            out.append((len(layers), time.perf_counter() - start))
        print(f"lens {len(layers)} layers: {out[-1][1]:.1f} s", flush=True)
    return out


def grid_sizes(args, lm) -> list[tuple[int, float]]:
    from crosslens.stages.steering.stage import steer_grid

    prompt_ids, label_ids, settings = common.steering_inputs(lm, args.grid_prompts, 10, args.batch_size)
    steer_grid(lm, prompt_ids[:2], label_ids[:2], settings[:1], None, args.batch_size)  # warm-up
    out = []
    for g in args.grid_sizes:
        start = time.perf_counter()
        steer_grid(lm, prompt_ids, label_ids, settings[:g], None, args.batch_size)
        out.append((g, time.perf_counter() - start))
        print(f"grid G={g}: {out[-1][1]:.1f} s", flush=True)
    return out


def linear_fit(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """Intercept, slope and R² of a least-squares line (how linear a cost is)."""
    fit = stats.linregress(x, y)
    return float(fit.intercept), float(fit.slope), float(fit.rvalue**2)


def cost_section(title: str, unit: str, points: list[tuple[int, float]], note: str) -> str:
    """A RESULTS.md section: seconds per amount of work, and how linear the cost is."""
    intercept, slope, r2 = linear_fit(*zip(*points, strict=True))
    rows = [[k, f"{t:.1f}", f"{t / k:.2f}"] for k, t in points]
    return (
        f"### {title}\n\n"
        + common.table([unit, "seconds", f"s / {unit}"], rows)
        + f"\n\nLinear fit: {intercept:.1f} s + {slope:.2f} s × {unit} (R² {r2:.4f}); {note}"
    )


def plot(evals: list[dict], lens: list[tuple[int, float]], grid: list[tuple[int, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(16, 3.6))
    items = [r["items"] for r in evals]
    ax[0].plot(items, [r["wall"] / 60 for r in evals], "o-")
    ax[0].set(xlabel="items per language", ylabel="minutes", title="eval: time vs items")
    ax[1].plot(items, [r["rss_peak_eval_gib"] for r in evals], "o-", label="peak during eval")
    ax[1].plot(items, [r["rss_loaded_gib"] for r in evals], "s--", label="after model load")
    ax[1].set(xlabel="items per language", ylabel="RSS GiB", title="eval: memory vs items", ylim=(0, None))
    ax[1].legend()
    ax[2].plot(*zip(*lens, strict=True), "o-")
    ax[2].set(xlabel="layers read", ylabel="seconds", title="lens: time vs layers", ylim=(0, None))
    ax[3].plot(*zip(*grid, strict=True), "o-")
    ax[3].set(xlabel="settings G", ylabel="seconds", title="steering grid: time vs G", ylim=(0, None))
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)


def main() -> None:
    ap = common.parser(__doc__, 0, "(child) items per language")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="gemma-3-270m", choices=common.MODELS)
    ap.add_argument("--languages", nargs="+", default=["eng_Latn", "deu_Latn"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 900], help="items per language")
    ap.add_argument("--cloze", action="store_true", help="also score full answers (default: letters only)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lens-items", type=int, default=16)
    ap.add_argument("--lens-layers", type=int, nargs="+", default=[1, 2, 5, 9, 18])
    ap.add_argument("--grid-prompts", type=int, default=12)
    ap.add_argument("--grid-sizes", type=int, nargs="+", default=[1, 5, 10, 25, 50])
    ap.add_argument("--parts", nargs="+", default=["eval", "lens", "grid"], choices=["eval", "lens", "grid"])
    args = common.parse(ap)
    if args.child:
        child_eval(args)
        return
    evals = eval_sizes(args) if "eval" in args.parts else []
    lens: list[tuple[int, float]] = []
    grid: list[tuple[int, float]] = []
    if {"lens", "grid"} & set(args.parts):
        with common.scratch_dir() as workdir:
            lm, _ = common.load(args.model, workdir)
        lens = lens_layers(args, lm) if "lens" in args.parts else []
        grid = grid_sizes(args, lm) if "grid" in args.parts else []
    sections = []
    if evals:
        base = evals[0]
        rows = [
            [r["items"], r["prompts"], f"{r['wall']:.1f}", f"{r['cpu']:.1f}",
             f"{1000 * r['wall'] / r['prompts']:.0f}",
             f"{r['rss_loaded_gib']:.2f}", f"{r['rss_peak_eval_gib']:.2f}",
             f"{100 * (r['rss_peak_eval_gib'] / base['rss_peak_eval_gib'] - 1):+.1f} %",
             f"{r['ru_maxrss_gib']:.2f}"]
            for r in evals
        ]  # fmt: skip
        fit = "one size: no fit."
        if len(evals) > 1:
            a, b, r2 = linear_fit([r["prompts"] for r in evals], [r["wall"] for r in evals])
            fit = (
                f"linear fit of wall time on prompts: {a:.1f} s + {1000 * b:.0f} ms × prompts (R² {r2:.4f})."
            )
        header = ["items / language", "prompts", "wall s", "CPU s", "ms / prompt", "RSS after load GiB",
                  "peak RSS in eval GiB", "peak vs smallest", "process max RSS GiB"]  # fmt: skip
        sections.append(
            "### Evaluation vs items\n\n"
            + common.table(header, rows)
            + f"\n\nTime: {fit} Target: peak RSS in eval at the largest size within 10 % of the smallest."
        )
    if lens:
        note = f"{args.lens_items} items × {len(args.languages)} languages."
        sections.append(cost_section("Lens vs layers read", "layers", lens, note))
    if grid:
        note = f"{args.grid_prompts} crosslens-mini 'de' prompts, settings = 10 layers × 5 gammas in order."
        sections.append(cost_section("Steering grid vs settings G", "G", grid, note))
    if evals and lens and grid:
        plot(evals, lens, grid)
        sections.append(f"Plot: `benchmarks/{PLOT.name}`.")
    body = "\n\n".join(sections)
    settings = {
        "model": args.model,
        "eval": f"Belebele {', '.join(args.languages)}, first N items of each, "
        + ("letters + cloze" if args.cloze else "letters only")
        + f", batch size {args.batch_size}, one process per size",
        "torch dtype": "float32",
    }
    common.append_results("Cost as the work grows (items, layers, settings)", settings, body)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
