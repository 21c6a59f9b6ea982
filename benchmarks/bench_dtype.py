"""bfloat16 vs float32 on CPU: speed, error, roofline, and where the time goes.

The same Belebele items (``--languages``) run through crosslens in each precision, side by side in
one process:

* ``float32`` — ``load_model(dtype="float32")`` (the default);
* ``bfloat16`` — ``load_model(dtype="bfloat16")``: weights, residual stream and norms in bfloat16
  (the head's target logits are still computed in float32, ``Anatomy.token_logprobs``);
* ``bf16-mixed`` — ``load_model(dtype="bf16-mixed")``: float32 weights, the decoder run under
  ``torch.autocast(torch.bfloat16)`` (its matmuls in bfloat16; residual stream, norms and the head
  in float32).

Stages: evaluation with letters only, evaluation with letters + cloze (``crosslens.evaluate`` into a
fresh folder), the logit lens (``run_lens``, ``--lens-layers``) and a steering grid (``steer_grid``,
G settings on crosslens-mini prompts). Error against float32 on the same records: label and
answer log-probabilities (max and mean |Δ|), lens log-probabilities, prediction agreement, agreement
of the whole ranking of the choices, and the accuracy in each precision.

Roofline: the FLOPs each stage *needs* after prefix sharing — the tokens actually fed to the decoder
(without padding) × 2 × non-embedding parameters, plus the rows projected onto the vocabulary ×
2 · d · V — counted with hooks during the float32 run; divided by the time, against the float32 and
bfloat16 peaks measured in the same process (a decoder-sized product and the 262k-vocabulary head).

Profile: ``torch.profiler`` of a few items' letters + cloze evaluation in each precision: the
operators with the most self CPU time, and the share of dtype conversions (``aten::to`` /
``aten::_to_copy`` / ``aten::copy_``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import common
import numpy as np
import pandas as pd
import torch

from crosslens.models.anatomy import Anatomy
from crosslens.models.loading import bf16_units, load_model
from crosslens.scoring.options import EvalOptions
from crosslens.stages.evaluate.stage import evaluate
from crosslens.stages.lens.stage import run_lens

MODES = ("float32", "bfloat16", "bf16-mixed")


# -- the precisions ---------------------------------------------------------------------------------
def models(spec: str, device: str, names: list[str]) -> dict[str, object]:
    """mode -> LoadedModel in that precision."""
    return {name: load_model(spec, device=device, dtype=name) for name in names}


# -- the work counted: tokens fed, rows projected --------------------------------------------------
class Work:
    """Tokens the decoder is fed (padding excluded / included) and rows projected onto the vocabulary."""

    def __init__(self, lm) -> None:
        self.lm, self.tokens, self.padded, self.rows = lm, 0, 0, 0

    def __enter__(self) -> Work:
        def count(_module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            shape = ids.shape if ids is not None else kwargs["inputs_embeds"].shape[:2]
            self.padded += int(shape[0] * shape[1])
            self.tokens += real_tokens(kwargs.get("attention_mask"), shape)

        self.hook = self.lm.model.model.register_forward_pre_hook(count, with_kwargs=True)
        real = Anatomy.token_logprobs

        def projected(anatomy, h, *args, **kwargs):
            self.rows += int(h.shape[0])
            return real(anatomy, h, *args, **kwargs)

        self.real, Anatomy.token_logprobs = real, projected
        return self

    def __exit__(self, *exc: object) -> None:
        self.hook.remove()
        Anatomy.token_logprobs = self.real

    def gflop(self) -> float:
        a = self.lm.anatomy
        d, vocab = a.unembed_weight.shape[1], a.unembed_weight.shape[0]
        return (
            2 * common.non_embedding_params(self.lm.model) * self.tokens + 2 * d * vocab * self.rows
        ) / 1e9


def real_tokens(mask, shape: tuple[int, int]) -> int:
    """Tokens of a decoder call that are not padding: a 2D mask's ones over the fed columns, or in a
    4D mask (tree passes: one per layer type, any of them) the fed tokens that attend to themselves
    (a padding query attends to its row's first token only)."""
    if isinstance(mask, dict):
        mask = next(iter(mask.values()))
    if mask is None:
        return int(shape[0] * shape[1])
    if mask.dim() == 2:
        return int(mask[:, -shape[1] :].sum())
    diagonal = mask[:, 0, :, -shape[1] :].diagonal(dim1=-2, dim2=-1)
    return int((diagonal if diagonal.dtype == torch.bool else diagonal == 0).sum())


def peaks(repeats: int, device: str) -> dict[str, dict[str, float]]:
    """GFLOP/s per dtype of the two products the model runs, as ``F.linear`` does them (weights stored
    (out, in)): a decoder-sized one (2048 tokens × 640 → 2048) and the 262k-vocabulary head (256 rows).
    Best of ``repeats`` after a warm-up. (A plain ``a @ b`` in bfloat16 on a CPU without bfloat16 units
    takes another, far slower path: 0.24 GFLOP/s for 2048 × 640 @ 640 × 2048 on the AVX2 machine.)"""
    shapes = {"decoder 2048×640→2048": (2048, 640, 2048), "head 256×640→262144": (256, 640, 262144)}
    out: dict[str, dict[str, float]] = {}
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        out[name] = {}
        for label, (m, k, n) in shapes.items():
            x, w = (
                torch.randn(m, k, dtype=dtype, device=device),
                torch.randn(n, k, dtype=dtype, device=device),
            )
            torch.nn.functional.linear(x, w)
            best = min(
                _timed(lambda x=x, w=w: torch.nn.functional.linear(x, w), device) for _ in range(repeats)
            )
            out[name][label] = 2 * m * k * n / best / 1e9
        out[name]["peak"] = max(out[name].values())
    return out


def _timed(fn: Callable[[], object], device: str) -> float:
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


# -- stages -----------------------------------------------------------------------------------------
def run_eval(lm, ds, cloze: bool, batch_size: int) -> pd.DataFrame:
    with common.scratch_dir() as out:
        evaluate(lm, ds, Path(out) / "r", opts=EvalOptions(batch_size=batch_size, cloze=cloze))
        return pd.read_parquet(Path(out) / "r" / "records")


def run_lens_records(lm, ds, layers: list[int], batch_size: int) -> pd.DataFrame:
    with common.scratch_dir() as out:
        run_lens(lm, ds, Path(out) / "l", layers=layers, opts=EvalOptions(batch_size=batch_size))
        return pd.read_parquet(Path(out) / "l" / "lens")


def run_grid(lm, inputs, batch_size: int) -> list[np.ndarray]:
    from crosslens.stages.steering.stage import steer_grid

    prompt_ids, label_ids, settings = inputs
    deltas = [(layer, delta.to(lm.dtype)) for layer, delta in settings]
    return [
        labels for row in steer_grid(lm, prompt_ids, label_ids, deltas, None, batch_size) for labels, _ in row
    ]


# -- error against float32 ---------------------------------------------------------------------------
def eval_error(ref: pd.DataFrame, got: pd.DataFrame, cloze: bool) -> dict[str, str]:
    key = ["language", "item_id"]
    m = ref.merge(got, on=key, suffixes=("_r", "_g"))
    assert len(m) == len(ref) == len(got)
    lab = np.concatenate([np.abs(np.subtract(a, b)) for a, b in zip(m.label_logprobs_r, m.label_logprobs_g)])
    out = {
        "label log-prob |Δ| max / mean": f"{lab.max():.2e} / {lab.mean():.2e}",
        "same letter prediction": f"{(m.pred_r == m.pred_g).mean():.1%}",
        "same letter ranking": f"{np.mean([list(a) == list(b) for a, b in zip(m.ranks_r, m.ranks_g)]):.1%}",
        "letter acc.": f"{m.correct_g.mean():.1%} (float32 {m.correct_r.mean():.1%})",
    }
    if cloze:
        cl = np.concatenate(
            [np.abs(np.subtract(a, b)) for a, b in zip(m.cloze_logprobs_r, m.cloze_logprobs_g)]
        )
        out |= {
            "answer log-prob |Δ| max / mean": f"{cl.max():.2e} / {cl.mean():.2e}",
            "same cloze prediction": f"{(m.cloze_pred_r == m.cloze_pred_g).mean():.1%}",
            "same cloze ranking": f"{np.mean([list(a) == list(b) for a, b in zip(m.cloze_ranks_r, m.cloze_ranks_g)]):.1%}",  # noqa: E501
            "cloze acc.": f"{m.cloze_correct_g.mean():.1%} (float32 {m.cloze_correct_r.mean():.1%})",
        }  # fmt: skip
    return out


def lens_error(ref: pd.DataFrame, got: pd.DataFrame) -> dict[str, str]:
    key = ["language", "item_id", "layer", "form", "choice"]
    m = ref.merge(got, on=key, suffixes=("_r", "_g"))
    d = (m.logprob_r - m.logprob_g).abs()
    best = [
        g.groupby(["language", "item_id", "layer", "form"])[col].idxmax().map(g["choice"]).to_numpy()
        for g, col in ((m, "logprob_r"), (m, "logprob_g"))
    ]
    return {
        "lens log-prob |Δ| max / mean": f"{d.max():.2e} / {d.mean():.2e}",
        "same lens argmax (per layer, form)": f"{np.mean(best[0] == best[1]):.1%}",
    }


def grid_error(ref: list[np.ndarray], got: list[np.ndarray]) -> dict[str, str]:
    d = np.concatenate([np.abs(a - b) for a, b in zip(ref, got, strict=True)])
    same = np.mean([np.argmax(a) == np.argmax(b) for a, b in zip(ref, got)])
    return {
        "grid label |Δ| max / mean": f"{d.max():.2e} / {d.mean():.2e}",
        "same grid prediction": f"{same:.1%}",
    }


# -- profile ----------------------------------------------------------------------------------------
def profile(lm, ds, batch_size: int, top: int) -> tuple[list[list[object]], float]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        run_eval(lm, ds, True, batch_size)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    casts = sum(
        e.self_cpu_time_total for e in events if e.key in ("aten::to", "aten::_to_copy", "aten::copy_")
    )
    rows = [[e.key, f"{e.self_cpu_time_total / 1e6:.2f}", f"{100 * e.self_cpu_time_total / total:.1f}",
             e.count]
            for e in events[:top]]  # fmt: skip
    return rows, 100 * casts / total


def main() -> None:
    ap = common.parser(__doc__, 8, "Belebele items per language")
    ap.add_argument("--model", default="gemma-3-270m", help="any crosslens model spec")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--languages", nargs="+", default=["eng_Latn", "deu_Latn", "spa_Latn"])
    ap.add_argument(
        "--modes", nargs="+", default=list(MODES), choices=MODES, help="float32 always runs first"
    )
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lens-layers", type=int, nargs="+", default=[6, 12, 18])
    ap.add_argument("--grid-prompts", type=int, default=12)
    ap.add_argument("--grid-settings", type=int, default=10, help="G (layers × 5 gammas)")
    ap.add_argument(
        "--profile-items", type=int, default=2, help="items per language in the profile (0: none)"
    )
    ap.add_argument("--peak-repeats", type=int, default=3, help="timed calls per GEMM peak shape")
    args = common.parse(ap)
    args.modes = ["float32", *(m for m in args.modes if m != "float32")]
    torch.set_grad_enabled(False)
    ds = common.belebele(args.languages).limit(args.items)
    lms = models(args.model, args.device, args.modes)
    stages = {
        "eval letters": lambda lm: run_eval(lm, ds, False, args.batch_size),
        "eval letters + cloze": lambda lm: run_eval(lm, ds, True, args.batch_size),
        "lens": lambda lm: run_lens_records(lm, ds, args.lens_layers, args.batch_size),
    }
    f32 = lms["float32"]
    prompts, labels, settings = common.steering_inputs(
        f32, args.grid_prompts, -(-args.grid_settings // len(common.GAMMAS)), args.batch_size
    )
    grid_in = (prompts, labels, settings[: args.grid_settings])
    stages["steering grid"] = lambda lm: run_grid(lm, grid_in, args.batch_size)
    pk = peaks(args.peak_repeats, args.device)

    warm = ds.limit(1)  # first calls (kernel selection, allocations) are not part of any stage's time
    for mode in args.modes:
        run_eval(lms[mode], warm, True, args.batch_size)
        run_lens_records(lms[mode], warm, args.lens_layers[:1], args.batch_size)
        run_grid(lms[mode], (prompts[:2], labels[:2], settings[:1]), args.batch_size)

    times: dict[tuple[str, str], float] = {}
    results: dict[tuple[str, str], object] = {}
    work: dict[str, Work] = {}
    for stage, fn in stages.items():
        for mode in args.modes:
            lm = lms[mode]
            counter = Work(lm) if mode == "float32" else contextlib.nullcontext()
            with counter:
                start = time.perf_counter()
                results[stage, mode] = fn(lm)
                times[stage, mode] = time.perf_counter() - start
            if mode == "float32":
                work[stage] = counter
            print(f"{stage} {mode}: {times[stage, mode]:.1f} s", flush=True)

    ref_mode = "float32"
    speed_rows, error_rows, roof_rows = [], [], []
    for stage in stages:
        gflop = work[stage].gflop() if stage in work else float("nan")
        for mode in args.modes:
            t = times[stage, mode]
            speed_rows.append([stage, mode, f"{t:.1f}", f"{times[stage, ref_mode] / t:.2f}×"])
            if mode != ref_mode:
                ref, got = results[stage, ref_mode], results[stage, mode]
                if stage.startswith("eval"):
                    err = eval_error(ref, got, "cloze" in stage)
                elif stage == "lens":
                    err = lens_error(ref, got)
                else:
                    err = grid_error(ref, got)
                error_rows += [[stage, mode, k, v] for k, v in err.items()]
            dt = "bfloat16" if mode != "float32" else "float32"
            roof_rows.append(
                [stage, mode, work[stage].tokens, work[stage].padded, work[stage].rows, f"{gflop:.0f}",
                 f"{gflop / t:.1f}", f"{100 * gflop / t / pk['float32']['peak']:.0f} %",
                 f"{100 * gflop / t / pk[dt]['peak']:.0f} %"]
            )  # fmt: skip
    peak_rows = [[dt, *(f"{v:.1f}" for v in d.values())] for dt, d in pk.items()]

    prof_body = ""
    if args.profile_items:
        small = ds.limit(args.profile_items)
        for mode in args.modes:
            rows, cast_share = profile(lms[mode], small, args.batch_size, 12)
            prof_body += (
                f"\n\n#### Profile: {mode}, letters + cloze, {args.profile_items} items × "
                f"{len(ds.languages)} languages"
                f" (dtype conversions: {cast_share:.1f} % of self CPU time)\n\n"
                + common.table(["operator", "self CPU s", "%", "calls"], rows)
            )

    body = (
        "### Speed\n\n"
        + common.table(["stage", "precision", "seconds", "speed-up vs float32"], speed_rows)
        + "\n\n### Error against float32 (same records)\n\n"
        + common.table(["stage", "precision", "measure", "value"], error_rows)
        + f"\n\n### GEMM peaks (GFLOP/s, best of {args.peak_repeats})\n\n"
        + common.table(["dtype", *pk["float32"]], peak_rows)
        + "\n\n### Roofline: the work each stage needs after prefix sharing\n\n"
        + common.table(
            [
                "stage",
                "precision",
                "tokens fed (no padding)",
                "tokens computed (with padding)",
                "rows projected",
                "needed GFLOP",
                "GFLOP/s",
                "of float32 peak",
                "of its dtype's peak",
            ],
            roof_rows,
        )  # fmt: skip
        + "\n\nneeded GFLOP = 2 × non-embedding parameters × tokens fed + 2 · d · V × rows projected "
        "(attention scores over the context not counted: ≈ 5–7 % more on these prompts). "
        "Peaks: the faster of the two products above in each dtype." + prof_body
    )
    settings = {
        "model": f"{args.model} on {args.device}",
        "items": f"first {args.items} Belebele items × {', '.join(ds.languages)}",
        "lens layers": args.lens_layers,
        "steering grid": f"{args.grid_settings} settings × {args.grid_prompts} crosslens-mini 'de' prompts",
        "batch size": args.batch_size,
        "bfloat16 matrix units (AMX / AVX512-BF16 / GPU)": bf16_units(args.device),
    }
    common.append_results("bfloat16 vs float32 on CPU", settings, body)


if __name__ == "__main__":
    main()
