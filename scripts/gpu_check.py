"""GPU check: lens fidelity (float32 and bfloat16), steering cached path vs full forward, eval/lens speed.

Runs with only the package and the cached demo model (`crosslens info` once beforehand caches it).
Writes a short Markdown report (default benchmarks/gpu_check_report.md); exits non-zero when fidelity fails.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from crosslens.data.prompts import get_template, render
from crosslens.data.registry import load_dataset
from crosslens.models.loading import load_model
from crosslens.scoring.choices import label_plan
from crosslens.scoring.options import EvalOptions
from crosslens.stages.evaluate.stage import evaluate
from crosslens.stages.lens.stage import run_lens
from crosslens.stages.steering.grid import steered_full_forward
from crosslens.stages.steering.stage import steer_grid


def lens_fidelity(lm, prompts: list[str]) -> float:
    """max |lens_logits(h_L, L) - model logits| / (1 + |model logits|) over the last positions.

    Relative, because in bfloat16 the model's own logits are rounded to 8 significant bits (a logit
    of 20 moves by up to 0.06) while the lens computes its head in float32.
    """
    from crosslens.models.anatomy import capture_residuals

    L = lm.anatomy.n_layers
    worst = 0.0
    for p in prompts:
        ids = lm.tokenizer(p, return_tensors="pt").input_ids.to(lm.input_device)
        with torch.inference_mode(), capture_residuals(lm.anatomy, [L]) as st:
            logits = lm.model(ids).logits[0, -1].float()
        err = (lm.anatomy.lens_logits(st[L][0, -1], L) - logits).abs() / (1 + logits.abs())
        worst = max(worst, err.max().item())
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--report", type=Path, default=Path("benchmarks/gpu_check_report.md"))
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device visible", file=sys.stderr)
        return 2
    ds = load_dataset("crosslens-mini").limit(args.items)
    lines = [
        f"# crosslens GPU check ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else args.device}",
        f"torch {torch.__version__}",
        "",
    ]
    failed = False
    template = get_template(ds.template)
    prompts = [render(ds.item("de", i), template) for i in ds.item_ids()[:8]]
    reference: list[np.ndarray] = []  # float32 full-forward steering results
    # float32: both comparisons must agree to 1e-3. bfloat16: the lens to 2^-6 relative (two bf16
    # rounding steps: the model rounds its normed state and its logits; a wrong norm or softcap is
    # off by far more), and the cached steering path may differ from the full forward by no more
    # than twice what bfloat16 itself moves the full forward away from float32.
    for dtype, tol in (("float32", 1e-3), ("bfloat16", 2**-6)):
        lm = load_model(args.model, device=args.device, dtype=dtype)
        err = lens_fidelity(lm, prompts)
        ok = err <= tol
        failed |= not ok
        lines.append(
            f"- lens fidelity {dtype}: max |lens - logits| / (1 + |logits|) = {err:.2e} (tolerance {tol:.2g})"
            f" {'OK' if ok else 'FAIL'}"
        )
        pids = [lm.tokenizer(p).input_ids for p in prompts]
        plan = label_plan(lm.tokenizer)
        lids = [plan.for_n(4)] * len(pids)
        vec = {6: torch.randn(lm.anatomy.d_model, generator=torch.Generator().manual_seed(0))}
        grid = steer_grid(lm, pids, lids, vec, [(6, 2.0)], batch_size=8)[(6, 2.0)]
        full = steered_full_forward(lm, pids, 6, (2.0 * vec[6]).expand(len(pids), -1), lids)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(grid, full))
        if not reference:
            reference, bound, note = full, 1e-3, "tolerance 1e-3"
        else:
            noise = max(float(np.abs(a - b).max()) for a, b in zip(full, reference))
            bound, note = max(1e-3, 2 * noise), f"bfloat16 vs float32 full forward: {noise:.2e}"
        ok = diff <= bound
        failed |= not ok
        lines.append(
            f"- steering one-token path vs full forward {dtype}: max diff {diff:.2e} ({note})"
            f" {'OK' if ok else 'FAIL'}"
        )
        out = Path(tempfile.mkdtemp())
        try:
            n = len(ds.item_ids()) * len(ds.languages)
            t = time.perf_counter()
            evaluate(lm, ds, out, opts=EvalOptions(batch_size=32))
            lines.append(f"- eval {dtype}: {n / (time.perf_counter() - t):.1f} items/s (letters + cloze)")
            t = time.perf_counter()
            run_lens(lm, ds, out, opts=EvalOptions(batch_size=32))
            lines.append(
                f"- lens {dtype}: {n / (time.perf_counter() - t):.1f} items/s (paper layer schedule)"
            )
        finally:
            shutil.rmtree(out, ignore_errors=True)
        del lm
        torch.cuda.empty_cache()
    args.report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
