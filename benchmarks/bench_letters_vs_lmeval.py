"""Letter-choice evaluation: crosslens ``evaluate`` vs lm-evaluation-harness on the same prompts.

Both tools score the same Belebele items with the same prompt strings (crosslens' ``belebele``
template, rendered once) and read the same label tokens:

* crosslens: ``evaluate(lm, ds, out, opts=EvalOptions(cloze=False))`` end to end (tokenisation,
  label plan, batched prompt pass, label projection, parquet records, summary);
* lm-eval: ``HFLM.loglikelihood`` on the requests an lm-eval ``multiple_choice`` task would send,
  ``(prompt, " A")``, ``(prompt, " B")``, ... (``"A"`` when crosslens' label plan is ``nospace``).
  lm-eval tokenises prompt + continuation jointly and groups one-token continuations of the same
  context, so it runs one forward per item too, but projects every position onto the vocabulary.

Agreement is checked per item (argmax) and per label (log-probability), and the token ids lm-eval
feeds the model are compared with crosslens' own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import common
import numpy as np

from crosslens.data.prompts import get_template, render
from crosslens.scoring.choices import label_plan
from crosslens.scoring.options import EvalOptions
from crosslens.scoring.records import RECORDS
from crosslens.stages.evaluate.stage import evaluate
from crosslens.store import Store

LANG = "eng_Latn"


def bench_model(
    name: str, args: argparse.Namespace, workdir: str, dtype: str = "float32"
) -> tuple[list[object], dict[str, str]]:
    lm, folder = common.load(name, workdir, dtype)
    ds = common.belebele([LANG])
    ds = ds.subset(ds.item_ids()[: args.items])
    items = [ds.item(LANG, i) for i in ds.item_ids()]
    template = get_template(ds.template)
    prompts = [render(it, template) for it in items]
    tok = lm.tokenizer
    plan = label_plan(tok)
    sep = " " if plan.form == "space" else ""
    owners = [(i, k) for i, it in enumerate(items) for k in range(len(it.choices))]
    pairs = [(prompts[i], sep + plan.letters[k]) for i, k in owners]
    n_choices = [len(it.choices) for it in items]
    prompt_ids = [tok(p).input_ids for p in prompts]
    longest = max(map(len, prompt_ids))
    max_len = max(longest + 16, getattr(lm.model.config, "max_position_embeddings", 0))
    hf = common.hflm(folder, args.batch_size, max_length=max_len, dtype=dtype)

    # Same tokens? lm-eval splits the joint encoding of prompt + continuation at the prompt's length.
    same_tokens = 0
    for (i, k), (ctx, cont) in zip(owners, pairs, strict=True):
        ctx_enc, cont_enc = hf._encode_pair(ctx, cont)
        same_tokens += ctx_enc == prompt_ids[i] and cont_enc == [plan.token_ids[k]]

    runs_dir = Path(workdir) / f"{name}-{dtype}"
    counter = iter(range(10**6))

    def run_crosslens() -> list[np.ndarray]:
        dest = runs_dir / f"run{next(counter)}"
        evaluate(lm, ds, dest, [LANG], EvalOptions(batch_size=args.batch_size, cloze=False))
        rec = Store(dest).read(RECORDS).set_index("item_id").loc[ds.item_ids()]
        return [np.asarray(x, dtype=np.float64) for x in rec["label_logprobs"]]

    def run_lmeval() -> list[np.ndarray]:
        ll = common.lmeval_loglikelihood(hf, pairs)
        bounds = np.cumsum([0, *n_choices])
        return [np.array(ll[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    # Warm-up (first-call allocations, lazy imports) on a few items, untimed.
    evaluate(lm, ds.subset(ds.item_ids()[:2]), runs_dir / "warmup", [LANG], EvalOptions(cloze=False))
    common.lmeval_loglikelihood(hf, pairs[: 2 * n_choices[0]])

    runs = common.alternate(args.repeats, {"crosslens": run_crosslens, "lm-eval": run_lmeval})
    times, peaks = runs.times, runs.extra_peak_gib
    ours, theirs = runs.results["crosslens"], runs.results["lm-eval"]
    max_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ours, theirs, strict=True))
    pred_ours = [int(np.argmax(a)) for a in ours]
    pred_theirs = [int(np.argmax(b)) for b in theirs]
    agree = sum(a == b for a, b in zip(pred_ours, pred_theirs, strict=True))
    gold = [it.gold for it in items]
    acc = [np.mean([p == g for p, g in zip(pr, gold, strict=True)]) for pr in (pred_ours, pred_theirs)]
    # Smallest gap between the two best labels: how close a float-rounding flip could come.
    margin = min(float(np.sort(a)[-1] - np.sort(a)[-2]) for a in ours)

    n = len(items)
    speed, cpu_speed = runs.speedup("lm-eval", "crosslens")
    ips_ours = common.Stat([n / t for t in times["crosslens"].values])
    ips_theirs = common.Stat([n / t for t in times["lm-eval"].values])
    row = [
        f"{name} ({dtype})",
        n,
        f"{np.mean(list(map(len, prompt_ids))):.0f}",
        ips_ours.fmt(2),
        ips_theirs.fmt(2),
        speed.fmt(2, "×"),
        cpu_speed.fmt(2, "×"),
        f"{peaks['crosslens']:.2f} / {peaks['lm-eval']:.2f}",
        f"{agree}/{n}",
        f"{max_diff:.1e}",
        f"{same_tokens}/{len(pairs)}",
        f"{acc[0]:.3f} / {acc[1]:.3f}",
        f"{margin:.1e}",
    ]
    facts = {
        f"label tokens ({name})": f"{plan.form}: {', '.join(plan.tokens[:4])}; "
        f"lm-eval continuation {sep + 'A'!r}"
    }
    print(f"{name}: crosslens {ips_ours.fmt(2)} items/s, lm-eval {ips_theirs.fmt(2)} items/s")
    return row, facts


def main() -> None:
    ap = common.parser(__doc__, 40, "Belebele eng_Latn items (first N)")
    ap.add_argument("--batch-size", type=int, default=8, help="batch size of both tools")
    ap.add_argument("--models", nargs="+", default=list(common.MODELS), choices=common.MODELS)
    ap.add_argument(
        "--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"], help="both tools in each"
    )
    args = common.parse(ap)

    rows, facts = [], {}
    with common.scratch_dir() as workdir:
        for name, dtype in ((n, d) for n in args.models for d in args.dtypes):
            row, f = bench_model(name, args, workdir, dtype)
            rows.append(row)
            facts |= f
    header = [
        "model",
        "items",
        "prompt tokens (mean)",
        "crosslens items/s",
        "lm-eval items/s",
        "speed-up (wall)",
        "speed-up (CPU time)",
        "extra peak RSS GiB (crosslens / lm-eval)",
        "same prediction",
        "max abs Δ log p",
        "same token ids",
        "accuracy (crosslens / lm-eval)",
        "smallest top-2 margin",
    ]
    body = common.table(header, rows) + (
        "\n\nTimes: median (min–max) over repetitions; speed-up = lm-eval time / crosslens time within the "
        "same repetition (wall clock; process CPU time of all threads). "
        "Target on gemma-3-270m: speed-up ≥ 3×."
    )
    settings = {
        "items": f"first {args.items} Belebele {LANG} items, template 'belebele'",
        "repeats": args.repeats,
        "batch size": args.batch_size,
        "crosslens": "evaluate(..., EvalOptions(cloze=False)) end to end into a fresh folder per repetition",
        "lm-eval": "HFLM(pretrained=<model folder>, device='cpu', dtype=<crosslens' dtype>)"
        ".loglikelihood(requests)",
        **facts,
    }
    common.append_results("Letter-choice evaluation vs lm-evaluation-harness", settings, body)


if __name__ == "__main__":
    main()
