"""How close crosslens gets to this machine's float32 GEMM throughput, and how much memory it needs.

Measured back to back in each repetition (so a neighbour's load hits both alike):

* the GEMM peak: ``torch.matmul`` on large square float32 matrices (the best size counts);
* the lens projection shape ``(N x d_model) @ (d_model x vocab)`` as a bare ``F.linear`` with
  Gemma 3 270M's own unembedding, and ``Anatomy.token_logprobs`` on the same rows (final norm +
  projection + log-softmax + gather, in ``max_elements`` chunks);
* the full evaluation pipeline, ``evaluate(..., EvalOptions(cloze=True))`` on Belebele items, and
  the decoder alone on the same prompts.

FLOPs counted: 2 * params * tokens for a forward (params without the token embedding, which is a
lookup; attention score FLOPs are left out) + 2 * d_model * vocab per projected position.
Target: the lens projection reaches ≥ 50 % of the measured GEMM peak.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import common
import torch

from crosslens.data.prompts import get_template, render
from crosslens.models.passes import length_batches
from crosslens.scoring.choices import encode_continuation
from crosslens.scoring.options import EvalOptions
from crosslens.stages.evaluate.stage import evaluate

LANG = "eng_Latn"


def best_time(fn, inner: int) -> float:
    """Fastest of ``inner`` calls (seconds): the machine's capability, not its neighbours' load."""
    best = float("inf")
    for _ in range(inner):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = common.parser(__doc__, 8, "Belebele eng_Latn items of the pipeline run")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096], help="square GEMM sizes")
    ap.add_argument(
        "--rows",
        type=int,
        nargs="+",
        default=[1, 8, 64, 256, 1024],
        help="projected positions N of the lens-shape measurements",
    )
    ap.add_argument("--batch-size", type=int, default=8)
    args = common.parse(ap)

    with common.scratch_dir() as workdir:
        lm, _ = common.load("gemma-3-270m", workdir)
        anatomy = lm.anatomy
        w = anatomy.unembed_weight.detach()
        vocab, d = w.shape
        params = common.non_embedding_params(lm.model)
        final = anatomy.n_layers

        ds = common.belebele([LANG])
        ds = ds.subset(ds.item_ids()[: args.items])
        items = [ds.item(LANG, i) for i in ds.item_ids()]
        template = get_template(ds.template)
        tok = lm.tokenizer
        prompts = [render(it, template) for it in items]
        pids = [tok(p).input_ids for p in prompts]
        conts = [
            [encode_continuation(tok, p, pid, c)[0] for c in it.choices]
            for it, p, pid in zip(items, prompts, pids, strict=True)
        ]
        prompt_tokens = sum(map(len, pids))
        fed = sum(len(c) - 1 for cs in conts for c in cs)  # continuation tokens fed to the model
        projected = len(items) + sum(len(c) for cs in conts for c in cs)  # labels + answer tokens
        pipeline_flops = 2 * params * (prompt_tokens + fed) + 2 * d * vocab * projected
        decoder_flops = 2 * params * prompt_tokens

        gen = torch.Generator().manual_seed(0)
        mats = {n: (torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)) for n in args.sizes}
        hs = {n: torch.randn(n, d, generator=gen) * 4 for n in args.rows}
        targets = {n: torch.randint(0, vocab, (n,), generator=gen) for n in args.rows}
        base = lm.model.get_decoder()

        def decoder_only() -> None:
            with torch.inference_mode():
                for batch in length_batches([len(p) for p in pids], args.batch_size):
                    width = max(len(pids[i]) for i in batch)
                    ids = torch.zeros((len(batch), width), dtype=torch.long)
                    mask = torch.zeros_like(ids)
                    for r, i in enumerate(batch):
                        ids[r, width - len(pids[i]) :] = torch.tensor(pids[i])
                        mask[r, width - len(pids[i]) :] = 1
                    base(input_ids=ids, attention_mask=mask, use_cache=False)

        gemm = {n: common.Stat() for n in args.sizes}
        peak = common.Stat()
        linear = {n: common.Stat() for n in args.rows}
        lens = {n: common.Stat() for n in args.rows}
        lens_mem = {n: 0.0 for n in args.rows}
        pipe, dec = common.Stat(), common.Stat()
        pipe_mem = dec_mem = 0.0
        counter = iter(range(10**6))
        for _rep in range(args.repeats):
            for n, (a, b) in mats.items():
                gemm[n].add(2 * n**3 / best_time(lambda a=a, b=b: torch.matmul(a, b), 3) / 1e9)
            rep_peak = max(g.values[-1] for g in gemm.values())
            peak.add(rep_peak)
            with torch.inference_mode():
                for n in args.rows:
                    flops = 2 * n * d * vocab
                    t = best_time(lambda n=n: torch.nn.functional.linear(hs[n], w), 3)
                    linear[n].add(flops / t / 1e9)
                    with common.PeakRSS() as mem:
                        t = best_time(lambda n=n: anatomy.token_logprobs(hs[n], final, targets[n]), 3)
                    lens[n].add(flops / t / 1e9)
                    lens_mem[n] = max(lens_mem[n], mem.extra_gib)
            with common.PeakRSS() as mem:
                start = time.perf_counter()
                evaluate(
                    lm,
                    ds,
                    Path(workdir) / f"eval{next(counter)}",
                    [LANG],
                    EvalOptions(batch_size=args.batch_size, cloze=True),
                )
                pipe.add(pipeline_flops / (time.perf_counter() - start) / 1e9)
            pipe_mem = max(pipe_mem, mem.extra_gib)
            with common.PeakRSS() as mem:
                dec.add(decoder_flops / best_time(decoder_only, 1) / 1e9)
            dec_mem = max(dec_mem, mem.extra_gib)

    def frac(s: common.Stat) -> common.Stat:
        return common.Stat([100 * x / p for x, p in zip(s.values, peak.values, strict=True)])

    rows = [[f"matmul {n}×{n} @ {n}×{n}", gemm[n].fmt(1), "", "—"] for n in args.sizes]
    rows.append(["**GEMM peak (best size, per repetition)**", peak.fmt(1), "100", "—"])
    for n in args.rows:
        rows.append([f"F.linear ({n}×{d}) @ ({d}×{vocab})", linear[n].fmt(1), frac(linear[n]).fmt(0), "—"])
    for n in args.rows:
        rows.append(
            [f"Anatomy.token_logprobs, N = {n}", lens[n].fmt(1), frac(lens[n]).fmt(0), f"{lens_mem[n]:.2f}"]
        )
    rows.append(
        [
            f"evaluate(cloze=True), {len(items)} items (≈{pipeline_flops / 1e9:.0f} GFLOP)",
            pipe.fmt(1),
            frac(pipe).fmt(0),
            f"{pipe_mem:.2f}",
        ]
    )
    rows.append(
        [
            f"decoder forward only, same prompts (≈{decoder_flops / 1e9:.0f} GFLOP)",
            dec.fmt(1),
            frac(dec).fmt(0),
            f"{dec_mem:.2f}",
        ]
    )
    body = common.table(["measurement", "GFLOP/s", "% of GEMM peak", "extra peak RSS GiB"], rows) + (
        f"\n\nProcess peak RSS (getrusage ru_maxrss): "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB. "
        "GFLOP/s: median (min–max) over repetitions, each the best of 3 calls (pipeline, decoder: one call). "
        "% of peak uses the GEMM peak of the same repetition. Target: token_logprobs ≥ 50 % of the GEMM peak."
    )
    settings = {
        "model": f"gemma-3-270m (d_model {d}, vocab {vocab}, {params / 1e6:.1f} M non-embedding params)",
        "pipeline": f"{len(items)} Belebele {LANG} items: {prompt_tokens} prompt tokens, {fed} continuation "
        f"tokens fed, {projected} positions projected",
        "repeats": args.repeats,
        "token_logprobs": "default max_elements = 2**26 logits per chunk (256 rows of a 262k vocabulary)",
    }
    common.append_results("Throughput limits and memory", settings, body)


if __name__ == "__main__":
    main()
