"""Shared helpers of the crosslens benchmarks: machine facts, timing, peak memory, results file.

Every benchmark times two implementations back to back in one process, alternating which goes
first in each repetition, and reports the median and min-max of the per-repetition times and of
the per-repetition speed ratio. Other processes may share the machine, so ratios measured in the
same repetition are the numbers to trust, not absolute seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import psutil
import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
BELEBELE_DIR = Path(os.environ.get("CROSSLENS_BELEBELE", "/work/shared/data/belebele"))
_LOAD_AT_START = os.getloadavg()


# -- machine -------------------------------------------------------------------------------------
def _version(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def source_state() -> str:
    """The crosslens source measured: git HEAD, uncommitted src files, and a hash of src/crosslens/*.py
    (the library changes under the benchmarks; the hash ties a result to the exact code)."""
    src = REPO / "src" / "crosslens"
    digest = hashlib.sha256()
    for path in sorted(src.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        git = f"git {head}" + (f" + {len(dirty)} uncommitted src files" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        git = "no git"
    return f"{git}; src/crosslens/*.py sha256 {digest.hexdigest()[:12]}"


_SOURCE_AT_START = source_state()


def machine() -> dict[str, str]:
    """What the numbers were measured on (written into every results section)."""
    return {
        "cpu": f"{cpu_model()}, nproc={os.cpu_count()}, torch threads={torch.get_num_threads()}",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "load average (1/5/15 min) at start → end": " / ".join(f"{x:.1f}" for x in _LOAD_AT_START)
        + " → "
        + " / ".join(f"{x:.1f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "versions": ", ".join(
            f"{p} {_version(p)}" for p in ("torch", "transformers", "crosslens", "lm_eval")
        ),
        "crosslens source at start": _SOURCE_AT_START,
    }


def parser(doc: str, items: int, items_help: str) -> argparse.ArgumentParser:
    """The options every benchmark shares: --items, --repeats, --threads."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--items", type=int, default=items, help=f"{items_help} (default {items})")
    ap.add_argument(
        "--repeats", type=int, default=3, help="timed repetitions of each implementation (default 3)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch intra-op threads for both implementations (default: torch's, here "
        f"{torch.get_num_threads()}); 1 gives steadier numbers on a loaded machine",
    )
    return ap


def parse(ap: argparse.ArgumentParser) -> argparse.Namespace:
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args


# -- memory --------------------------------------------------------------------------------------
class PeakRSS:
    """Peak resident memory of this process while the block runs (psutil sampled every 5 ms)."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.proc = psutil.Process()
        self.start = self.peak = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def extra_gib(self) -> float:
        """Peak minus what the process held when the block started (model weights etc.)."""
        return (self.peak - self.start) / 2**30


# -- statistics ----------------------------------------------------------------------------------
@dataclass
class Stat:
    values: list[float] = field(default_factory=list)

    def add(self, x: float) -> None:
        self.values.append(float(x))

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def fmt(self, digits: int = 2, unit: str = "") -> str:
        """``median (min–max)``, the form used in RESULTS.md."""
        lo, hi = min(self.values), max(self.values)
        return f"{self.median:.{digits}f}{unit} ({lo:.{digits}f}–{hi:.{digits}f})"


@dataclass
class Runs:
    """What :func:`alternate` measured per implementation: wall seconds and process CPU seconds (all
    threads) per repetition, the largest extra resident memory of any repetition (GiB above what the
    process held before it), and the last repetition's result."""

    times: dict[str, Stat]
    cpu: dict[str, Stat]
    extra_peak_gib: dict[str, float]
    results: dict[str, object]

    def speedup(self, slow: str, fast: str) -> tuple[Stat, Stat]:
        """Per-repetition ratios slow/fast of wall time and of CPU time (same repetition each)."""
        return ratio(self.times[slow], self.times[fast]), ratio(self.cpu[slow], self.cpu[fast])


def alternate(repeats: int, runs: dict[str, Callable[[], object]]) -> Runs:
    """Time each callable ``repeats`` times, interleaved; the order rotates every repetition so no
    implementation always runs first (caches, thermal state, a neighbour's load).

    CPU time is reported beside wall time because on a shared machine a process is descheduled for
    varying stretches: CPU seconds track the work done, wall seconds what a user waits.
    """
    names = list(runs)
    out = Runs({n: Stat() for n in names}, {n: Stat() for n in names}, dict.fromkeys(names, 0.0), {})
    for rep in range(repeats):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            with PeakRSS() as mem:
                start, cpu = time.perf_counter(), time.process_time()
                out.results[name] = runs[name]()
                out.times[name].add(time.perf_counter() - start)
                out.cpu[name].add(time.process_time() - cpu)
            out.extra_peak_gib[name] = max(out.extra_peak_gib[name], mem.extra_gib)
    return out


def ratio(slow: Stat, fast: Stat) -> Stat:
    """Per-repetition speed-up slow/fast (both measured in the same repetition)."""
    return Stat([s / f for s, f in zip(slow.values, fast.values, strict=True)])


# -- models and data -----------------------------------------------------------------------------
MODELS = ("gemma-3-270m", "tiny-llama")


def load(name: str, workdir: str | Path, dtype: str = "float32"):
    """``(LoadedModel, folder)`` for a benchmark model; lm-eval loads its own copy from ``folder``.

    ``gemma-3-270m``: the real Gemma 3 270M, converted once into the crosslens cache (a plain
    Hugging Face folder). ``tiny-llama``: the test suite's tiny random llama (byte-level BPE
    tokenizer, 400 tokens), saved into ``workdir``.
    """
    if name == "gemma-3-270m":
        from crosslens.models.loading import load_model

        lm = load_model(name, dtype=dtype)
        return lm, lm.source["cache"]
    if name == "tiny-llama":
        sys.path.insert(0, str(REPO / "tests"))
        from dataclasses import replace

        from conftest import tiny_model
        from crosslens.models.loading import resolve_dtype

        lm = tiny_model("llama")
        lm = replace(lm, model=lm.model.to(resolve_dtype(dtype)), dtype=resolve_dtype(dtype))
        folder = Path(workdir) / "tiny-llama"
        lm.model.save_pretrained(folder)
        lm.tokenizer.save_pretrained(folder)
        return lm, str(folder)
    raise ValueError(f"unknown benchmark model {name!r} (use one of {', '.join(MODELS)})")


def belebele(languages: Sequence[str] = ("eng_Latn",)):
    from crosslens.data.registry import load_dataset

    if not BELEBELE_DIR.is_dir():
        sys.exit(f"Belebele files not found in {BELEBELE_DIR} (set CROSSLENS_BELEBELE)")
    return load_dataset("belebele", list(languages), data_dir=BELEBELE_DIR)


def hflm(folder: str, batch_size: int, max_length: int | None = None, dtype: str = "float32"):
    """lm-evaluation-harness' Hugging Face model on CPU in ``dtype``, from a local folder."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=folder, device="cpu", dtype=dtype, batch_size=batch_size, max_length=max_length)


def lmeval_loglikelihood(hf, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """Summed log-likelihood of each ``(context, continuation)`` through ``HFLM.loglikelihood``,
    exactly what an lm-eval ``multiple_choice`` task requests (tokenisation included)."""
    from lm_eval.api.instance import Instance

    reqs = [Instance("loglikelihood", {}, pair, k) for k, pair in enumerate(pairs)]
    return [ll for ll, _greedy in hf.loglikelihood(reqs, disable_tqdm=True)]


GAMMAS = (-2.0, -1.0, 1.0, 2.0, 4.0)


def steering_inputs(lm, n_prompts: int, n_layers: int, batch_size: int):
    """``(prompt_ids, label_ids, settings)`` of a steering grid on crosslens-mini 'de': vectors (Eq. 8)
    from the first 16 items at ``n_layers`` layers spread over the depth, the next ``n_prompts`` items
    as prompts, settings = every (layer, gamma * v) with ``GAMMAS``, gamma-major (float32 deltas)."""
    from crosslens.data.prompts import get_template, render
    from crosslens.data.registry import load_dataset
    from crosslens.scoring.choices import label_plan
    from crosslens.stages.steering.stage import build_vectors

    ds = load_dataset("crosslens-mini", ["de"])
    ids = ds.item_ids()
    n = lm.anatomy.n_layers
    layers = sorted({max(1, round(n * k / (n_layers + 1))) for k in range(1, n_layers + 1)})
    sv = build_vectors(lm, ds, ["de"], layers, ids[:16], batch_size=batch_size)
    settings = [(layer, g * sv.get("de", layer).float()) for g in GAMMAS for layer in layers]
    template, plan = get_template(ds.template), label_plan(lm.tokenizer)
    items = [ds.item("de", i) for i in ids[16 : 16 + n_prompts]]
    prompt_ids = [lm.tokenizer(render(it, template)).input_ids for it in items]
    return prompt_ids, [plan.for_n(len(it.choices)) for it in items], settings


def scratch_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="crosslens-bench-")


def non_embedding_params(model: torch.nn.Module) -> int:
    """Parameters a forward pass multiplies with (the token embedding is a lookup, not a GEMM)."""
    emb = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not emb)


# -- results -------------------------------------------------------------------------------------
def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def append_results(title: str, settings: dict[str, object], body: str) -> None:
    """Append a dated section to benchmarks/RESULTS.md (and print it)."""
    stamp = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines = [f"## {title} — {stamp}", ""]
    lines += [f"- **{k}**: {v}" for k, v in {**machine(), **settings}.items()]
    text = "\n".join(lines) + "\n\n" + body.strip() + "\n\n"
    if not RESULTS.exists():
        RESULTS.write_text(
            "# crosslens benchmark results\n\n"
            "Sections are appended by the scripts in this folder (see README.md); newest last.\n\n"
        )
    with RESULTS.open("a", encoding="utf-8") as fh:
        fh.write(text)
    print(text)
