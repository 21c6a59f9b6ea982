"""crosslens evaluation (letters + cloze) vs a plain one-prompt-at-a-time transformers loop.

python benchmarks/bench_eval_vs_plain.py --items 16 --threads 1   # appends to benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from crosslens.data.registry import load_dataset
from crosslens.models.loading import load_model
from crosslens.scoring.choices import encode_continuation, label_plan
from crosslens.scoring.options import EvalOptions
from crosslens.stages.evaluate.stage import evaluate

RESULTS = Path(__file__).with_name("RESULTS.md")


def plain_loop(lm, df: pd.DataFrame, choices: dict, label_ids: list[int]) -> tuple[list, list]:
    """One full forward per prompt (letters) and per prompt + answer (cloze), full logits."""
    letters, cloze = [], []
    for row in df.itertuples():
        ids = lm.tokenizer(row.prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            letters.append(
                lm.model(ids).logits[0, -1].float().log_softmax(-1)[label_ids[: row.n_choices]].numpy()
            )
        sums = []
        for text in choices[(row.language, row.item_id)]:
            cont = encode_continuation(lm.tokenizer, row.prompt, ids[0].tolist(), text)[0]
            full = torch.tensor([ids[0].tolist() + cont])
            with torch.no_grad():
                logp = lm.model(full).logits[0].float().log_softmax(-1)
            n = ids.shape[1]
            sums.append(sum(logp[n - 1 + k, t].item() for k, t in enumerate(cont)))
        cloze.append(np.array(sums))
    return letters, cloze


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "belebele")
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model("gemma-3-270m")
    ds = load_dataset("belebele", ["eng_Latn", "deu_Latn"], data_dir=args.data_dir).limit(args.items)
    out = tempfile.mkdtemp()
    try:
        t = time.perf_counter()
        evaluate(lm, ds, out, opts=EvalOptions(batch_size=8))
        ours = time.perf_counter() - t
        df = pd.read_parquet(Path(out) / "records").sort_values(["language", "item_id"])
    finally:
        shutil.rmtree(out, ignore_errors=True)
    choices = {(lang, i): ds.item(lang, i).choices for lang in ds.languages for i in ds.item_ids()}
    t = time.perf_counter()
    letters, cloze = plain_loop(lm, df, choices, list(label_plan(lm.tokenizer).token_ids))
    plain = time.perf_counter() - t
    d_let = max(float(np.abs(a - np.asarray(b)).max()) for a, b in zip(letters, df["label_logprobs"]))
    d_clo = max(float(np.abs(a - np.asarray(b)).max()) for a, b in zip(cloze, df["cloze_logprobs"]))
    n = len(df)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"\n## Evaluation (letters + cloze) vs a plain transformers loop — {stamp}\n",
        f"- gemma-3-270m, Belebele eng_Latn + deu_Latn, {args.items} items each ({n} prompts), "
        f"torch threads {args.threads}, one repetition",
        "- plain loop: one full forward per prompt (letters) and per prompt + answer (cloze), "
        "full-vocabulary logits\n",
        "| implementation | time | prompts/s | max abs Δ label log-prob | max abs Δ cloze log-lik |",
        "|---|---|---|---|---|",
        f"| crosslens `evaluate` | {ours:.1f} s | {n / ours:.2f} | – | – |",
        f"| plain loop | {plain:.1f} s | {n / plain:.2f} | {d_let:.1e} | {d_clo:.1e} |\n",
        f"Speed-up: {plain / ours:.2f}× (same process, back to back).\n",
    ]
    text = "\n".join(lines)
    with RESULTS.open("a") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
