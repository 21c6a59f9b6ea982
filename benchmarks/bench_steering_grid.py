"""Activation steering: crosslens ``steer_grid`` vs one full steered forward per setting.

For G (layer, gamma) settings on the same prompts, both paths give the label log-probabilities at
``Answer:`` with gamma * v added to the output of block ``layer`` at the last prompt token:

* grid: ``steer_grid`` — each batch's prompts minus their last token are encoded once (KV cache
  kept), then the last token of every prompt under every setting runs as one-token rows;
* naive: ``steered_full_forward`` once per setting and length batch (a full prompt pass each).

The vectors come from ``build_vectors`` on held-out crosslens-mini items (Eq. 8).
Settings: G = 1 is the middle layer at gamma = 2; G = 5 adds the other gammas at that layer;
G = 25 is every (layer, gamma) pair; G = 25c is the middle layer's 5 gammas, each with the real
vector and 4 random controls of its norm (``--controls 4``). Target: equal log-probs (≤ 1e-4),
25-setting grids ≥ 10× naive.
"""

from __future__ import annotations

import argparse

import common
import numpy as np
import torch

from crosslens.data.prompts import get_template, render
from crosslens.data.registry import load_dataset
from crosslens.models.passes import length_batches
from crosslens.scoring.choices import label_plan
from crosslens.stages.steering.grid import steered_full_forward
from crosslens.stages.steering.stage import build_vectors, control_vector, steer_grid

GAMMAS = common.GAMMAS


def naive(lm, prompt_ids, label_ids, settings, batch_size):
    """One full steered forward per setting and length batch; ``settings``: (layer, delta) pairs."""
    out = []
    for layer, delta in settings:
        res = [np.empty(0)] * len(prompt_ids)
        for batch in length_batches([len(p) for p in prompt_ids], batch_size):
            lps = steered_full_forward(
                lm,
                [prompt_ids[i] for i in batch],
                layer,
                delta.expand(len(batch), -1),
                [label_ids[i] for i in batch],
            )
            for i, lp in zip(batch, lps, strict=True):
                res[i] = lp
        out.append(res)
    return out


def grid(lm, prompt_ids, label_ids, settings, batch_size):
    return [
        [labels for labels, _ in row]
        for row in steer_grid(lm, prompt_ids, label_ids, settings, None, batch_size)
    ]


def compare(lm, prompt_ids, label_ids, g: str, settings, args: argparse.Namespace) -> list[object]:
    runs = common.alternate(
        args.repeats,
        {
            "grid": lambda: grid(lm, prompt_ids, label_ids, settings, args.batch_size),
            "naive": lambda: naive(lm, prompt_ids, label_ids, settings, args.batch_size),
        },
    )
    got, ref = runs.results["grid"], runs.results["naive"]
    pairs = [(a, b) for x, y in zip(got, ref, strict=True) for a, b in zip(x, y, strict=True)]
    diff = max(float(np.max(np.abs(a - b))) for a, b in pairs)
    flips = sum(int(np.argmax(a) != np.argmax(b)) for a, b in pairs)
    times, peaks = runs.times, runs.extra_peak_gib
    speed, cpu_speed = runs.speedup("naive", "grid")
    print(f"G={g}: grid {times['grid'].fmt(2)} s, naive {times['naive'].fmt(2)} s, speed-up {speed.fmt(2)}")
    return [
        g,
        times["grid"].fmt(2, " s"),
        times["naive"].fmt(2, " s"),
        speed.fmt(2, "×"),
        cpu_speed.fmt(2, "×"),
        f"{peaks['grid']:.2f} / {peaks['naive']:.2f}",
        f"{diff:.1e}",
        flips,
    ]


def main() -> None:
    ap = common.parser(__doc__, 12, "steered prompts (crosslens-mini items)")
    ap.add_argument("--n-vectors", type=int, default=16, help="items the steering vectors are built from")
    ap.add_argument("--language", default="de", help="crosslens-mini language to steer toward English")
    ap.add_argument("--batch-size", type=int, default=8, help="batch size of both paths")
    ap.add_argument("--grids", nargs="+", default=["1", "5", "25", "25c"], choices=["1", "5", "25", "25c"])
    ap.add_argument("--model", default="gemma-3-270m", choices=common.MODELS)
    args = common.parse(ap)

    with common.scratch_dir() as workdir:
        lm, _folder = common.load(args.model, workdir)
    n = lm.anatomy.n_layers
    layers = sorted({max(1, round(n * k / 6)) for k in range(1, 6)})  # 5 layers spread over the depth
    mid = layers[len(layers) // 2]

    ds = load_dataset("crosslens-mini", [args.language])
    ids = ds.item_ids()
    vec_ids, eval_ids = ids[: args.n_vectors], ids[args.n_vectors : args.n_vectors + args.items]
    sv = build_vectors(lm, ds, [args.language], layers, vec_ids, batch_size=args.batch_size)
    vectors = {layer: sv.get(args.language, layer) for layer in layers}
    controls = ["", *(f"random:{k}" for k in range(4))]

    def delta(layer: int, gamma: float, control: str = "") -> torch.Tensor:
        v = vectors[layer]
        v = control_vector(v, control, 0, args.language, layer, None) if control else v
        return gamma * v

    grids = {
        "1": [(mid, delta(mid, 2.0))],
        "5": [(mid, delta(mid, g)) for g in GAMMAS],
        "25": [(layer, delta(layer, g)) for layer in layers for g in GAMMAS],
        "25c": [(mid, delta(mid, g, c)) for g in GAMMAS for c in controls],
    }
    template = get_template(ds.template)
    plan = label_plan(lm.tokenizer)
    items = [ds.item(args.language, i) for i in eval_ids]
    prompt_ids = [lm.tokenizer(render(it, template)).input_ids for it in items]
    label_ids = [plan.for_n(len(it.choices)) for it in items]

    grid(lm, prompt_ids[:2], label_ids[:2], grids["1"], args.batch_size)  # warm-up
    rows = [compare(lm, prompt_ids, label_ids, g, grids[g], args) for g in args.grids]

    header = [
        "settings G",
        "steer_grid",
        "naive (full forward per setting)",
        "speed-up (wall)",
        "(CPU time)",
        "extra peak RSS GiB (grid / naive)",
        "max abs Δ label log-prob",
        "prediction flips",
    ]
    body = common.table(header, rows) + (
        "\n\nTimes: median (min–max) over repetitions; speed-up = naive / grid in the same repetition "
        "(wall clock; CPU time of all threads). "
        "Targets: max abs Δ ≤ 1e-4; G = 25 and 25c (controls included) speed-up ≥ 10×."
    )
    lengths = [len(p) for p in prompt_ids]
    settings_info = {
        "model": args.model,
        "prompts": f"{len(prompt_ids)} crosslens-mini '{args.language}' items after the {args.n_vectors} "
        f"vector items, {min(lengths)}–{max(lengths)} tokens (mean {np.mean(lengths):.0f})",
        "layers": layers,
        "gammas": list(GAMMAS),
        "repeats": args.repeats,
        "batch size": args.batch_size,
    }
    common.append_results("Steering grid vs full re-runs", settings_info, body)


if __name__ == "__main__":
    main()
