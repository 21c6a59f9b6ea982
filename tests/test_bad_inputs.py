# ruff: noqa: E501  (the table of cases reads best one case a line)
"""Every bad input and every fault gets one clear line: a table of malformed commands, data, models
and configs, each asserting exit code 2, exactly one ``error:`` line naming the culprit, no
traceback, and an output folder left exactly as it was. Then the faults that need a process or a
broken model: Ctrl-C, a full disk, non-finite readings.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_model
from crosslens.cli import main
from crosslens.stages.registry import stage_defs
from helpers import QUESTIONS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def snapshot(folder: Path) -> dict[str, bytes] | None:
    """Every visible file below ``folder`` with its bytes (None: the folder does not exist)."""
    if not folder.exists():
        return None
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


def write_toy(
    folder: Path, languages=("en", "de", "zh"), edit: Callable[[str, list[str]], None] | None = None
) -> Path:
    """The toy set as jsonl lines per language; ``edit(lang, lines)`` may change the lines first."""
    folder.mkdir(parents=True, exist_ok=True)
    for lang in languages:
        lines = [
            json.dumps({"id": f"q{k}", "question": q, "choices": c, "answer": g}, ensure_ascii=False)
            for k, (q, c, g) in enumerate(QUESTIONS[lang])
        ]
        if edit:
            edit(lang, lines)
        (folder / f"{lang}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def eval_argv(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """``crosslens eval`` of ``model`` on the jsonl files in ``data`` into ``out``."""
    return ["eval", "-m", str(model), "-d", "jsonl", "--data-dir", str(data), "-o", str(out), *extra]


@dataclass
class World:
    """What the cases refer to: a good model and data, an output folder holding real results."""

    root: Path
    model: Path
    data: Path
    out: Path

    def path(self, name: str) -> Path:
        return self.root / name


@pytest.fixture(scope="module")
def world(saved_model: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("bad-inputs")
    data = write_toy(root / "data")
    w = World(root, saved_model, data, root / "out")
    assert (
        main(["eval", "-m", str(saved_model), "-d", "jsonl", "--data-dir", str(data), "-o", str(w.out)]) == 0
    )
    # Broken things the cases point at, made once.
    (root / "a-file").write_text("not a folder")
    write_toy(root / "empty-de", edit=lambda lang, lines: lines.clear() if lang == "de" else None)
    write_toy(
        root / "bad-json",
        edit=lambda lang, lines: lines.__setitem__(2, '{"id": "q2", "question": ') if lang == "de" else None,
    )
    write_toy(
        root / "deep-json",
        edit=lambda lang, lines: (
            lines.__setitem__(1, "[" * 200_000 + "]" * 200_000) if lang == "de" else None
        ),
    )
    write_toy(root / "no-en", languages=("de", "zh"))
    (write_toy(root / "xx-lang", languages=("en", "de")) / "de.jsonl").rename(root / "xx-lang" / "xx.jsonl")
    write_toy(
        root / "long",
        edit=lambda lang, lines: lines.__setitem__(
            0, json.dumps({"id": "q0", "question": "word " * 700, "choices": ["a", "b"], "answer": 0})
        ),
    )
    for name, damage in (("truncated", lambda b: b[: len(b) // 2]), ("random", lambda b: os.urandom(len(b))),
                         ("bad-header", lambda b: b"\xff" * 8 + b[8:])):  # fmt: skip
        folder = root / f"model-{name}"
        shutil.copytree(saved_model, folder)
        weights = folder / "model.safetensors"
        weights.write_bytes(damage(weights.read_bytes()))
    (root / "no-config").mkdir()
    (root / "partial-words.jsonl").write_text(
        '{"id": "dog", "words": {"en": ["dog"], "de": ["Hund"], "zh": ["狗"]}}\n'
        '{"id": "cat", "words": {"en": ["cat"], "zh": ["猫"]}}\n',
        encoding="utf-8",
    )
    lens_only = ["lens", "-m", str(saved_model), "-d", "jsonl", "--data-dir", str(data), "--layers", "1,2"]
    assert main([*lens_only, "-o", str(root / "lens-only")]) == 0  # readings without records
    return w


def config(world: World, name: str, text: str) -> str:
    path = world.path(name)
    path.write_text(text.replace("MODEL", str(world.model)).replace("OUT", str(world.path("cfg-out"))))
    return str(path)


CFG = "models: [MODEL]\ndatasets: [{name: crosslens-mini, limit: 6}]\nlayers: [1]\noutput: OUT\n"

# (id, argv built from the world, words the error line must contain)
CASES: list[tuple[str, Callable[[World], list[str]], tuple[str, ...]]] = [
    ("misspelt option", lambda w: ["eval", "--limt", "3"], ("--limt", "--limit")),
    ("missing --out", lambda w: ["eval", "-m", str(w.model), "-d", "jsonl"], ("--out",)),
    ("non-numeric --limit", lambda w: [*EVAL(w), "--limit", "abc"], ("--limit",)),
    ("--limit 0", lambda w: [*EVAL(w), "--limit", "0"], ("--limit",)),
    ("--batch-size 0", lambda w: [*EVAL(w), "--batch-size", "0"], ("--batch-size",)),
    ("--batch-size word", lambda w: [*EVAL(w), "--batch-size", "big"], ("--batch-size",)),
    ("unknown command", lambda w: ["evaluate"], ("evaluate",)),
    ("metrics on an empty folder", lambda w: ["metrics", str(w.path("empty-dir"))], ("no evaluation run",)),
    ("unknown device", lambda w: [*EVAL(w), "--device", "banana"], ("--device", "banana")),
    ("CUDA without CUDA", lambda w: [*EVAL(w), "--device", "cuda"], ("--device: cuda", "not available")),
    ("unknown dtype", lambda w: [*EVAL(w), "--dtype", "float8"], ("float8",)),
    ("--out is a file", lambda w: [*EVAL(w, out=w.path("a-file"))], ("a-file", "not a folder")),
    ("--out below a file", lambda w: [*EVAL(w, out=w.path("a-file") / "x")], ("a-file", "not a folder")),
    ("--padding-side middle", lambda w: [*EVAL(w), "--padding-side", "middle"], ("--padding-side", "middle")),
    ("--gammas nan", lambda w: [*STEER(w), "--gammas", "nan"], ("--gammas", "nan")),
    ("--gammas inf", lambda w: [*STEER(w), "--gammas", "1,inf"], ("--gammas", "inf")),
    ("--gammas 1e308", lambda w: [*STEER(w), "--gammas", "1e308"], ("--gammas", "1e+308")),
    ("--gammas word", lambda w: [*STEER(w), "--gammas", "one"], ("--gammas", "'one'")),
    ("--n-vectors 0", lambda w: [*STEER(w), "--n-vectors", "0"], ("--n-vectors",)),
    ("--n-vectors -1", lambda w: [*STEER(w), "--n-vectors", "-1"], ("--n-vectors",)),
    ("--n-vectors beyond the items", lambda w: [*STEER(w), "--n-vectors", "7"], ("--n-vectors: 7", "no items")),
    ("steering layer 0", lambda w: [*STEER(w), "--layers", "0"], ("--layers", "must be >= 1, got 0")),
    ("steering layer beyond the depth", lambda w: [*STEER(w), "--layers", "9"], ("--layers", "[9] beyond the depth")),
    ("pca --layers 999", lambda w: [*PCA(w), "--layers", "999"], ("--layers", "999")),
    ("pca --n-items 0", lambda w: [*PCA(w), "--n-items", "0"], ("--n-items",)),
    ("pca --n-items 1", lambda w: [*PCA(w), "--n-items", "1"], ("--n-items",)),
    ("pca --n-items -1", lambda w: [*PCA(w), "--n-items", "-1"], ("--n-items",)),
    ("lens --layers x", lambda w: [*LENS(w), "--layers", "1,x"], ("--layers", "'x'")),
    ("similarity --pool max", lambda w: [*SIM(w), "--pool", "max"], ("--pool", "max")),
    ("similarity --n-items 3", lambda w: [*SIM(w), "--n-items", "3"], ("--n-items",)),
    ("similarity --matrix-layer 99", lambda w: [*SIM(w), "--matrix-layer", "99"], ("--matrix-layer", "99")),
    ("similarity --layers 99", lambda w: [*SIM(w), "--layers", "1,99"], ("--layers", "99")),
    ("neurons --ablate xx", lambda w: [*NEURONS(w), "--ablate", "xx"], ("--ablate", "'xx'")),
    ("neurons --top-rate 0", lambda w: [*NEURONS(w), "--top-rate", "0"], ("--top-rate",)),
    ("neurons --activation-bar 2", lambda w: [*NEURONS(w), "--activation-bar", "2"], ("--activation-bar",)),
    ("neurons text beyond the items", lambda w: [*NEURONS(w), "--n-text-items", "7"], ("--n-text-items: 7", "no items")),
    ("inspect: no such item", lambda w: [*INSPECT(w), "-d", "crosslens-mini", "--language", "fr", "--item", "mini-999"], ("--item", "crosslens-mini", "'mini-999'")),
    ("inspect: a language the dataset lacks", lambda w: [*INSPECT(w), "-d", "crosslens-mini", "--language", "xx"], ("--language", "'xx'")),
    ("inspect: an empty prompt", lambda w: [*INSPECT(w), "--prompt", ""], ("--prompt", "empty")),
    ("inspect --top-k 0", lambda w: [*INSPECT(w), "--prompt", "x", "--top-k", "0"], ("--top-k",)),
    ("words --task sing", lambda w: [*WORDS(w), "--task", "sing"], ("--task", "'sing'")),
    ("words --target xx", lambda w: [*WORDS(w), "--target", "xx"], ("--target", "'xx'", "word list")),
    ("words --words missing", lambda w: [*WORDS(w), "--words", str(w.path("nowhere.jsonl"))], ("--words", "nowhere.jsonl")),
    ("words list without a translation", lambda w: [*WORDS(w), "--words", str(w.path("partial-words.jsonl"))], ("partial-words.jsonl line 2", "'cat'", "'de'")),
    ("words --lens tuned without a folder", lambda w: [*WORDS(w), "--lens", "tuned"], ("--lens", "tuned:LENS_DIR")),
    ("words --shots beyond the list", lambda w: [*WORDS(w), "--shots", "500"], ("--shots", "500")),
    ("info with an empty prompt", lambda w: ["info", "-m", str(w.model), "--prompt", ""], ("--prompt",)),
    ("unknown dataset", lambda w: [*EVAL(w, dataset="jsonll")], ("jsonll", "jsonl")),
    ("unknown language", lambda w: [*EVAL(w), "--languages", "en,xx"], ("'xx'",)),
    ("missing data folder", lambda w: [*EVAL(w, data=w.path("nowhere"))], ("nowhere",)),
    ("an empty language file", lambda w: [*EVAL(w, data=w.path("empty-de"))], ("no items aligned", "de")),
    ("broken JSON line", lambda w: [*EVAL(w, data=w.path("bad-json"))], ("de.jsonl line 3", "invalid JSON")),
    ("JSON nested 200,000 deep", lambda w: [*EVAL(w, data=w.path("deep-json"))], ("de.jsonl line 2", "nested")),
    ("unknown model alias", lambda w: [*EVAL(w, model="gemma-3-27m")], ("gemma-3-27m", "gemma-3-270m")),
    ("model folder without config", lambda w: [*EVAL(w, model=str(w.path("no-config")))], ("config.json",)),
    ("truncated weights", lambda w: [*EVAL(w, model=str(w.path("model-truncated")), out=w.path("fresh"))], ("cannot load weights",)),
    ("random-byte weights", lambda w: [*EVAL(w, model=str(w.path("model-random")), out=w.path("fresh"))], ("cannot load weights",)),
    ("weights with a bad header", lambda w: [*EVAL(w, model=str(w.path("model-bad-header")), out=w.path("fresh"))], ("cannot load weights",)),
    ("latent --lens banana", lambda w: [*LATENT(w), "--lens", "banana"], ("--lens", "'banana'")),
    ("latent --lens tuned without its folder", lambda w: [*LATENT(w), "--lens", "tuned"], ("--lens", "tuned:PATH")),
    ("latent --positions first", lambda w: [*LATENT(w), "--positions", "first"], ("--positions", "first")),
    ("latent on a code of no language", lambda w: [*LATENT(w, data=w.path("xx-lang"))], ("--languages", "'xx'", "names no language")),
    ("lens without English", lambda w: [*LENS(w, data=w.path("no-en")), "--languages", "de,zh"], ("English",)),
    ("prompt past the context", lambda w: [*EVAL(w, data=w.path("long"), out=w.path("fresh"))], ("'q0'", "512", "--skip-long")),
    ("another model into the folder", lambda w: [*EVAL(w, model="smollm2-135m")], ("model", "smollm2-135m")),
    ("divergence without lens readings", lambda w: [*DIVERGENCE(w)], ("--lens", "no logit-lens readings", "crosslens lens")),
    ("divergence without records", lambda w: [*DIVERGENCE(w, out=w.path("lens-only"))], ("no evaluation records", "crosslens eval")),
    ("divergence --lens xx", lambda w: [*DIVERGENCE(w), "--lens", "xx"], ("--lens", "'xx'")),
    ("divergence --lens tuned:DIR", lambda w: [*DIVERGENCE(w), "--lens", "tuned:lens-dir"], ("--lens", "name the kind")),
    ("divergence --min-rho without rank", lambda w: [*DIVERGENCE(w), "--min-rho", "0.8"], ("--min-rho", "rank")),
    ("divergence without English", lambda w: [*DIVERGENCE(w, data=w.path("no-en")), "--languages", "de,zh"], ("English",)),
    ("config: duplicate key", lambda w: ["run", config(w, "dup.yaml", CFG + "seed: 1\nseed: 2\n")], ("'seed'", "twice")),
    ("config: python tag", lambda w: ["run", config(w, "tag.yaml", CFG + "seed: !!python/object/apply:os.system [ls]\n")], ("tag",)),
    ("config: output below a file", lambda w: ["run", config(w, "out.yaml", CFG.replace("OUT", str(w.path("a-file") / "x")))], ("output", "not a folder")),
    ("config: gamma .nan", lambda w: ["run", config(w, "nan.yaml", CFG + "steering: {layers: [1], gammas: [.nan]}\n")], ("steering.gammas", "nan")),
    ("config: gamma .inf", lambda w: ["run", config(w, "inf.yaml", CFG + "steering: {layers: [1], gammas: [1, .inf]}\n")], ("steering.gammas", "inf")),
    ("config: n_vectors 0", lambda w: ["run", config(w, "nv.yaml", CFG + "steering: {layers: [1], n_vectors: 0}\n")], ("steering.n_vectors",)),
    ("config: padding side", lambda w: ["run", config(w, "pad.yaml", CFG + "padding_side: middle\n")], ("padding_side",)),
    ("config: similarity pool", lambda w: ["run", config(w, "sp.yaml", CFG + "similarity: {pool: max}\n")], ("similarity.pool",)),
    ("config: similarity 3 items", lambda w: ["run", config(w, "sn.yaml", CFG + "similarity: {n_items: 3}\n")], ("similarity.n_items",)),
    ("config: PCA's 3 items for similarity", lambda w: ["run", config(w, "sp3.yaml", CFG + "pca: {n_items: 3}\nsimilarity: {}\n")], ("similarity.n_items", "pca.n_items = 3")),
    ("config: neurons unknown language", lambda w: ["run", config(w, "na.yaml", CFG + "neurons: {ablate: [xx]}\n")], ("neurons.ablate", "'xx'")),
    ("config: words unknown task", lambda w: ["run", config(w, "wt.yaml", CFG + "words: {tasks: [sing]}\n")], ("words.tasks", "'sing'")),
    ("config: words target the list lacks", lambda w: ["run", config(w, "wl.yaml", CFG + "words: {targets: [xx]}\n")], ("words.targets", "'xx'")),
    ("config: latent lens banana", lambda w: ["run", config(w, "ll.yaml", CFG + "latent: {lenses: [logit, banana]}\n")], ("latent.lenses", "'banana'")),
    ("config: latent tuned without its folder", lambda w: ["run", config(w, "lt.yaml", CFG + "latent: {lenses: [tuned]}\n")], ("latent.lenses", "tuned:PATH")),
    ("config: divergence without readings", lambda w: ["run", config(w, "dv.yaml", CFG + "lens: {enabled: false}\ndivergence: {}\n")], ("divergence.lenses", "no logit-lens readings")),
    ("config: divergence lens xx", lambda w: ["run", config(w, "dl.yaml", CFG + "divergence: {lenses: [xx]}\n")], ("divergence.lenses", "'xx'")),
    ("config: neurons top_rate 0", lambda w: ["run", config(w, "nt.yaml", CFG + "neurons: {top_rate: 0}\n")], ("neurons.top_rate",)),
    # Seeds, everywhere they are taken: refused while parsing, before anything is read or written.
    ("eval --seed -1", lambda w: [*EVAL(w), "--seed", "-1"], ("--seed", "-1")),
    ("eval --seed 2^32", lambda w: [*EVAL(w), "--seed", str(2**32)], ("--seed", "4294967295")),
    ("lens --seed -1", lambda w: [*LENS(w), "--seed", "-1"], ("--seed", "-1")),
    ("pca --seed 2^64", lambda w: [*PCA(w), "--seed", str(2**64)], ("--seed", "4294967295")),
    ("similarity --seed -1", lambda w: [*SIM(w), "--seed", "-1"], ("--seed", "-1")),
    ("neurons --seed 2^32", lambda w: [*NEURONS(w), "--seed", str(2**32)], ("--seed", "4294967295")),
    ("steer --seed -1", lambda w: [*STEER(w), "--seed", "-1"], ("--seed", "-1")),
    ("metrics --seed -1", lambda w: ["metrics", str(w.out), "--seed", "-1"], ("--seed", "0")),
    ("metrics --seed 10^30", lambda w: ["metrics", str(w.out), "--seed", str(10**30)], ("--seed", "4294967295")),
    ("train-lens --seed -1", lambda w: [*TRAIN(w), "--seed", "-1"], ("--seed", "0")),
    ("train-lens --seed 2^64", lambda w: [*TRAIN(w), "--seed", str(2**64)], ("--seed", "4294967295")),
    ("import-lmeval --seed -1", lambda w: ["import-lmeval", str(w.path("nowhere")), "-o", str(w.path("fresh")), "--seed", "-1"], ("--seed", "0")),
    ("config: seed -1", lambda w: ["run", config(w, "s1.yaml", CFG + "seed: -1\n")], ("seed", "-1")),
    ("config: seed 2^32", lambda w: ["run", config(w, "s2.yaml", CFG + f"seed: {2**32}\n")], ("seed", "4294967295")),
    # Integers that would exhaust memory or overflow a 64-bit seed after the work: refused up front.
    ("similarity --n-boot 10^12", lambda w: [*SIM(w), "--n-boot", str(10**12)], ("--n-boot", "100000")),
    ("neurons --n-boot 10^12", lambda w: [*NEURONS(w), "--n-boot", str(10**12)], ("--n-boot", "100000")),
    ("neurons --controls 0", lambda w: [*NEURONS(w), "--controls", "0"], ("--controls", ">= 1")),
    ("neurons --controls 2^32", lambda w: [*NEURONS(w), "--controls", str(2**32)], ("--controls", "1000")),
    ("steer --controls 2^32", lambda w: [*STEER(w), "--controls", str(2**32)], ("--controls", "1000")),
    ("train-lens --tokens 10^30", lambda w: [*TRAIN(w), "--tokens", str(10**30)], ("--tokens",)),
    ("train-lens with no layer to train", lambda w: TRAIN(w), ("--layers", "no layer to train")),
    ("config: lens.train.tokens 10^30", lambda w: ["run", config(w, "lt.yaml", CFG + f"lens: {{lenses: [logit, tuned], train: {{tokens: {10**30}}}}}\n")], ("lens.train.tokens",)),
    ("config: neurons.controls 2^32", lambda w: ["run", config(w, "nc.yaml", CFG + f"neurons: {{controls: {2**32}}}\n")], ("neurons.controls",)),
    ("config: ray workers 2^63", lambda w: ["run", config(w, "rw.yaml", CFG + f"ray: {{workers_per_model: {2**63}}}\n")], ("ray.workers_per_model",)),
]  # fmt: skip


def EVAL(w: World, model: str | None = None, data: Path | None = None, out: Path | None = None, dataset: str = "jsonl") -> list[str]:  # fmt: skip  # noqa: N802
    return ["eval", "-m", model or str(w.model), "-d", dataset, "--data-dir", str(data or w.data), "-o", str(out or w.out)]  # fmt: skip


def LENS(w: World, data: Path | None = None) -> list[str]:  # noqa: N802
    return ["lens", *EVAL(w, data=data)[1:], "--layers", "1,2"]


def LATENT(w: World, data: Path | None = None) -> list[str]:  # noqa: N802
    return ["latent", *EVAL(w, data=data)[1:], "--layers", "1"]


def PCA(w: World) -> list[str]:  # noqa: N802
    return ["pca", *EVAL(w)[1:]]


def SIM(w: World) -> list[str]:  # noqa: N802
    return ["similarity", *EVAL(w)[1:], "--n-boot", "10"]


def NEURONS(w: World) -> list[str]:  # noqa: N802
    return ["neurons", *EVAL(w)[1:], "--n-text-items", "2"]


def INSPECT(w: World) -> list[str]:  # noqa: N802
    return ["inspect", "-m", str(w.model), "-o", str(w.path("fresh"))]


def WORDS(w: World) -> list[str]:  # noqa: N802
    return ["words", *EVAL(w)[1:], "--layers", "1"]


def DIVERGENCE(w: World, data: Path | None = None, out: Path | None = None) -> list[str]:  # noqa: N802
    return ["divergence", *EVAL(w, data=data, out=out)[1:], "--layers", "1,2"]


def STEER(w: World) -> list[str]:  # noqa: N802
    return ["steer", *EVAL(w)[1:], "--layers", "1", "--n-vectors", "3"]


def TRAIN(w: World) -> list[str]:  # noqa: N802
    """``crosslens train-lens`` of the 4-block model into a fresh folder (the paper schedule of 4
    blocks reads only the last one: no layer to train unless --layers names some)."""
    corpus = w.path("corpus.txt")
    if not corpus.exists():
        corpus.write_text("\n".join(f"a document of plain text, number {k}" for k in range(20)) + "\n")
    return ["train-lens", "-m", str(w.model), "--corpus", str(corpus), "-o", str(w.path("fresh"))]


@pytest.mark.parametrize("argv, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_touches_nothing(
    argv: Callable[[World], list[str]],
    words: tuple[str, ...],
    world: World,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if "CUDA" in " ".join(words) and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = argv(world)
    folders = [world.out, world.path("cfg-out"), world.path("fresh"), world.path("lens-only")]
    before = [snapshot(f) for f in folders]
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    line = " ".join(err[err.index("error:") :].split())  # rich may wrap the one logical line
    for word in words:
        assert word in line, line
    # The YAML names its keys, the command line its flags, never the other's spelling.
    if args[0] == "run":
        assert not re.search(r"(^|\s)--[a-z]", line.split(": ", 1)[1]), line
    else:
        sections = "|".join(sorted({d.section for d in stage_defs() if d.section}))
        assert not re.search(rf"\b({sections})\.[a-z_]+:", line), line
    assert [snapshot(f) for f in folders] == before  # the fresh folders were never created


def test_the_corpus_is_large() -> None:
    assert len(CASES) >= 40


# -- faults that need a running process or a broken model -------------------------------------------------
def test_ctrl_c_exits_130_with_one_line_and_the_same_command_resumes(
    saved_model: Path, tmp_path: Path
) -> None:
    data = write_toy(tmp_path / "data")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "crosslens.cli", "eval", "-m", str(saved_model), "-d", "jsonl",
           "--data-dir", str(data), "-o", str(out), "--batch-size", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # SIGINT as a terminal sends it, even when this suite was started as a background job (whose
    # children inherit an ignored SIGINT, and Python then installs no KeyboardInterrupt handler).
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "run.json").exists():  # the model is loaded and the stage has begun
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    text = err.decode()
    assert proc.returncode == 130, text[-2000:]
    assert "interrupted; re-run the same command to resume" in text and "Traceback" not in text
    assert not list((out / "records").glob(".tmp-*")) if (out / "records").exists() else True
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    again = tmp_path / "again"
    assert (
        subprocess.run([*cmd[:-3], str(again), "--batch-size", "1"], env=env, capture_output=True).returncode
        == 0
    )
    keys = ["language", "item_id"]
    a = pd.read_parquet(out / "records").sort_values(keys).reset_index(drop=True)
    b = pd.read_parquet(again / "records").sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_a_full_disk_is_one_line_naming_the_file_and_resume_works(
    saved_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow.parquet as pq

    data = write_toy(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["eval", "-m", str(saved_model), "-d", "jsonl", "--data-dir", str(data), "-o", str(out), "--languages", "en,de"]  # fmt: skip
    real = pq.write_table
    calls = {"n": 0}

    def full(table, where, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the first shard fits, the second does not
            with open(where, "wb") as fh:
                fh.write(b"PAR1 half")
            raise OSError(errno.ENOSPC, "No space left on device", str(where))
        return real(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", full)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    line = " ".join(err[err.index("error:") :].split())
    assert "no space left" in line and "records" in line and "re-run the same command to resume" in line
    assert "Traceback" not in err
    assert [
        p.name for p in (out / "records").iterdir() if p.name.startswith(".tmp")
    ] == []  # nothing half-written
    assert len(list((out / "records").glob("*.parquet"))) == 1
    monkeypatch.undo()
    assert main(argv) == 0
    assert main([*argv[:-3], str(tmp_path / "fresh"), *argv[-2:]]) == 0
    keys = ["language", "item_id"]
    a = pd.read_parquet(out / "records").sort_values(keys).reset_index(drop=True)
    b = pd.read_parquet(tmp_path / "fresh" / "records").sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Gemma 3 with one NaN in its last block: every reading it makes is NaN."""
    import copy

    lm = tiny_model("gemma3")
    model = copy.deepcopy(lm.model)
    with torch.no_grad():
        model.model.layers[-1].mlp.down_proj.weight[0, 0] = float("nan")
    folder = tmp_path_factory.mktemp("models") / "nan-model"
    model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("stage", ["eval", "lens", "steer", "words"])
def test_a_non_finite_reading_is_never_ranked(
    stage: str, nan_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_toy(tmp_path / "data")
    out = tmp_path / "out"
    extra = {"eval": [], "lens": ["--layers", "1,4"], "steer": ["--layers", "2", "--n-vectors", "3"],
             "words": ["--layers", "1,4", "--n-concepts", "4"]}[stage]  # fmt: skip
    capsys.readouterr()
    code = main([stage, "-m", str(nan_model), "-d", "jsonl", "--data-dir", str(data), "-o", str(out), *extra])
    err = capsys.readouterr().err
    line = " ".join(err[err.index("error:") :].split())
    assert code == 2 and "Traceback" not in err
    assert ("item 'q" in line or "concepts '" in line) and "layer 4" in line or "layer 2" in line, line
    assert "nan" in line
    for table in ("records", "lens", "steer", "words"):  # no shard, so no summary that averages a NaN
        assert not list((out / table).glob("*.parquet")) if (out / table).exists() else True
    assert not any(out.glob("*summary.json"))


def test_bfloat16_lens_ranks_are_read_from_float32_logits() -> None:
    """In bfloat16, near-equal label logits round to exact ties that argmax gives to choice A."""
    lm = tiny_model("llama")
    anatomy = lm.anatomy
    head = anatomy.head.weight.detach().clone()
    bf16 = copy_model_bf16(lm)
    torch.manual_seed(0)
    h = torch.randn(256, anatomy.d_model)
    # Four targets whose unembedding rows are nearly equal: their bf16 logits collide.
    targets = torch.tensor([[5, 6, 7, 8]] * 256)
    with torch.no_grad():
        for t in (6, 7, 8):
            bf16.anatomy.head.weight[t] = bf16.anatomy.head.weight[5] + 1e-2 * torch.randn(
                anatomy.d_model
            ).to(torch.bfloat16)
    lp = bf16.anatomy.token_logprobs(h, anatomy.n_layers, targets).numpy()
    hn = bf16.anatomy.final_norm(h.to(torch.bfloat16)).float()
    w = bf16.anatomy.head.weight.float()
    expected = (hn @ w[[5, 6, 7, 8]].T) - torch.logsumexp(
        (hn.to(torch.bfloat16) @ bf16.anatomy.head.weight.T).float(), -1, keepdim=True
    )
    np.testing.assert_allclose(lp, expected.numpy(), atol=1e-4)
    rounded = (hn.to(torch.bfloat16) @ bf16.anatomy.head.weight[[5, 6, 7, 8]].T).float().numpy()
    ties_bf16 = sum(len(set(r)) < 4 for r in rounded)
    ties_now = sum(len(set(r)) < 4 for r in lp)
    assert ties_bf16 > 10 and ties_now == 0, (ties_bf16, ties_now)
    assert torch.equal(anatomy.head.weight, head)  # the float32 model was not touched


def copy_model_bf16(lm):
    import copy

    from crosslens.models.anatomy import Anatomy

    model = copy.deepcopy(lm.model).to(torch.bfloat16)
    return type(lm)(model, lm.tokenizer, lm.spec, lm.revision, torch.bfloat16, "cpu", Anatomy.of(model))


def test_jsonl_splits_records_on_newlines_only(tmp_path: Path) -> None:
    from crosslens.data.registry import load_dataset

    def odd(lang: str, lines: list[str]) -> None:
        row = json.loads(lines[0])
        row["question"] += " line\u2028separator and next\u0085line"
        lines[0] = json.dumps(row, ensure_ascii=False)

    ds = load_dataset("jsonl", ["de"], data_dir=write_toy(tmp_path / "d", edit=odd))
    assert "\u2028separator" in ds.item("de", "q0").question and len(ds) == 7


def test_drop_message_names_the_real_reason(
    tmp_path: Path, saved_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def mismatch(lang: str, lines: list[str]) -> None:
        if lang == "de":
            row = json.loads(lines[1])
            row["choices"] = row["choices"][:2]  # q1: 2 choices in German, 3 in English
            row["answer"] = 1
            lines[1] = json.dumps(row, ensure_ascii=False)
            del lines[2]  # q2: missing in German

    data = write_toy(tmp_path / "d", languages=("en", "de"), edit=mismatch)
    assert main(eval_argv(saved_model, data, tmp_path / "o")) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert (
        "jsonl/en: dropped 2 items (1 missing in other languages; 1 whose choice count or answer differs"
        in err
    )
    assert "jsonl/de: dropped 1 items (1 whose choice count or answer differs" in err


def test_dataset_without_english_evaluates_and_reports(
    tmp_path: Path, saved_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_toy(tmp_path / "d", languages=("de", "zh"))
    out = tmp_path / "o"
    assert main(eval_argv(saved_model, data, out)) == 0
    text = capsys.readouterr().out
    assert "no English pivot" in " ".join(text.split()) and "--pivot-file" in text
    assert main(["metrics", str(out)]) == 0
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").is_file()


def test_skip_long_leaves_the_item_out_in_every_language(
    tmp_path: Path, saved_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def long_first(lang: str, lines: list[str]) -> None:
        if lang == "de":
            lines[0] = json.dumps(
                {"id": "q0", "question": "Wort " * 700, "choices": ["a", "b", "c", "d"], "answer": 1}
            )

    data = write_toy(tmp_path / "d", edit=long_first)
    out = tmp_path / "o"
    assert main(eval_argv(saved_model, data, out, "--skip-long")) == 0
    assert "skipped 1 items longer than" in " ".join(capsys.readouterr().err.split())
    records = pd.read_parquet(out / "records")
    assert "q0" not in set(records["item_id"]) and records["item_id"].nunique() == 6
    assert records["prompt_tokens"].max() <= 512


@pytest.mark.parametrize("seed", [-1, 2**32, 2**64])
def test_the_api_refuses_a_bad_seed_before_anything_is_written(seed: int, tmp_path: Path) -> None:
    """The notebook's run_<stage> functions check their seed as the options do: one OptionError naming
    ``seed``, before any work (scikit-learn's and numpy's seeds are 32-bit and non-negative)."""
    from crosslens.options import OptionError
    from crosslens.stages.evaluate.stage import evaluate
    from crosslens.stages.lens.stage import run_lens
    from crosslens.stages.neurons.stage import run_neurons
    from crosslens.stages.pca.stage import run_pca
    from crosslens.stages.similarity.stage import run_similarity
    from crosslens.stages.steering.stage import run_steering
    from helpers import toy_dataset

    lm, ds, out = tiny_model("llama"), toy_dataset(), tmp_path / "out"
    calls = [
        lambda: evaluate(lm, ds, out, seed=seed),
        lambda: run_lens(lm, ds, out, layers=[1], seed=seed),
        lambda: run_pca(lm, ds, out, layers=[1], seed=seed),
        lambda: run_similarity(lm, ds, out, layers=[1], n_items=5, seed=seed),
        lambda: run_neurons(lm, ds, out, n_text_items=2, seed=seed),
        lambda: run_steering(lm, ds, out, ds.languages, [1], [1.0], n_vectors=2, seed=seed),
    ]
    for call in calls:
        with pytest.raises(OptionError, match="^seed: must be") as err:
            call()
        assert err.value.field == "seed"
    assert not out.exists()
