# ruff: noqa: E501  (the table of cases reads best one case a line)
"""Every JSON file crosslens reads back goes through the typed schema of what it holds: a table feeds
each reader wrong types at every level (the top level not an object, a key missing, a key of the
wrong type, a nested wrong type, a key another key names missing) and checks the exact one-line
message ``<file>[ line <n>]: <key>: <problem>``. Then the same files through ``main()``: exit 2, one
``error:`` line naming the file, and nothing written.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import tiny_model
from crosslens.cli import main
from crosslens.data.loaders import read_jsonl
from crosslens.experiment.config import ConfigError, load_config
from crosslens.files import FileFormatError
from crosslens.lenses.kinds import LensError, load_lens, precheck_lens
from crosslens.lenses.lens import LensInfo, TunedLens, model_identity
from crosslens.models.loading import model_depth, sha256_file
from crosslens.stages.reporting import ResultFolder
from crosslens.store import Store

LEGACY = Path(__file__).parent / "data" / "folder_before_layout"  # every stage's summary, as written
WRITTEN = Path(__file__).parent / "data" / "summaries"  # the summaries of the stages added since
DELETE = object()


def _set(doc: Any, key: str, value: Any) -> Any:
    """``doc`` with the value at ``key`` (``a.b[0].c``; ``""``: the whole document) replaced or deleted."""
    if not key:
        return value
    doc = copy.deepcopy(doc)
    parts = [int(p) if p.isdigit() and "[" + p + "]" in key else p for p in re.findall(r"[^.\[\]]+", key)]
    parent = doc
    for p in parts[:-1]:
        parent = parent[p]
    if value is DELETE:
        del parent[parts[-1]]
    else:
        parent[parts[-1]] = value
    return doc


def _legacy(name: str) -> dict[str, Any]:
    return json.loads((LEGACY / name).read_text())


def _written(name: str) -> dict[str, Any]:
    return json.loads((WRITTEN / name).read_text())


LENS_JSON = {"format": "crosslens-lens/1", "kind": "tuned", "model": {"spec": "m", "n_layers": 4, "d_model": 64},
             "layers": [1, 2], "weights_sha256": "0" * 64, "val_kl": {"tuned": {"1": 0.5}}}  # fmt: skip
TUNED_LENS_CONFIG = {"base_model_name_or_path": "m", "d_model": 64, "num_hidden_layers": 4, "bias": True}
RUN_JSON = {"stages": {"records": {"fingerprint": {"dataset": "d", "fewshot": {"k": 1, "source": "s", "items": ["q0"]}},
                                   "model": {"spec": "m"}, "dataset": "d", "languages": ["en"], "selection": {"items": ["q0"]}}}}  # fmt: skip
MODEL_CONFIG = {"model_type": "llama", "num_hidden_layers": 4, "text_config": {"num_hidden_layers": 4}}


def _summaries(folder: Path) -> None:
    ResultFolder.read(folder, folder)


def _lens_folder(folder: Path) -> None:
    precheck_lens(f"tuned:{folder}", None)


COMPANIONS = {
    "lens.json": "lens.safetensors",
    "tuned-lens config.json": "params.pt",
}  # what makes a lens folder


def _write(folder: Path, reader: str, file: str, doc: Any) -> Path:
    if reader in COMPANIONS:
        (folder / COMPANIONS[reader]).touch()
    (folder / file).write_text(json.dumps(doc))
    return folder / file


# (reader, the file, its good content, read(folder), [(case, key, new value or DELETE, expected "<key>: <problem>")])
READERS: list[tuple[str, str, Callable[[], Any], Callable[[Path], Any], list[tuple[str, str, Any, str]]]] = [
    ("lens.json", "lens.json", lambda: LENS_JSON, _lens_folder, [
        ("not an object", "", 5, "expected a JSON object, got 5"),
        ("a list", "", [LENS_JSON], "expected a JSON object, got a list"),
        ("key missing", "weights_sha256", DELETE, "weights_sha256: required key is missing"),
        ("another format", "format", "crosslens-lens/9", "format: expected 'crosslens-lens/1', got \"crosslens-lens/9\""),
        ("model a string", "model", "x", 'model: expected an object, got "x"'),
        ("a string depth", "model.n_layers", "6", 'model.n_layers: expected an integer, got "6"'),
        ("depth missing", "model.n_layers", DELETE, "model.n_layers: required key is missing"),
        ("layers a number", "layers", 2, "layers: expected a list, got 2"),
        ("layers a float", "layers", 2.5, "layers: expected a list, got 2.5"),
        ("layers a string", "layers", "2", 'layers: expected a list, got "2"'),
        ("a layer a string", "layers[1]", "2", 'layers[1]: expected an integer, got "2"'),
        ("a layer a float", "layers[0]", 2.5, "layers[0]: expected an integer, got 2.5"),
        ("a KL a string", "val_kl.tuned.1", "low", 'val_kl.tuned.1: expected a number, got "low"'),
    ]),
    ("tuned-lens config.json", "config.json", lambda: TUNED_LENS_CONFIG, _lens_folder, [
        ("a list", "", [1, 2], "expected a JSON object, got a list"),
        ("the type a list", "lens_type", ["linear_tuned_lens"], "lens_type: expected a string, got a list"),
        ("depth missing", "num_hidden_layers", DELETE, "num_hidden_layers: required key is missing"),
        ("a string depth", "num_hidden_layers", "4", 'num_hidden_layers: expected an integer, got "4"'),
        ("bias a string", "bias", "yes", 'bias: expected true or false, got "yes"'),
        ("nested where a number is", "d_model", {"n": 64}, "d_model: expected an integer, got an object"),
    ]),
    ("run.json", "run.json", lambda: RUN_JSON, lambda f: Store(f).read_run(), [
        ("not an object", "", "runs", 'expected a JSON object, got "runs"'),
        ("stages a list", "stages", [], "stages: expected an object, got a list"),
        ("a stage a number", "stages.records", 1, "stages.records: expected an object, got 1"),
        ("a spec a number", "stages.records.model.spec", 5, "stages.records.model.spec: expected a string, got 5"),
        ("a spec missing", "stages.records.model.spec", DELETE, "stages.records.model.spec: required key is missing"),
        ("languages a string", "stages.records.languages", "en", 'stages.records.languages: expected a list, got "en"'),
        ("few-shot ids a string", "stages.records.fingerprint.fewshot.items", "q0", 'stages.records.fingerprint.fewshot.items: expected a list, got "q0"'),
        ("selected ids numbers", "stages.records.selection.items[0]", 0, "stages.records.selection.items[0]: expected a string, got 0"),
    ]),
    ("model config.json", "config.json", lambda: MODEL_CONFIG, lambda f: model_depth(str(f)), [
        ("a list", "", [MODEL_CONFIG], "expected a JSON object, got a list"),
        ("a string depth", "num_hidden_layers", "4", 'num_hidden_layers: expected an integer, got "4"'),
        ("text config a string", "text_config", "x", 'text_config: expected an object, got "x"'),
        ("its depth a float", "text_config.num_hidden_layers", 4.0, "text_config.num_hidden_layers: expected an integer, got 4.0"),
    ]),
    ("summary.json", "summary.json", lambda: _legacy("summary.json"), _summaries, [
        ("not an object", "", 5, "expected a JSON object, got 5"),
        ("languages missing", "languages", DELETE, "languages: required key is missing"),
        ("accuracy a list", "accuracy", [0.5], "accuracy: expected an object, got a list"),
        ("a mean a word", "consistency.mean", "high", 'consistency.mean: expected a number, got "high"'),
        ("an accuracy a word", "accuracy.de", "half", 'accuracy.de: expected a number, got "half"'),
        ("a pair missing", "pairwise.tr_plus.de", DELETE, "pairwise.tr_plus.de: required key is missing"),
        ("a CI of three", "bootstrap.accuracy.de", [0, 0.5, 1], "bootstrap.accuracy.de: expected at most 2 of them, got 3"),
    ]),
    ("lens_summary.json", "lens_summary.json", lambda: _legacy("lens_summary.json"), _summaries, [
        ("a list", "", [], "expected a JSON object, got a list"),
        ("layers missing", "layers", DELETE, "layers: required key is missing"),
        ("layers a string", "layers", "1,2", 'layers: expected a list, got "1,2"'),
        ("a layer a float", "layers[0]", 2.5, "layers[0]: expected an integer, got 2.5"),
        ("a ratio a word", "log_ratio.2.mean", "x", 'log_ratio.2.mean: expected a number, got "x"'),
        ("a layer's reading missing", "latent_accuracy.native.4", DELETE, "latent_accuracy.native.4: required key is missing"),
        ("a form missing", "latent_accuracy.label", DELETE, "latent_accuracy.label: required key is missing"),
        ("a Table 2 cell a list", "table2.acc", [], "table2.acc: expected an object, got a list"),
    ]),
    ("pca_summary.json", "pca_summary.json", lambda: _legacy("pca_summary.json"), _summaries, [
        ("not an object", "", None, "expected a JSON object, got null"),
        ("items a string", "n_items", "6", 'n_items: expected an integer, got "6"'),
        ("layers missing", "layers", DELETE, "layers: required key is missing"),
        ("a layer a string", "layers[1]", "4", 'layers[1]: expected an integer, got "4"'),
    ]),
    ("similarity_summary.json", "similarity_summary.json", lambda: _legacy("similarity_summary.json"), _summaries, [
        ("not an object", "", "x", 'expected a JSON object, got "x"'),
        ("the matrix layer missing", "matrix_layer", DELETE, "matrix_layer: required key is missing"),
        ("level null", "level", None, "level: expected a number, got null"),
        ("a gap a list", "cosine.2.all_pairs.gap", [], "cosine.2.all_pairs.gap: expected an object, got a list"),
        ("a layer missing", "cosine.2", DELETE, "cosine.2: required key is missing"),
    ]),
    ("neurons_summary.json", "neurons_summary.json", lambda: _legacy("neurons_summary.json"), _summaries, [
        ("not an object", "", 1.5, "expected a JSON object, got 1.5"),
        ("effects null", "effects", None, "effects: expected an object, got null"),
        ("a count a string", "selection.n_kept", "26", 'selection.n_kept: expected an integer, got "26"'),
        ("a count missing", "effects.zh.lape.n_neurons", DELETE, "effects.zh.lape.n_neurons: required key is missing"),
        ("a p-value null", "effects.zh.lape.letters.zh.accuracy.p_mcnemar", None, "effects.zh.lape.letters.zh.accuracy.p_mcnemar: expected a number, got null"),
        ("the ablated language missing", "effects.zh.random.letters.zh", DELETE, "effects.zh.random.letters.zh: required key is missing"),
    ]),
    ("steer_summary.json", "steer_summary.json", lambda: _legacy("steer_summary.json"), _summaries, [
        ("not an object", "", True, "expected a JSON object, got true"),
        ("settings missing", "settings", DELETE, "settings: required key is missing"),
        ("settings empty", "settings", [], "settings: expected at least 1 of them, got 0"),
        ("a gamma a string", "settings[0].gamma", "1", 'settings[0].gamma: expected a number, got "1"'),
        ("an accuracy null", "settings[1].per_language.de.accuracy", None, "settings[1].per_language.de.accuracy: expected a number, got null"),
        ("a language missing", "settings[2].per_language.de", DELETE, "settings[2].per_language.de: required key is missing"),
    ]),
    ("latent_summary.json", "latent_summary.json", lambda: _written("latent_summary.json"), _summaries, [
        ("a list", "", [], "expected a JSON object, got a list"),
        ("curves missing", "curves", DELETE, "curves: required key is missing"),
        ("lenses a string", "lenses", "logit", 'lenses: expected a list, got "logit"'),
        ("a native code a number", "native.de", 1, "native.de: expected a string, got 1"),
        ("a share a word", "curves.last.logit.de.2.en.mean", "x", 'curves.last.logit.de.2.en.mean: expected a number, got "x"'),
        ("another position group", "curves.middle", {}, "curves.middle: expected 'last' or 'answer', got \"middle\""),
        ("a layer missing", "curves.answer.logit.zh.4", DELETE, "curves.answer.logit.zh.4: required key is missing"),
        ("a lens's curves missing", "curves.answer.logit", DELETE, "curves.answer.logit: required key is missing"),
        ("a layer's assigned mass missing", "table.assigned_mass.logit.2", DELETE, "table.assigned_mass.logit.2: required key is missing"),
    ]),
    ("words_summary.json", "words_summary.json", lambda: _written("words_summary.json"), _summaries, [
        ("not an object", "", "words", 'expected a JSON object, got "words"'),
        ("landmarks missing", "landmarks", DELETE, "landmarks: required key is missing"),
        ("tasks a string", "tasks", "translation", 'tasks: expected a list, got "translation"'),
        ("a kept count a string", "filter.de.kept", "3", 'filter.de.kept: expected an integer, got "3"'),
        ("a concept count a float", "curves.translation.all.logit.4.p_target.n", 2.5, "curves.translation.all.logit.4.p_target.n: expected an integer, got 2.5"),
        ("a peak null", "landmarks.translation.de.logit.english_peak", None, "landmarks.translation.de.logit.english_peak: expected a number, got null"),
        ("a layer missing", "curves.translation.de.logit.2", DELETE, "curves.translation.de.logit.2: required key is missing"),
        ("a group's landmarks missing", "landmarks.translation.from_en", DELETE, "landmarks.translation.from_en: required key is missing"),
        ("the lens missing", "lenses.logit", DELETE, "lenses.logit: required key is missing"),
    ]),
    ("inspect_summary.json", "inspect_summary.json", lambda: _written("inspect_summary.json"), _summaries, [
        ("not an object", "", 3, "expected a JSON object, got 3"),
        ("items missing", "items", DELETE, "items: required key is missing"),
        ("top k a string", "top_k", "3", 'top_k: expected an integer, got "3"'),
        ("an item id a number", "items.de", 1, "items.de: expected a string, got 1"),
        ("a layer a float", "layers[0]", 2.0, "layers[0]: expected an integer, got 2.0"),
        ("a language's item missing", "items.en", DELETE, "items.en: required key is missing"),
        ("a language's prompt missing", "prompts.zh", DELETE, "prompts.zh: required key is missing"),
    ]),
    ("divergence_summary.json", "divergence_summary.json", lambda: _written("divergence_summary.json"), _summaries, [
        ("not an object", "", None, "expected a JSON object, got null"),
        ("effects missing", "effects", DELETE, "effects: required key is missing"),
        ("never a string", "never", "5", 'never: expected an integer, got "5"'),
        ("another agreement rule", "agreement", "median", "agreement: expected 'top' or 'rank', got \"median\""),
        ("an AUC a word", "effects.letters.inconsistent.pooled.auc", "high", 'effects.letters.inconsistent.pooled.auc: expected a number, got "high"'),
        ("a CI of one", "effects.letters.no_transfer.pooled.auc_ci", [0.5], "effects.letters.no_transfer.pooled.auc_ci: expected at least 2 of them, got 1"),
        ("an outcome missing", "effects.cloze.no_transfer", DELETE, "effects.cloze.no_transfer: required key is missing"),
        ("a language's parting missing", "per_language.zh", DELETE, "per_language.zh: required key is missing"),
        ("a divergence layer missing", "inconsistent_by_divergence.letters.5", DELETE, "inconsistent_by_divergence.letters.5: required key is missing"),
        ("a share per layer missing", "agreement_by_layer.cloze.consistent", [0.5], "agreement_by_layer.cloze.consistent: expected 2 of them (one per layer), got 1"),
    ]),
]  # fmt: skip

CASES = [(reader, *case) for reader, *_, cases in READERS for case in cases]


@pytest.mark.parametrize("reader, file, good, read, cases", READERS, ids=[r[0] for r in READERS])
def test_a_good_file_reads(reader: str, file: str, good: Callable[[], Any], read: Callable[[Path], Any],
                           cases: list, tmp_path: Path) -> None:  # fmt: skip
    _write(tmp_path, reader, file, good())
    read(tmp_path)


@pytest.mark.parametrize("reader, case, key, value, expected", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_a_wrong_type_is_one_line_naming_file_and_key(
    reader: str, case: str, key: str, value: Any, expected: str, tmp_path: Path
) -> None:
    file, good, read = next((f, g, r) for name, f, g, r, _ in READERS if name == reader)
    path = _write(tmp_path, reader, file, _set(good(), key, value))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(FileFormatError) as info:
        read(tmp_path)
    assert str(info.value) == f"{path}: {expected}"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_the_table_covers_every_level() -> None:
    """Each reader meets a top level that is no object, a key missing, a key of the wrong type and a
    nested one (a model's config.json has no required key, a tuned-lens config no nested one)."""
    for reader, *_, cases in READERS:
        keys = [(key, value) for _, key, value, _ in cases]
        nested = [re.search(r"[.\[]", key) is not None for key, _ in keys]
        assert any(key == "" for key, _ in keys), reader
        assert any(v is DELETE for _, v in keys) or reader == "model config.json", reader
        assert any(k and not n and v is not DELETE for (k, v), n in zip(keys, nested, strict=True)), reader
        assert any(n and v is not DELETE for (_, v), n in zip(keys, nested, strict=True)) or "tuned" in reader


# -- files that are not JSON, JSON lines -----------------------------------------------------------------
def test_invalid_json_and_bytes_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_text('{\n  "languages": ["en"],\n  "accuracy": \n}\n')
    with pytest.raises(
        FileFormatError, match=rf"^{re.escape(str(path))} line 4: invalid JSON \(Expecting value"
    ):
        ResultFolder.read(tmp_path, tmp_path)
    path.write_bytes(b'{"languages": ["en"],\n"dataset": "\xff"}')
    with pytest.raises(
        FileFormatError, match=rf"^{re.escape(str(path))} line 2: not valid UTF-8 \(byte 0xff\)$"
    ):
        ResultFolder.read(tmp_path, tmp_path)


LINE = {"id": "q0", "question": "Which?", "choices": ["a", "b"], "answer": 1}

# (case, the second line, expected "<key>: <problem>")
JSONL_CASES = [
    ("a number", 5, "expected a JSON object, got 5"),
    ("null", None, "expected a JSON object, got null"),
    ("id null", {**LINE, "id": None}, "id: expected a string, got null"),
    ("id a list", {**LINE, "id": ["q1"]}, "id: expected a string, got a list"),
    ("id true", {**LINE, "id": True}, "id: expected a string, got true"),
    ("question missing", {k: v for k, v in LINE.items() if k != "question"}, "question: required key is missing"),
    ("choices a string", {**LINE, "choices": "a, b"}, 'choices: expected a list, got "a, b"'),
    ("a choice a number", {**LINE, "choices": ["a", 2]}, "choices[1]: expected a string, got 2"),
    ("answer a word", {**LINE, "answer": "abc"}, 'answer: expected an integer, got "abc"'),
    ("answer a float", {**LINE, "answer": 1.5}, "answer: expected an integer, got 1.5"),
    ("context a number", {**LINE, "context": 3}, "context: expected a string, got 3"),
]  # fmt: skip


@pytest.mark.parametrize("line, expected", [c[1:] for c in JSONL_CASES], ids=[c[0] for c in JSONL_CASES])
def test_a_dataset_line_of_the_wrong_type_names_file_line_and_key(
    line: Any, expected: str, tmp_path: Path
) -> None:
    path = tmp_path / "de.jsonl"
    path.write_text(json.dumps(LINE) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(FileFormatError) as info:
        read_jsonl(path, "de")
    assert str(info.value) == f"{path} line 2: {expected}"


def test_integer_ids_and_answers_written_as_text_still_read(tmp_path: Path) -> None:
    path = tmp_path / "de.jsonl"
    path.write_text(json.dumps({**LINE, "id": 7, "answer": "1"}) + "\n")
    item = read_jsonl(path, "de").items[0]
    assert (item.item_id, item.gold) == ("7", 1)


def test_a_binary_config_names_its_file(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_bytes(b"models: [x]\n\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))} line 2: not valid UTF-8 \(byte 0x89\)$"):
        load_config(path)


def test_non_finite_lens_weights_blame_the_lens_not_the_model(tmp_path: Path) -> None:
    lm = tiny_model("llama")
    lens = TunedLens(lm.anatomy, [1], LensInfo(model_identity(lm), [1]))
    with torch.no_grad():
        lens.translators["1"].weight[0, 0] = float("nan")
    with pytest.raises(LensError, match=r"translators\.1\.weight is not finite \(training diverged"):
        lens.save(tmp_path / "lens")
    assert not (tmp_path / "lens").exists()
    with torch.no_grad():
        lens.translators["1"].weight[0, 0] = 0.0
    lens.save(tmp_path / "lens")  # then its file is damaged
    weights = tmp_path / "lens" / "lens.safetensors"
    tensors = load_file(weights)
    tensors["translators.1.bias"][3] = float("inf")
    save_file(tensors, weights)
    doc = json.loads((tmp_path / "lens" / "lens.json").read_text())
    (tmp_path / "lens" / "lens.json").write_text(json.dumps({**doc, "weights_sha256": sha256_file(weights)}))
    with pytest.raises(LensError, match=r"1\.bias holds NaN or infinite values; the lens file is bad"):
        load_lens(f"tuned:{tmp_path / 'lens'}", lm)


# -- through main(): one error line naming the file, nothing written -------------------------------------
def snapshot(folder: Path) -> dict[str, bytes] | None:
    if not folder.exists():
        return None
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def one_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return " ".join(err[err.index("error:") :].split())


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    """A copy of a result folder holding every stage's results."""
    folder = tmp_path / "results"
    shutil.copytree(LEGACY, folder)
    return folder


@pytest.mark.parametrize(
    "file, key, value, expected",
    [
        ("summary.json", "", 5, "expected a JSON object, got 5"),
        ("neurons_summary.json", "effects", None, "effects: expected an object, got null"),
        ("run.json", "stages", [], "stages: expected an object, got a list"),
        ("experiment.json", "config", [], "config: expected an object, got a list"),
    ],
)
def test_report_of_a_damaged_file_is_one_line_and_writes_nothing(
    file: str, key: str, value: Any, expected: str, results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = results / file
    good = (
        json.loads(path.read_text()) if path.is_file() else {"command": "crosslens run x.yaml", "config": {}}
    )
    path.write_text(json.dumps(_set(good, key, value)))
    before = snapshot(results)
    assert f"{path}: {expected}" in one_error(["report", str(results)], capsys)
    assert snapshot(results) == before


def test_report_of_records_without_their_summary_says_how_to_rebuild_it(
    results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for p in results.glob("*summary.json"):
        p.unlink()
    line = one_error(["report", str(results)], capsys)
    assert "records/ but no summary.json" in line and f"crosslens metrics {results}" in line


def test_a_damaged_lens_file_is_refused_before_the_model_loads(
    saved_model: Path, toy_jsonl_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr("crosslens.models.loading.load_model", lambda *a, **k: pytest.fail("model loaded"))
    lens = tmp_path / "lens"
    lens.mkdir()
    (lens / "lens.safetensors").touch()
    out = tmp_path / "out"
    argv = ["lens", "-m", str(saved_model), "-d", "jsonl", "--data-dir", str(toy_jsonl_dir), "-o", str(out),
            "--layers", "1", "--lens", f"tuned:{lens}"]  # fmt: skip
    for key, value, expected in (
        ("", 5, "expected a JSON object, got 5"),
        ("model", "x", 'model: expected an object, got "x"'),
        (
            "model.n_layers",
            "4",
            'model.n_layers: expected an integer, got "4"',
        ),  # never "4 layers; this one has 4"
        ("layers", 2.5, "layers: expected a list, got 2.5"),
    ):
        (lens / "lens.json").write_text(json.dumps(_set(LENS_JSON, key, value)))
        assert f"{lens / 'lens.json'}: {expected}" in one_error(argv, capsys)
        assert not out.exists()


def test_a_lens_folder_config_that_is_a_list_in_a_run(
    saved_model: Path, toy_jsonl_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lens = tmp_path / "tl"
    lens.mkdir()
    (lens / "params.pt").touch()
    (lens / "config.json").write_text("[1, 2]")
    out = tmp_path / "out"
    config = tmp_path / "exp.yaml"
    config.write_text(
        f"models: [{saved_model}]\ndatasets: [{{name: jsonl, data_dir: {toy_jsonl_dir}}}]\nlayers: [1]\n"
        f"output: {out}\nlens: {{lenses: [logit, 'tuned:{lens}']}}\n"
    )
    line = one_error(["run", str(config), "--no-progress"], capsys)
    assert f"{lens / 'config.json'}: expected a JSON object, got a list" in line
    assert not out.exists()


def test_a_model_config_that_is_a_list(
    toy_jsonl_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("[]")
    out = tmp_path / "out"
    line = one_error(
        ["eval", "-m", str(model), "-d", "jsonl", "--data-dir", str(toy_jsonl_dir), "-o", str(out)], capsys
    )
    assert f"{model / 'config.json'}: expected a JSON object, got a list" in line
    assert not out.exists()


def test_a_damaged_run_json_is_refused_before_the_model_loads(
    saved_model: Path, toy_jsonl_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr("crosslens.models.loading.load_model", lambda *a, **k: pytest.fail("model loaded"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text('{"stages": {"records": {"model": "tiny"}}}')
    before = snapshot(out)
    line = one_error(
        ["eval", "-m", str(saved_model), "-d", "jsonl", "--data-dir", str(toy_jsonl_dir), "-o", str(out)],
        capsys,
    )
    assert f'{out / "run.json"}: stages.records.model: expected an object, got "tiny"' in line
    assert snapshot(out) == before


def test_metrics_with_a_damaged_run_json(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = json.loads((results / "run.json").read_text())
    del run["stages"]["records"]["dataset"]
    (results / "run.json").write_text(json.dumps(run))
    before = snapshot(results)
    line = one_error(["metrics", str(results)], capsys)
    assert f"{results / 'run.json'}: stages.records.dataset: required key is missing" in line
    assert snapshot(results) == before
