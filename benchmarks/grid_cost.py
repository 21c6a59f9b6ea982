"""What the paper's grid (examples/paper.yaml) costs, from a FLOP count checked against a measured run.

1. Calibrate: run every stage of the demo config (Gemma 3 270M, crosslens-mini, --items items) on
   this machine, time it (wall and CPU), and count the FLOPs the stages did from the token counts
   in the records they wrote. FLOPs of one (item, language), P = parameters without the token
   embedding, D x V = the unembedding, T = prompt tokens, A / A_en = answer tokens of all n native /
   English choices, L = lens layers, G = steering settings. A choice's last token is never fed and
   its first is predicted from the last prompt position, projected once for all choices:

       eval   2P(T + A - n)            + 2DV (1 + A - n)
       lens   2P(T + A + A_en - 2n)    + 2DV L (1 + A + A_en - 2n)
       steer  2P(T - 1)                + G (2P + 2DV)          (non-English languages only)

   The calibration reports the sustained FLOP/s of the whole pipeline, a fraction of the GEMM peak.
2. Count: the same formulas over the paper's grid, with token counts measured on real items
   (Belebele and Okapi MMLU from ../shared/data with the Gemma 3 tokenizer; mHellaSwag is not
   available offline, so XStoryCloze contexts and endings stand in for its length), the models'
   published sizes, and the item counts of the full benchmarks.
3. Cost: GPU hours = FLOPs / (peak x sustained fraction), for the fractions given (--mfu).

No GPU was measured here: scripts/gpu_check.sh measures eval and lens items/s on a GPU, which
replaces the assumed fraction with a measured one.
"""

from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path

import common
import torch

from crosslens.data.prompts import get_template, render
from crosslens.data.registry import load_dataset
from crosslens.experiment.config import load_config
from crosslens.experiment.runner import run_experiment
from crosslens.models.anatomy import paper_layers
from crosslens.models.loading import ModelSpec, load_model
from crosslens.store import Store

SHARED = Path(common.BELEBELE_DIR).parent

# Published sizes: (blocks, d_model, vocab, parameters without the token embedding).
MODELS = {
    "google/gemma-2-2b": (26, 2304, 256000, 2.02e9),
    "google/gemma-2-9b": (42, 3584, 256000, 8.32e9),
    "google/gemma-2-27b": (46, 4608, 256000, 26.0e9),
    "Qwen/Qwen2.5-3B": (36, 2048, 151936, 2.77e9),
    "Qwen/Qwen2.5-7B": (28, 3584, 152064, 6.53e9),
    "Qwen/Qwen2.5-32B": (64, 5120, 152064, 31.0e9),
}
# Items per language of the full benchmarks (Belebele: 900 questions; MMMLU: the MMLU test set;
# mHellaSwag: the HellaSwag validation set the Okapi translations follow).
ITEMS = {"belebele": 900, "mmmlu": 14042, "mhellaswag": 10042}
# Real items whose token counts stand in for each benchmark's: (dataset, languages, data_dir).
PROXIES = {
    "belebele": ("belebele", ["eng_Latn", "deu_Latn", "spa_Latn"], SHARED / "belebele"),
    "mmmlu": ("okapi-mmlu", ["en", "de", "es", "ru", "zh", "hi", "ar"], SHARED / "mmlu"),
    "mhellaswag": ("xstorycloze", ["en", "es", "ru", "zh", "hi", "ar", "sw"], SHARED / "xstorycloze"),
}
H100_BF16_DENSE = 989e12  # FLOP/s, NVIDIA H100 SXM datasheet (dense, no sparsity)


def eval_flops(P: float, D: int, V: int, T: float, A: float, n: int) -> float:
    return 2 * P * (T + A - n) + 2 * D * V * (1 + A - n)


def lens_flops(P: float, D: int, V: int, T: float, A: float, A_en: float, L: int, n: int) -> float:
    return 2 * P * (T + A + A_en - 2 * n) + 2 * D * V * L * (1 + A + A_en - 2 * n)


def steer_flops(P: float, D: int, V: int, T: float, G: int) -> float:
    return 2 * P * (T - 1) + G * (2 * P + 2 * D * V)


def gemm_peak(size: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matmul FLOP/s (best of ``repeats``), the yardstick of the calibration."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def calibrate(items: int, workdir: Path) -> dict[str, float]:
    """Run the demo stages on ``items`` items; return measured seconds and counted FLOPs."""
    config = load_config(Path(common.REPO) / "examples" / "demo.yaml")
    datasets = [d.model_copy(update={"limit": items}) for d in config.datasets]
    steering = config.steering.model_copy(update={"n_vectors": min(config.steering.n_vectors, items // 2)})
    config = config.model_copy(
        update={
            "datasets": datasets,
            "output": workdir,
            "pca": config.pca.model_copy(update={"enabled": False}),
            "steering": steering,
        }
    )
    lm = load_model(config.models[0])
    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    run_experiment(config, progress=False, models={config.models[0]: lm})
    wall = time.perf_counter() - wall0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)

    P = common.non_embedding_params(lm.model)
    D, V = lm.anatomy.d_model, lm.anatomy.head.weight.shape[0]
    store = Store(workdir / ModelSpec.parse(config.models[0]).slug / config.datasets[0].name)
    rec = store.read("records")
    rec["A"] = rec["cloze_tokens"].map(sum)
    en = rec[rec["language"] == "en"].set_index("item_id")["A"]
    L = len(config.lens_layers(lm.anatomy.n_layers))
    G = len(config.steering.layers) * len(set(config.steering.gammas) | {0})
    steered = store.read("steer")[["language", "item_id"]].drop_duplicates()
    steered = steered[steered["language"] != "en"].merge(rec, on=["language", "item_id"])
    flops = sum(eval_flops(P, D, V, r.prompt_tokens, r.A, r.n_choices) for r in rec.itertuples())
    flops += sum(
        lens_flops(P, D, V, r.prompt_tokens, r.A, en[r.item_id], L, r.n_choices) for r in rec.itertuples()
    )
    flops += sum(steer_flops(P, D, V, r.prompt_tokens, G) for r in steered.itertuples())
    return {"wall": wall, "cpu": cpu, "flops": flops, "rows": len(rec)}


def token_stats(tokenizer) -> dict[str, tuple[float, float, int]]:
    """Mean prompt tokens and mean answer tokens (all choices) per benchmark, from real items."""
    out = {}
    for bench, (name, langs, folder) in PROXIES.items():
        ds = load_dataset(name, langs, data_dir=folder).limit(200)
        template = get_template(ds.template)
        T, A = [], []
        for lang in ds.languages:
            for item_id in ds.item_ids():
                it = ds.item(lang, item_id)
                T.append(len(tokenizer(render(it, template)).input_ids))
                A.append(
                    sum(len(tokenizer(" " + c, add_special_tokens=False).input_ids) for c in it.choices)
                    * 4
                    / len(it.choices)
                )  # scaled to four choices (XStoryCloze has two)
        out[bench] = (statistics.mean(T), statistics.mean(A), len(T))
    return out


def grid_flops(tokens: dict[str, tuple[float, float, int]]) -> dict[str, float]:
    """FLOPs per model of examples/paper.yaml with the measured token counts."""
    config = load_config(Path(common.REPO) / "examples" / "paper.yaml", check_models=False)
    per_model = {}
    for spec, (n_layers, D, V, P) in MODELS.items():
        L = len(paper_layers(n_layers, config.layers.every))
        G = len(config.steering.layers_for(spec)) * len(set(config.steering.gammas) | {0})
        total = 0.0
        for d in config.datasets:
            T, A, _ = tokens[d.name]
            n_lang, n = len(d.languages), ITEMS[d.name]
            total += n * n_lang * (eval_flops(P, D, V, T, A, 4) + lens_flops(P, D, V, T, A, A, L, 4))
            total += (n - config.steering.n_vectors) * (n_lang - 1) * steer_flops(P, D, V, T, G)
        per_model[spec] = total
    return per_model


def main() -> None:
    ap = common.parser(__doc__, items=16, items_help="crosslens-mini items of the calibration run")
    ap.add_argument(
        "--mfu",
        type=float,
        nargs="+",
        default=[0.25, 0.4],
        help="sustained fractions of the GPU's bf16 peak to cost the grid at (default 0.25 0.4)",
    )
    ap.add_argument(
        "--usd-per-gpu-hour", type=float, default=2.5, help="price of one H100 hour (default 2.5)"
    )
    args = common.parse(ap)
    with common.scratch_dir() as tmp:
        cal = calibrate(args.items, Path(tmp))
    lm = load_model("gemma-3-270m")
    tokens = token_stats(lm.tokenizer)
    per_model = grid_flops(tokens)
    total = sum(per_model.values())

    rate, peak = cal["flops"] / cal["wall"], gemm_peak()
    body = common.table(
        ["calibration (demo stages, Gemma 3 270M)", "value"],
        [
            ["(item, language) rows", cal["rows"]],
            ["FLOPs counted", f"{cal['flops'] / 1e12:.2f} T"],
            ["wall / CPU time", f"{cal['wall']:.1f} s / {cal['cpu']:.1f} s"],
            ["sustained rate (wall)", f"{rate / 1e9:.1f} GFLOP/s"],
            ["float32 GEMM peak (2048², best of 5)", f"{peak / 1e9:.1f} GFLOP/s"],
            ["pipeline / GEMM peak", f"{100 * rate / peak:.0f} %"],
        ],
    )
    body += "\n\n" + common.table(
        ["benchmark (proxy items)", "prompt tokens", "answer tokens (4 choices)", "prompts measured"],
        [[b, f"{t:.0f}", f"{a:.0f}", n] for b, (t, a, n) in tokens.items()],
    )
    rows = [
        [spec, f"{f / 1e18:.2f}"] + [f"{f / (H100_BF16_DENSE * m) / 3600:.0f}" for m in args.mfu]
        for spec, f in per_model.items()
    ]
    hours = [total / (H100_BF16_DENSE * m) / 3600 for m in args.mfu]
    rows.append(["**total**", f"{total / 1e18:.2f}"] + [f"**{h:.0f}**" for h in hours])
    body += "\n\n" + common.table(
        ["model", "EFLOP"] + [f"H100 hours at {100 * m:.0f} % of peak" for m in args.mfu], rows
    )
    body += (
        "\n\n"
        + f"Cost at ${args.usd_per_gpu_hour:.2f} per H100 hour: "
        + ", ".join(f"${h * args.usd_per_gpu_hour:,.0f} ({100 * m:.0f} %)" for h, m in zip(hours, args.mfu))
        + "."
    )
    common.append_results(
        "Cost of the paper grid (examples/paper.yaml)",
        {"calibration items": args.items, "GPU peak assumed": "H100 SXM bf16 dense 989 TFLOP/s"},
        body,
    )


if __name__ == "__main__":
    main()
