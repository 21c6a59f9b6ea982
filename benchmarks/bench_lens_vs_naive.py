"""Multilingual logit lens: crosslens ``run_lens`` vs the obvious loop over full forwards.

Same model, items, layers and readings: for each (language, item) the native prompt is followed by
every native and every English answer text; at each lens layer the mean log-probability of the
answer tokens (``native`` / ``en``) and the label log-probabilities at ``Answer:`` (``label``).

* crosslens: ``run_lens(lm, ds, out, languages, layers)`` end to end (one prompt pass per batch,
  one continuation pass over the cached prompts, only the read positions projected);
* naive: one ``model(prompt + answer, output_hidden_states=True)`` per (prompt, answer); at every
  lens layer the final norm and ``lm_head`` are applied to *every* position, log-softmax, then the
  answer positions are gathered (the last layer reads the model's own logits). It uses the model's
  modules directly (``get_decoder().norm``, ``get_output_embeddings()``), not crosslens' anatomy;
* naive, read positions only: the same forwards, projecting only the positions that are read —
  it separates what the KV-cache reuse buys from what skipping unread projections buys;
* nnsight (when it is installed; keep it out of the project's venv, see README.md): the logit lens
  as nnsight's tutorial writes it — one ``model.trace`` per (prompt, answer) that sends every
  position of every lens layer through the model's own ``norm`` and ``lm_head`` and saves the
  log-softmax.

Target: all readings agree within 1e-4; crosslens ≥ 5× faster than the naive loop.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import common
import torch

from crosslens.data.prompts import get_template, render
from crosslens.data.registry import load_dataset
from crosslens.models.anatomy import paper_layers
from crosslens.scoring.choices import encode_continuation, label_plan
from crosslens.scoring.options import EvalOptions
from crosslens.stages.lens.stage import LENS, run_lens
from crosslens.store import Store

Key = tuple[str, str, int, str, int]  # language, item id, layer, form, choice


def answers(
    tok, ds, languages: list[str]
) -> Iterator[tuple[tuple[str, str, str, int], list[int], list[int], list[int] | None]]:
    """Every (prompt, answer) the lens reads: its key, the joint token ids, the answer's tokens and,
    for an item's first answer only, the label ids (read at the last prompt position)."""
    template, plan = get_template(ds.template), label_plan(tok)
    for lang in languages:
        for item_id in ds.item_ids():
            it = ds.item(lang, item_id)
            prompt = render(it, template)
            pids = tok(prompt).input_ids
            n = len(it.choices)
            for j, text in enumerate((*it.choices, *ds.english_choices(item_id))):
                cont = encode_continuation(tok, prompt, pids, text)[0]
                form, choice = ("native", j) if j < n else ("en", j - n)
                yield (lang, item_id, form, choice), pids, cont, plan.for_n(n) if j == 0 else None


def record(out: dict[Key, float], key, layer: int, logp, rows, cont: list[int], labels) -> None:
    """Store one layer's reading of an answer (and the labels, once per item)."""
    lang, item_id, form, choice = key
    out[(lang, item_id, layer, form, choice)] = float(logp[rows, cont].mean())
    if labels is not None:  # labels: the last prompt position, identical in every forward
        for k, x in enumerate(logp[rows[0], labels].tolist()):
            out[(lang, item_id, layer, "label", k)] = x


def read_positions(pids: list[int], cont: list[int]) -> torch.Tensor:
    """Position p predicts token p + 1: the answer is read at len(pids) - 1 ... end - 1."""
    return torch.arange(len(pids) - 1, len(pids) - 1 + len(cont))


def naive_lens(lm, ds, languages: list[str], layers: list[int], all_positions: bool) -> dict[Key, float]:
    model = lm.model
    norm, head = model.get_decoder().norm, model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    n_layers = model.config.num_hidden_layers
    out: dict[Key, float] = {}
    for key, pids, cont, labels in answers(lm.tokenizer, ds, languages):
        read = read_positions(pids, cont)
        with torch.inference_mode():
            res = model(input_ids=torch.tensor([pids + cont]), output_hidden_states=True)
            for layer in layers:
                if layer == n_layers:
                    logits = res.logits[0]
                else:
                    h = res.hidden_states[layer][0]
                    logits = head(norm(h if all_positions else h[read]))
                    if softcap:
                        logits = torch.tanh(logits / softcap) * softcap
                rows = read if (all_positions or layer == n_layers) else torch.arange(len(read))
                record(out, key, layer, logits.float().log_softmax(-1), rows, cont, labels)
    return out


def nnsight_lens(lm, ds, languages: list[str], layers: list[int]) -> dict[Key, float]:
    import warnings

    from nnsight import LanguageModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LanguageModel still works; its successor needs a repo id
        model = LanguageModel(lm.model, tokenizer=lm.tokenizer)
    decoder = model.model
    softcap = getattr(lm.model.config, "final_logit_softcapping", None)
    out: dict[Key, float] = {}
    for key, pids, cont, labels in answers(lm.tokenizer, ds, languages):
        ids = torch.tensor([pids + cont])
        saved = {}
        with model.trace({"input_ids": ids, "attention_mask": torch.ones_like(ids)}):
            for layer in layers:
                h = decoder.layers[0].input if layer == 0 else decoder.layers[layer - 1].output
                logits = model.lm_head(decoder.norm(h))
                if softcap:
                    logits = torch.tanh(logits / softcap) * softcap
                saved[layer] = logits.float().log_softmax(-1).save()
        for layer in layers:
            record(out, key, layer, saved[layer][0], read_positions(pids, cont), cont, labels)
    return out


def main() -> None:
    ap = common.parser(__doc__, 2, "crosslens-mini items per language (first N)")
    ap.add_argument(
        "--languages",
        nargs="+",
        default=["en", "de", "zh"],
        help="crosslens-mini languages (keep en: run_lens fails without it, see README.md)",
    )
    ap.add_argument("--layers", type=int, nargs="+", help="lens layers (default: the paper's every 4th)")
    ap.add_argument("--batch-size", type=int, default=8, help="crosslens batch size")
    ap.add_argument("--model", default="gemma-3-270m", choices=common.MODELS)
    args = common.parse(ap)

    with common.scratch_dir() as workdir:
        lm, _folder = common.load(args.model, workdir)
        ds = load_dataset("crosslens-mini", args.languages)
        ds = ds.subset(ds.item_ids()[: args.items])
        layers = args.layers or paper_layers(lm.anatomy.n_layers)
        counter = iter(range(10**6))

        def crosslens_run() -> dict[Key, float]:
            dest = Path(workdir) / f"lens{next(counter)}"
            run_lens(lm, ds, dest, args.languages, layers, EvalOptions(batch_size=args.batch_size))
            df = Store(dest).read(LENS)
            keys = zip(df["language"], df["item_id"], df["layer"], df["form"], df["choice"], strict=True)
            return {
                (lang, i, int(layer), f, int(c)): float(x)
                for (lang, i, layer, f, c), x in zip(keys, df["logprob"], strict=True)
            }

        runs = {
            "crosslens": crosslens_run,
            "naive": lambda: naive_lens(lm, ds, args.languages, layers, all_positions=True),
            "naive, read positions only": lambda: naive_lens(lm, ds, args.languages, layers, False),
        }
        if importlib.util.find_spec("nnsight") is not None:
            runs["nnsight"] = lambda: nnsight_lens(lm, ds, args.languages, layers)
        small = ds.subset(ds.item_ids()[:1])
        run_lens(lm, small, Path(workdir) / "warmup", args.languages, layers, EvalOptions())
        naive_lens(lm, small, args.languages[:1], layers, all_positions=False)
        measured = common.alternate(args.repeats, runs)

    times, results = measured.times, measured.results
    ref = results["crosslens"]
    rows = []
    n_pairs = len(args.languages) * len(ds)
    for name in runs:
        res = results[name]
        missing = set(ref) ^ set(res)
        diff, worst = max((abs(ref[k] - res[k]), k) for k in ref.keys() & res.keys())
        speed, cpu_speed = measured.speedup(name, "crosslens")
        rows.append(
            [
                name,
                times[name].fmt(2, " s"),
                common.Stat([n_pairs / t for t in times[name].values]).fmt(3),
                "—" if name == "crosslens" else speed.fmt(2, "×"),
                "—" if name == "crosslens" else cpu_speed.fmt(2, "×"),
                f"{measured.extra_peak_gib[name]:.2f}",
                "—" if name == "crosslens" else f"{diff:.1e} (layer {worst[2]} {worst[3]}: {ref[worst]:.2f})",
                len(missing),
            ]
        )
        print(name, times[name].fmt(2, " s"), speed.fmt(2, "×"), f"max diff {diff:.1e}")
    header = [
        "implementation",
        "time",
        "(language, item)/s",
        "crosslens speed-up (wall)",
        "(CPU time)",
        "extra peak RSS GiB",
        "max abs Δ vs crosslens (where: value)",
        "readings missing",
    ]
    body = common.table(header, rows) + (
        f"\n\n{len(ref)} readings (mean log-prob per answer, label log-probs) per implementation. "
        "Times: median (min–max); speed-up = that implementation's time / crosslens' time in the same "
        "repetition (wall clock; process CPU time of all threads). "
        "Targets: max abs Δ ≤ 1e-4, crosslens ≥ 5× the naive loop."
    )
    settings = {
        "model": args.model,
        "data": f"crosslens-mini, languages {args.languages} (+ en answers), first {args.items} items",
        "layers": layers,
        "repeats": args.repeats,
        "batch size (crosslens)": args.batch_size,
        "crosslens": "run_lens(...) end to end into a fresh folder per repetition",
        "naive": "one model(..., output_hidden_states=True) per (prompt, answer), batch 1",
        "nnsight": (
            f"nnsight {importlib.metadata.version('nnsight')}: one model.trace per (prompt, answer), "
            "every position of every layer through norm + lm_head"
            if "nnsight" in runs
            else "not installed"
        ),
    }
    common.append_results("Logit lens vs naive full forwards", settings, body)


if __name__ == "__main__":
    main()
