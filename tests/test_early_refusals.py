# ruff: noqa: E501  (the table of cases reads best one case a line)
"""Refusals that need no model come before any model loads and before anything is written: each
case runs through ``main()`` with model loading patched to fail, and must end with exit 2, one
``error:`` line naming the culprit, and its folders exactly as they were. Then the misleading
messages of part 5 of issue 28 (export-vectors into a folder, neurons without an English pivot).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from crosslens.cli import main
from helpers import QUESTIONS

LEGACY = Path(__file__).parent / "data" / "folder_before_layout"  # a folder holding every stage's results


def snapshot(folder: Path) -> dict[str, bytes] | None:
    """Every file below ``folder`` with its bytes (None: the folder does not exist)."""
    if not folder.exists():
        return None
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@dataclass
class World:
    model: Path
    other_model: Path  # the same weights in another folder: another spec
    data: Path  # en, de, zh: 7 items each
    no_english: Path  # de, zh
    results: Path  # a folder holding evaluation (and other) results
    lens: Path  # a folder that is not a lens (the refusals come first)
    corpus: Path  # a text file that is not UTF-8
    out: Path  # where every command writes (never created)
    root: Path


@pytest.fixture(scope="module")
def world(saved_model: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("early")
    data, no_english = root / "data", root / "no-en"
    for folder, languages in ((data, ("en", "de", "zh")), (no_english, ("de", "zh"))):
        folder.mkdir()
        for lang in languages:
            lines = [json.dumps({"id": f"q{k}", "question": q, "choices": c, "answer": g}, ensure_ascii=False)
                     for k, (q, c, g) in enumerate(QUESTIONS[lang])]  # fmt: skip
            (folder / f"{lang}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    other = root / "other-model"
    shutil.copytree(saved_model, other)
    results = root / "results"
    shutil.copytree(LEGACY, results)
    (root / "lens").mkdir()
    (root / "corpus.txt").write_bytes(b"one document\n\xff\xfe not text\n")
    return World(
        saved_model, other, data, no_english, results, root / "lens", root / "corpus.txt", root / "out", root
    )


def cli(w: World, command: str, *extra: str, data: Path | None = None) -> list[str]:
    return [
        command,
        "-m",
        str(w.model),
        "-d",
        "jsonl",
        "--data-dir",
        str(data or w.data),
        "-o",
        str(w.out),
        *extra,
    ]


def run(w: World, text: str) -> list[str]:
    """``crosslens run`` of the model on the toy data with ``text`` added (``text`` alone where it names
    its models); MODEL, OTHER, DATA, NOEN, OUT, CORPUS and LENS stand for the world's paths."""
    base = "models: [MODEL]\ndatasets: [{name: jsonl, data_dir: DATA}]\nlayers: [1]\noutput: OUT\n"
    text = text if text.startswith("models:") else base + text
    for key, value in (("MODEL", w.model), ("OTHER", w.other_model), ("NOEN", w.no_english), ("DATA", w.data),
                       ("OUT", w.out), ("CORPUS", w.corpus), ("LENS", w.lens)):  # fmt: skip
        text = text.replace(key, str(value))
    path = w.root / "exp.yaml"
    path.write_text(text)
    return ["run", str(path), "--no-progress"]


# (id, argv, words the error line must contain)
CASES: list[tuple[str, Callable[[World], list[str]], tuple[str, ...]]] = [
    ("similarity: too few items", lambda w: cli(w, "similarity", "--limit", "3", "--n-items", "4"), ("--n-items", "at least 4")),
    ("eval: an empty system text", lambda w: cli(w, "eval", "--system-instruction", "  "), ("--system-instruction", "empty")),
    ("steer: no English pivot", lambda w: cli(w, "steer", "--languages", "de,zh", "--layers", "1", "--n-vectors", "2", data=w.no_english), ("English pivot to steer",)),
    ("lens: no English pivot", lambda w: cli(w, "lens", "--languages", "de,zh", data=w.no_english), ("English pivot", "lens")),
    ("lens: two tuned lenses", lambda w: cli(w, "lens", "--lens", f"tuned:{w.lens}", "--lens", f"tuned:{w.results}"), ("--lens", "name each lens kind once")),
    ("train-lens into a result folder", lambda w: ["train-lens", "-m", str(w.model), "-o", str(w.results), "--corpus", str(w.corpus)], ("results holds crosslens results, not a lens",)),
    ("train-lens: a corpus that is no text", lambda w: ["train-lens", "-m", str(w.model), "-o", str(w.out), "--corpus", str(w.corpus)], ("corpus.txt", "cannot read")),
    ("config: train with no items beyond the limit", lambda w: run(w, "lens: {lenses: [logit, tuned], train: {tokens: 8}}\n"), ("lens.train:", "no items beyond the 7")),
    ("config: train on the items read", lambda w: run(w, "lens: {lenses: [logit, tuned], train: {tokens: 8, dataset: {name: jsonl, data_dir: DATA}}}\n"), ("lens.train.dataset:", "of the items it reads")),
    ("config: a corpus that is no text", lambda w: run(w, "lens: {lenses: [logit, tuned], train: {tokens: 8, corpus: [CORPUS]}}\n"), ("lens.train.corpus:", "corpus.txt")),
    ("config: one tuned lens for two models", lambda w: run(w, "models: [MODEL, OTHER]\ndatasets: [{name: jsonl, data_dir: DATA}]\nlayers: [1]\noutput: OUT\nlens: {lenses: [logit, 'tuned:LENS']}\n"), ("lens.lenses:", "for one model, not for each of 2")),
    ("config: similarity with too few items", lambda w: run(w, "models: [MODEL]\ndatasets: [{name: jsonl, data_dir: DATA, limit: 3}]\nlayers: [1]\noutput: OUT\nsimilarity: {n_items: 4}\n"), ("similarity.n_items:", "at least 4 aligned items; jsonl has 3")),
    ("config: an empty system text", lambda w: run(w, "system_instruction: ' '\n"), ("system_instruction:", "empty")),
    ("config: steering without English", lambda w: run(w, "models: [MODEL]\ndatasets: [{name: jsonl, data_dir: NOEN}]\nlayers: [1]\noutput: OUT\nlens: {enabled: false}\nsteering: {layers: [1], n_vectors: 2}\n"), ("English pivot to steer",)),
    ("config: the lens without English", lambda w: run(w, "models: [MODEL]\ndatasets: [{name: jsonl, data_dir: NOEN}]\nlayers: [1]\noutput: OUT\n"), ("lens.enabled:", "English pivot")),
]  # fmt: skip


@pytest.mark.parametrize("argv, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_before_the_model_loads_with_nothing_written(
    argv: Callable[[World], list[str]],
    words: tuple[str, ...],
    world: World,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        "crosslens.models.loading.load_model", lambda *a, **k: pytest.fail("the model loaded")
    )
    args = argv(world)
    folders = [world.out, world.results, world.lens]
    before = [snapshot(f) for f in folders]
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    line = " ".join(err[err.index("error:") :].split())
    for word in words:
        assert word in line, line
    assert [snapshot(f) for f in folders] == before


def test_export_vectors_into_a_folder_names_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "results"
    shutil.copytree(LEGACY, folder)
    target = tmp_path / "vectors"
    target.mkdir()
    capsys.readouterr()
    code = main(["export-vectors", str(folder), "--format", "lm-eval", "--language", "de", "-o", str(target)])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and err.count("error:") == 1, err
    assert f"--out: {target} is a folder; give the file to write (e.g. {target / 'vectors.pt'})" in err
    assert ".tmp" not in err and not any(target.iterdir())
    assert (
        main(
            [
                "export-vectors",
                str(folder),
                "--format",
                "lm-eval",
                "--language",
                "de",
                "-o",
                str(target / "v.pt"),
            ]
        )
        == 0
    )


def test_neurons_without_english_print_no_pivot_column(
    saved_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for lang in ("de", "zh"):
        lines = [json.dumps({"id": f"q{k}", "question": q, "choices": c, "answer": g}, ensure_ascii=False)
                 for k, (q, c, g) in enumerate(QUESTIONS[lang])]  # fmt: skip
        (data / f"{lang}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    argv = ["neurons", "-m", str(saved_model), "-d", "jsonl", "--data-dir", str(data), "-o", str(tmp_path / "out"),
            "--languages", "de,zh", "--n-text-items", "2", "--n-boot", "10", "--no-cloze"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "None" not in printed and "Δ cons." not in printed
    assert "no English pivot in this run" in printed
