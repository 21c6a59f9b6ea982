"""Full-answer (cloze) scoring: crosslens ``evaluate`` vs lm-evaluation-harness' loglikelihood path.

Both tools score ``" " + choice`` after the same rendered Belebele prompt:

* crosslens: ``evaluate(lm, ds, out, opts=EvalOptions(cloze=True))`` end to end — it also reads the
  letter labels in the same run (one prompt pass, then one continuation pass that extends the cached
  prompt with all answers at once, projecting only the answer positions);
* lm-eval: ``HFLM.loglikelihood`` on ``(prompt, " " + choice)`` for every choice, what an lm-eval
  ``multiple_choice`` task with ``target_delimiter=" "`` sends: one full forward of prompt + answer
  per choice, every position projected onto the vocabulary.

Compared: per-choice summed log-likelihoods (target ≤ 1e-3), the continuation token ids, the
cloze predictions (raw and per-character normalised), and items/s.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import common
import numpy as np

from crosslens.data.prompts import get_template, render
from crosslens.scoring.choices import encode_continuation
from crosslens.scoring.options import EvalOptions
from crosslens.scoring.records import RECORDS
from crosslens.stages.evaluate.stage import evaluate
from crosslens.store import Store

LANG = "eng_Latn"


def bench_model(name: str, args: argparse.Namespace, workdir: str, dtype: str = "float32") -> list[object]:
    lm, folder = common.load(name, workdir, dtype)
    ds = common.belebele([LANG])
    ds = ds.subset(ds.item_ids()[: args.items])
    items = [ds.item(LANG, i) for i in ds.item_ids()]
    template = get_template(ds.template)
    prompts = [render(it, template) for it in items]
    tok = lm.tokenizer
    owners = [(i, k) for i, it in enumerate(items) for k in range(len(it.choices))]
    pairs = [(prompts[i], " " + items[i].choices[k].strip()) for i, k in owners]
    n_choices = [len(it.choices) for it in items]
    prompt_ids = [tok(p).input_ids for p in prompts]
    max_len = max(
        max(len(tok(c + x).input_ids) for c, x in pairs) + 16,
        getattr(lm.model.config, "max_position_embeddings", 0),
    )
    hf = common.hflm(folder, args.batch_size, max_length=max_len, dtype=dtype)

    same_tokens = joint = 0
    for (i, k), (ctx, cont) in zip(owners, pairs, strict=True):
        ours, was_joint = encode_continuation(tok, ctx, prompt_ids[i], items[i].choices[k])
        joint += was_joint
        same_tokens += hf._encode_pair(ctx, cont) == (prompt_ids[i], ours)

    runs_dir = Path(workdir) / f"{name}-{dtype}"
    counter = iter(range(10**6))

    def run_crosslens() -> list[np.ndarray]:
        dest = runs_dir / f"run{next(counter)}"
        evaluate(lm, ds, dest, [LANG], EvalOptions(batch_size=args.batch_size, cloze=True))
        rec = Store(dest).read(RECORDS).set_index("item_id").loc[ds.item_ids()]
        return [np.asarray(x, dtype=np.float64) for x in rec["cloze_logprobs"]]

    def run_lmeval() -> list[np.ndarray]:
        ll = common.lmeval_loglikelihood(hf, pairs)
        bounds = np.cumsum([0, *n_choices])
        return [np.array(ll[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    evaluate(lm, ds.subset(ds.item_ids()[:2]), runs_dir / "warmup", [LANG], EvalOptions(cloze=True))
    common.lmeval_loglikelihood(hf, pairs[: n_choices[0]])

    runs = common.alternate(args.repeats, {"crosslens": run_crosslens, "lm-eval": run_lmeval})
    times, peaks = runs.times, runs.extra_peak_gib
    ours, theirs = runs.results["crosslens"], runs.results["lm-eval"]
    diffs = np.concatenate([np.abs(a - b) for a, b in zip(ours, theirs, strict=True)])
    chars = [np.array([len(c.strip()) for c in it.choices]) for it in items]
    agree_raw = sum(int(np.argmax(a) == np.argmax(b)) for a, b in zip(ours, theirs, strict=True))
    agree_norm = sum(
        int(np.argmax(a / c) == np.argmax(b / c)) for a, b, c in zip(ours, theirs, chars, strict=True)
    )

    n = len(items)
    speed, cpu_speed = runs.speedup("lm-eval", "crosslens")
    ips_ours = common.Stat([n / t for t in times["crosslens"].values])
    ips_theirs = common.Stat([n / t for t in times["lm-eval"].values])
    answer_tokens = [
        len(tok(" " + c.strip(), add_special_tokens=False).input_ids) for it in items for c in it.choices
    ]
    print(f"{name}: crosslens {ips_ours.fmt(3)} items/s, lm-eval {ips_theirs.fmt(3)} items/s")
    return [
        f"{name} ({dtype})",
        n,
        f"{np.mean(list(map(len, prompt_ids))):.0f}",
        f"{np.mean(answer_tokens):.1f}",
        ips_ours.fmt(3),
        ips_theirs.fmt(3),
        speed.fmt(2, "×"),
        cpu_speed.fmt(2, "×"),
        f"{peaks['crosslens']:.2f} / {peaks['lm-eval']:.2f}",
        f"{diffs.max():.1e} (median {np.median(diffs):.1e})",
        f"{same_tokens}/{len(pairs)} ({joint} joint)",
        f"{agree_raw}/{n}, {agree_norm}/{n}",
    ]


def main() -> None:
    ap = common.parser(__doc__, 12, "Belebele eng_Latn items (first N)")
    ap.add_argument("--batch-size", type=int, default=8, help="batch size of both tools")
    ap.add_argument("--models", nargs="+", default=list(common.MODELS), choices=common.MODELS)
    ap.add_argument(
        "--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"], help="both tools in each"
    )
    args = common.parse(ap)

    with common.scratch_dir() as workdir:
        rows = [bench_model(name, args, workdir, dtype) for name in args.models for dtype in args.dtypes]
    header = [
        "model",
        "items",
        "prompt tokens (mean)",
        "answer tokens (mean)",
        "crosslens items/s",
        "lm-eval items/s",
        "speed-up (wall)",
        "speed-up (CPU time)",
        "extra peak RSS GiB (crosslens / lm-eval)",
        "max abs Δ summed log-lik",
        "same token ids",
        "same cloze prediction (raw, per-char)",
    ]
    body = common.table(header, rows) + (
        "\n\nTimes: median (min–max) over repetitions; speed-up = lm-eval time / crosslens time within the "
        "same repetition (wall clock; process CPU time of all threads). crosslens' time includes its letter "
        "scores (same run); lm-eval's covers the cloze requests only. "
        "Target: summed log-likelihoods agree within 1e-3."
    )
    settings = {
        "items": f"first {args.items} Belebele {LANG} items, template 'belebele', answers ' ' + choice",
        "repeats": args.repeats,
        "batch size": args.batch_size,
        "crosslens": "evaluate(..., EvalOptions(cloze=True)) end to end into a fresh folder per repetition",
        "lm-eval": "HFLM(pretrained=<model folder>, device='cpu', dtype=<crosslens' dtype>)"
        ".loglikelihood(requests)",
    }
    common.append_results("Cloze (full-answer) scoring vs lm-evaluation-harness", settings, body)


if __name__ == "__main__":
    main()
