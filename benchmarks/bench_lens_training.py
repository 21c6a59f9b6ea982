"""Tuned-lens training speed: positions per second of ``crosslens.lens_training.train_lens``.

One step = one model forward (no LM head) over ``batch`` documents, the target distribution at
the drawn positions, and every trained layer's translated states through one head projection,
forward and backward, on the full vocabulary. The first step (warm-up) is not timed. Each
requested head dtype is measured (``auto`` resolves to bfloat16 only where the hardware multiplies
it). The text is XStoryCloze's train split from ``--data-dir`` (passages only).
"""

from __future__ import annotations

import time

import common

from crosslens.data.registry import load_dataset
from crosslens.lenses.training import TrainSettings, corpus_from_dataset, default_layers, train_lens
from crosslens.models.loading import bf16_units


def main() -> None:
    ap = common.parser(__doc__, 0, "unused")
    ap.add_argument("--model", default="gemma-3-270m", choices=common.MODELS)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per dtype (after one warm-up step)")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    ap.add_argument("--data-dir", default="/work/shared/data/xstorycloze")
    args = common.parse(ap)
    ds = load_dataset("xstorycloze", None, data_dir=args.data_dir, split="train")
    corpus = corpus_from_dataset(ds)
    rows = []
    with common.scratch_dir() as workdir:
        lm, _folder = common.load(args.model, workdir)
        layers = default_layers(lm.anatomy.n_layers)
        for dtype in args.dtypes:
            settings = TrainSettings(tokens=(args.steps + 1) * 256, val_tokens=32, head_dtype=dtype)
            marks: list[float] = []

            def mark(*_: object, marks: list[float] = marks) -> None:
                marks.append(time.perf_counter())

            train_lens(lm, corpus, f"{workdir}/{dtype}", settings, mark)
            seconds = marks[-1] - marks[0]
            per_step = settings.batch * settings.positions
            speed = per_step * (len(marks) - 1) / seconds
            print(f"{dtype}: {speed:.1f} positions/s ({seconds / (len(marks) - 1):.1f} s per step)")
            rows.append([dtype, len(layers), per_step, f"{seconds / (len(marks) - 1):.1f} s", f"{speed:.1f}"])
    header = ["head dtype", "trained layers", "positions per step", "time per step", "positions/s"]
    body = common.table(header, rows) + (
        f"\n\nThe CPU multiplies bfloat16 in hardware: {bf16_units('cpu')} (`--head-dtype auto` picks "
        "bfloat16 only then). Each position costs one (d x V) projection per trained layer, forward and "
        "backward, plus one for the target: the vocabulary dominates."
    )
    text = f"XStoryCloze train ({len(corpus.documents)} documents)"
    info = {"model": args.model, "layers": layers, "text": text, "timed steps": args.steps}
    common.append_results("Tuned-lens training speed", info, body)


if __name__ == "__main__":
    main()
