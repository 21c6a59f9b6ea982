"""K-shot evaluation cost: the exemplar block as a shared prefix vs re-encoded in every prompt.

Every K-shot prompt of a language starts with the same exemplar block; crosslens encodes it once
per group of prompts (``crosslens.scoring._share``) and runs each question, then its answer texts,
after that cache. This benchmark evaluates the same items (letters and cloze, final layer) three
ways in one process: zero-shot, K-shot with the shared block, and K-shot with sharing turned off
(every prompt encoded whole: the cost of K+1 prompts), and checks the two K-shot runs agree.
Belebele items (``--languages``) from ``$CROSSLENS_BELEBELE``; the exemplars are drawn from items
after the evaluated ones.
"""

from __future__ import annotations

import common
import numpy as np

import crosslens.scoring as scoring
from crosslens.scoring.choices import prompt_label_plan
from crosslens.scoring.options import EvalOptions
from crosslens.scoring.records import item_rows
from crosslens.stages.prompting import build_prompter


def main() -> None:
    ap = common.parser(__doc__, 24, "evaluated items per language")
    ap.add_argument("--model", default="gemma-3-270m", choices=common.MODELS)
    ap.add_argument("--shots", type=int, default=3, help="K exemplars (default 3)")
    ap.add_argument("--languages", nargs="+", default=["eng_Latn", "deu_Latn"])
    ap.add_argument("--batch-size", type=int, default=8)
    args = common.parse(ap)
    full = common.belebele(args.languages).limit(args.items + 50)
    ds, pool = full.subset(full.item_ids()[: args.items]), full.subset(full.item_ids()[args.items :])
    with common.scratch_dir() as workdir:
        lm, _ = common.load(args.model, workdir)
        zero = EvalOptions(batch_size=args.batch_size)
        kshot = EvalOptions(batch_size=args.batch_size, num_fewshot=args.shots)
        prompters = {
            "0-shot": build_prompter(lm, ds, ds.languages, zero, 0),
            f"{args.shots}-shot": build_prompter(lm, ds, ds.languages, kshot, 0, pool),
        }
        plan = prompt_label_plan(prompters["0-shot"])
        tokens = {
            name: int(
                np.mean(
                    [len(p.ids(p.text(ds.item(lang, i)))) for lang in ds.languages for i in ds.item_ids()]
                )
            )
            for name, p in prompters.items()
        }

        def run(name: str, opts: EvalOptions, share: bool):
            def go():
                real = scoring._share
                if not share:
                    scoring._share = lambda ids: [(0, [i]) for i in range(len(ids))]
                try:
                    return [
                        item_rows(lm, [ds.item(lang, i) for i in ds.item_ids()], prompters[name], plan, opts)
                        for lang in ds.languages
                    ]
                finally:
                    scoring._share = real

            return go

        k = f"{args.shots}-shot"
        runs = common.alternate(
            args.repeats,
            {
                "0-shot": run("0-shot", zero, True),
                f"{k} shared": run(k, kshot, True),
                f"{k} unshared": run(k, kshot, False),
            },
        )
    shared, unshared = runs.results[f"{k} shared"], runs.results[f"{k} unshared"]
    delta = max(
        float(np.max(np.abs(np.concatenate([np.ravel(np.stack(a[c])) - np.ravel(np.stack(b[c]))]))))
        for a, b in zip(shared, unshared)
        for c in ("label_logprobs", "cloze_logprobs")
    )
    agree = all(
        (a["pred"] == b["pred"]).all() and (a["cloze_pred"] == b["cloze_pred"]).all()
        for a, b in zip(shared, unshared)
    )
    zero_t = runs.times["0-shot"]
    rows = [
        [name, f"{tokens['0-shot' if name == '0-shot' else k]}", runs.times[name].fmt(1, " s"),
         common.ratio(runs.times[name], zero_t).fmt(2, "×"), f"{runs.extra_peak_gib[name]:.2f}"]
        for name in runs.times
    ]  # fmt: skip
    body = common.table(
        ["prompts", "mean prompt tokens", "time (letters + cloze)", "× zero-shot time", "extra peak RSS GiB"],
        rows,
    ) + (
        f"\n\nShared vs unshared {k}: max |Δ log-prob| {delta:.1e}, predictions identical: {agree}. "
        f"Re-encoding the block costs about {tokens[k] / tokens['0-shot']:.1f} zero-shot prompts' worth of "
        "tokens per item; with the shared block each item pays for its question, its answers and their "
        "attention over the cached block."
    )
    info = {
        "model": args.model,
        "items": f"{args.items} Belebele items × {', '.join(ds.languages)}; exemplars drawn after them",
        "batch size": args.batch_size,
        "repeats": args.repeats,
    }
    common.append_results(f"{k} evaluation: shared exemplar block", info, body)


if __name__ == "__main__":
    main()
