"""Numerical difference between float32 and bfloat16 inference on one model (label log-probs, lens values).

Example: python scripts/dtype_diff.py --model gemma-3-270m --items 16 --languages en,de,zh
"""

from __future__ import annotations

import argparse
import shutil
import tempfile

import numpy as np
import pandas as pd

from crosslens.anatomy import paper_layers
from crosslens.data import load_dataset
from crosslens.evaluate import EvalOptions, evaluate
from crosslens.lens import run_lens
from crosslens.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--dataset", default="crosslens-mini")
    ap.add_argument("--languages", default="en,de,zh")
    ap.add_argument("--items", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    ds = load_dataset(args.dataset, args.languages.split(",")).limit(args.items)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        lm = load_model(args.model, device=args.device, dtype=dtype)
        out = tempfile.mkdtemp()
        try:
            evaluate(lm, ds, out, opts=EvalOptions(batch_size=8))
            run_lens(lm, ds, out, layers=paper_layers(lm.anatomy.n_layers), opts=EvalOptions(batch_size=8))
            runs[dtype] = (pd.read_parquet(f"{out}/records"), pd.read_parquet(f"{out}/lens"))
        finally:
            shutil.rmtree(out, ignore_errors=True)
    key = ["language", "item_id"]
    a, b = (runs[d][0].sort_values(key).reset_index(drop=True) for d in ("float32", "bfloat16"))
    lab = np.abs(
        np.concatenate(a["label_logprobs"].to_list()) - np.concatenate(b["label_logprobs"].to_list())
    )
    clo = np.abs(
        np.concatenate(a["cloze_logprobs"].to_list()) - np.concatenate(b["cloze_logprobs"].to_list())
    )
    lkey = ["language", "item_id", "layer", "form", "choice"]
    la, lb = (runs[d][1].sort_values(lkey).reset_index(drop=True) for d in ("float32", "bfloat16"))
    lens = np.abs(la["logprob"].to_numpy() - lb["logprob"].to_numpy())
    print(
        f"model {args.model}, {len(a)} prompts ({args.languages}), float32 vs bfloat16 weights/activations,"
        " float32 log-softmax"
    )
    print(
        f"label log-probs: max |diff| {lab.max():.4f}, mean {lab.mean():.4f}; "
        f"same letter prediction {100 * (a['pred'] == b['pred']).mean():.1f}%"
    )
    print(
        f"cloze log-probs (summed): max |diff| {clo.max():.4f}, mean {clo.mean():.4f}; "
        f"same cloze prediction {100 * (a['cloze_pred'] == b['cloze_pred']).mean():.1f}%"
    )
    print(f"lens log-probs (all layers/forms): max |diff| {lens.max():.4f}, mean {lens.mean():.4f}")
    for layer, g in la.assign(d=lens).groupby("layer"):
        print(f"  layer {layer:>2}: mean |diff| {g['d'].mean():.4f}")


if __name__ == "__main__":
    main()
