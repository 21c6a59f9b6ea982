"""Alignment policy, ParallelDataset, the registry and Hub fallback (offline)."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import types
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crosslens.data.loaders import resource_dir
from crosslens.data.registry import list_datasets, load_dataset
from crosslens.data.schema import DataError, Item, ParallelDataset

SHARED = Path(
    os.environ.get("CROSSLENS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def row(i: int | str, answer: int = 0, n: int = 3, lang: str = "en") -> dict:
    return {"id": str(i), "question": f"{lang} question {i}?", "choices": [f"{lang}{k}" for k in range(n)],
            "answer": answer}  # fmt: skip


def make(tmp: Path, languages: dict[str, list[dict]]) -> Path:
    for lang, rows in languages.items():
        write_jsonl(tmp / f"{lang}.jsonl", rows)
    return tmp


# ---------------------------------------------------------------- alignment policy


def test_default_drops_missing_items_and_warns_once(tmp_path, caplog):
    root = make(
        tmp_path, {"en": [row(1), row(2), row(3)], "de": [row(1), row(3)], "fr": [row(3), row(1), row(4)]}
    )
    with caplog.at_level(logging.WARNING, logger="crosslens.data"):
        ds = load_dataset("jsonl", ["de", "fr"], data_dir=root)
    assert ds.item_ids() == ["1", "3"] and ds.languages == ["de", "fr"] and ds.pivot == "en"
    assert ds.dropped == {"de": 0, "fr": 1, "en": 1}
    assert list(ds.items) == ["de", "fr", "en"]
    assert [r.getMessage().count("\n") for r in caplog.records] == [0]
    assert "2 items aligned" in caplog.records[0].getMessage()


def test_strict_raises_on_missing_item(tmp_path):
    root = make(tmp_path, {"en": [row(1), row(2)], "de": [row(1)]})
    with pytest.raises(
        DataError, match=rf"^jsonl: {tmp_path / 'en.jsonl'} line 2 \(item '2'\): missing in de \("
    ):
        load_dataset("jsonl", ["de"], data_dir=root, strict=True)


def test_gold_disagreement_dropped_or_raised(tmp_path, caplog):
    root = make(tmp_path, {"en": [row(1, 0), row(2, 1)], "de": [row(1, 0), row(2, 2)]})
    ds = load_dataset("jsonl", ["de"], data_dir=root)
    assert ds.item_ids() == ["1"] and ds.dropped == {"de": 1, "en": 1}
    assert "1 disagree on answer" in caplog.text
    with pytest.raises(
        DataError, match=r"de\.jsonl line 2 \(item '2'\): answer C, but B in en \(.*en\.jsonl line 2\)"
    ):
        load_dataset("jsonl", ["de"], data_dir=root, strict=True)


def test_choice_count_disagreement(tmp_path):
    root = make(tmp_path, {"en": [row(1, n=3)], "de": [row(1, n=4)]})
    assert len(load_dataset("jsonl", ["de"], data_dir=root)) == 0
    with pytest.raises(DataError, match=r"\(item '1'\): 4 choices, but 3 in en"):
        load_dataset("jsonl", ["de"], data_dir=root, strict=True)


def test_mmmlu_subject_row_count_mismatch_is_unsafe(tmp_path):
    def mmmlu(rows: int) -> str:
        lines = ["Question,A,B,C,D,Answer,Subject"] + [f"Q{k},a,b,c,d,A,anatomy" for k in range(rows)]
        return "\n".join([*lines, "Q,a,b,c,d,B,virology"]) + "\n"

    (tmp_path / "mmlu_DE-DE.csv").write_text(mmmlu(2), encoding="utf-8")
    (tmp_path / "anatomy_test.csv").write_text("Q0,a,b,c,d,A\nQ1,a,b,c,d,A\nQ2,a,b,c,d,A\n", encoding="utf-8")
    (tmp_path / "virology_test.csv").write_text("Q,a,b,c,d,B\n", encoding="utf-8")
    ds = load_dataset("mmmlu", ["DE_DE"], data_dir=tmp_path)
    assert ds.item_ids() == ["virology/test/0"] and ds.dropped == {"DE_DE": 2, "EN_US": 3}
    with pytest.raises(
        DataError, match=r"group 'anatomy' has 2 rows but 3 in EN_US; row-order alignment is unsafe"
    ):
        load_dataset("mmmlu", ["DE_DE"], data_dir=tmp_path, strict=True)


def test_mmmlu_answer_mismatch_reported(tmp_path):
    (tmp_path / "mmlu_FR-FR.csv").write_text(
        "Question,A,B,C,D,Answer,Subject\nQ,a,b,c,d,C,law\n", encoding="utf-8"
    )
    (tmp_path / "law_test.csv").write_text("Q,a,b,c,d,A\n", encoding="utf-8")
    with pytest.raises(
        DataError, match=r"mmlu_FR-FR\.csv line 2 \(item 'law/test/0'\): answer C, but A in EN_US"
    ):
        load_dataset("mmmlu", ["FR_FR"], data_dir=tmp_path, strict=True)


ids = st.lists(st.integers(0, 40), min_size=1, max_size=12, unique=True)


@settings(max_examples=30, deadline=None)
@given(
    universe=ids,
    missing=st.dictionaries(st.sampled_from(["en", "de", "fr"]), st.lists(st.integers(0, 40), max_size=4)),
    seed=st.randoms(use_true_random=False),
)
def test_shuffling_never_changes_alignment(universe, missing, seed):
    """Line order and language order do not matter; every item missing somewhere is counted as dropped."""
    langs = ["en", "de", "fr"]
    present = {lang: [i for i in universe if i not in missing.get(lang, [])] for lang in langs}
    expected = sorted(set.intersection(*(set(v) for v in present.values())))
    results = []
    for attempt in range(2):
        with tempfile.TemporaryDirectory() as tmp:
            for lang, items in present.items():
                rows = [row(i, answer=i % 3, lang=lang) for i in items]
                if attempt:
                    seed.shuffle(rows)
                write_jsonl(Path(tmp) / f"{lang}.jsonl", rows)
            order = ["de", "fr"] if attempt == 0 else ["fr", "de"]
            ds = load_dataset("jsonl", order, data_dir=tmp)
        assert ds.item_ids() == [str(i) for i in expected]
        assert ds.dropped == {lang: len(present[lang]) - len(expected) for lang in order + ["en"]}
        results.append({lang: ds.items[lang] for lang in langs})
    assert results[0] == results[1]


@settings(max_examples=20, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=6).filter(str.strip), min_size=1, max_size=15, unique=True))
def test_item_order_is_natural_sort_of_ids(item_ids):
    with tempfile.TemporaryDirectory() as tmp:
        make(Path(tmp), {"en": [row(i) for i in item_ids], "de": [row(i) for i in reversed(item_ids)]})
        ds = load_dataset("jsonl", ["de"], data_dir=tmp, strict=True)
    assert (
        sorted(ds.item_ids()) == sorted(item_ids) and [it.item_id for it in ds.items["en"]] == ds.item_ids()
    )


# ---------------------------------------------------------------- ParallelDataset


@pytest.fixture
def small(tmp_path) -> ParallelDataset:
    root = make(tmp_path, {lang: [row(i, lang=lang) for i in (10, 2, 1)] for lang in ("en", "de")})
    return load_dataset("jsonl", ["de"], data_dir=root)


def test_ids_item_and_english_choices(small):
    assert small.item_ids() == ["1", "2", "10"] and len(small) == 3
    assert small.item("de", "2").question == "de question 2?"
    assert small.english_choices("2") == ("en0", "en1", "en2")
    with pytest.raises(DataError, match="no aligned item '7'"):
        small.item("de", "7")
    with pytest.raises(DataError, match="language 'fr' is not loaded"):
        small.item("fr", "1")


def test_subset_and_limit_return_new_objects(small):
    sub = small.subset(["10", "1"])
    assert sub.item_ids() == ["10", "1"] and sub.items["en"][0].item_id == "10" and small.item_ids()[0] == "1"
    assert small.limit(2).item_ids() == ["1", "2"] and small.limit(None).item_ids() == small.item_ids()
    assert sub.dropped == small.dropped
    with pytest.raises(DataError, match="limit must be >= 1"):
        small.limit(0)  # an empty selection would run stages over nothing
    with pytest.raises(DataError, match="no aligned item 'x'"):
        small.subset(["x"])
    with pytest.raises(DataError, match="repeated"):
        small.subset(["1", "1"])
    with pytest.raises(ValueError):
        small.limit(-1)


def test_item_validates_itself():
    with pytest.raises(DataError, match="out of range"):
        Item("d", "1", "en", "Q?", ("a", "b"), 2)
    with pytest.raises(DataError, match="choice 2 is empty"):
        Item("d", "1", "en", "Q?", ("a", " "), 0)
    assert Item("d", "1", "en", "Q?", ["a", "b"], 1).choices == ("a", "b")  # type: ignore[arg-type]


# ---------------------------------------------------------------- registry and requests


def test_list_datasets():
    infos = {i.name: i for i in list_datasets()}
    names = "belebele mmmlu mhellaswag okapi-mmlu okapi-arc global-mmlu mmlu-prox xstorycloze xcopa jsonl "
    names += "crosslens-mini"
    assert list(infos) == names.split()
    assert (
        infos["belebele"].pivot == "eng_Latn"
        and infos["mmmlu"].pivot == "EN_US"
        and infos["xcopa"].pivot is None
    )
    assert infos["xstorycloze"].splits[0] == "eval" and infos["okapi-mmlu"].splits[0] == "val"
    assert {i.template for i in infos.values()} <= {"belebele", "mmmlu", "mhellaswag", "generic"}


def test_unknown_dataset_suggests():
    with pytest.raises(DataError, match=r"unknown dataset 'belebel'; did you mean 'belebele'\?"):
        load_dataset("belebel")


def test_unknown_language_and_split(tmp_path):
    root = make(tmp_path, {"en": [row(1)], "de": [row(1)]})
    with pytest.raises(DataError, match=r"unknown language 'dee'; did you mean 'de'\? available: de, en"):
        load_dataset("jsonl", ["dee"], data_dir=root)
    with pytest.raises(DataError, match=r"unknown split 'dev' \(available: eval, train\)"):
        load_dataset("xstorycloze", data_dir=root, split="dev")


def test_missing_pivot_is_none_with_warning(tmp_path, caplog):
    ds = load_dataset("jsonl", data_dir=make(tmp_path, {"de": [row(1)], "fr": [row(1)]}))
    assert ds.pivot is None and ds.english_choices("1") is None and "no English (en)" in caplog.text


def test_pivot_override_and_pivot_file(tmp_path):
    root = make(tmp_path / "d", {"eng": [row(1, lang="eng")], "de": [row(1)]})
    assert load_dataset("jsonl", ["de"], data_dir=root, pivot="eng").english_choices("1") == (
        "eng0",
        "eng1",
        "eng2",
    )
    english = write_jsonl(tmp_path / "english.jsonl", [row(1, lang="EN")])
    ds = load_dataset("jsonl", ["de"], data_dir=root, pivot_file=english)
    assert ds.pivot == "en" and ds.english_choices("1") == ("EN0", "EN1", "EN2")
    with pytest.raises(DataError, match="pivot_file is only supported"):
        load_dataset("belebele", data_dir=root, pivot_file=english)


def test_crosslens_data_env_root(tmp_path, monkeypatch):
    (tmp_path / "okapi-arc").mkdir()
    (tmp_path / "okapi-arc" / "de_test.json").write_text(
        json.dumps([{"id": "a1", "instruction": "Q?", "option_a": "x", "option_b": "y", "answer": "B"}]),
        "utf-8",
    )
    monkeypatch.setenv("CROSSLENS_DATA", str(tmp_path))
    assert load_dataset("okapi-arc").item("de", "a1").gold == 1


def test_no_data_and_no_hub_loader(monkeypatch):
    monkeypatch.delenv("CROSSLENS_DATA", raising=False)
    with pytest.raises(DataError, match=r"^jsonl: no data_dir given.*pass data_dir="):
        load_dataset("jsonl")


def test_hub_without_datasets_library(monkeypatch):
    monkeypatch.delenv("CROSSLENS_DATA", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match=r"^belebele: .*`pip install datasets`"):
        load_dataset("belebele", ["deu_Latn"])


def test_hub_belebele_with_fake_datasets(monkeypatch):
    record = {"link": "https://x/P", "question_number": 2, "flores_passage": "P.", "question": "Q?",
              **{f"mc_answer{k}": "abcd"[k - 1] for k in range(1, 5)}, "correct_answer_num": "4"}  # fmt: skip
    calls = []

    def fake_load(repo, config, split):
        calls.append((repo, config, split))
        return [record]

    fake = types.SimpleNamespace(
        load_dataset=fake_load, get_dataset_config_names=lambda repo: ["eng_Latn", "deu_Latn", "default"]
    )
    monkeypatch.delenv("CROSSLENS_DATA", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    ds = load_dataset("belebele", ["deu_Latn"], strict=True)
    assert ds.item_ids() == ["https://x/P#2"] and ds.item("deu_Latn", "https://x/P#2").gold == 3
    assert sorted(calls) == [
        ("facebook/belebele", "deu_Latn", "test"),
        ("facebook/belebele", "eng_Latn", "test"),
    ]


# ---------------------------------------------------------------- real and bundled data


def shared(folder: str) -> Path:
    if not (SHARED / folder).is_dir():
        pytest.skip(f"shared benchmark data not found at {SHARED / folder}")
    return SHARED / folder


def test_belebele_real_alignment():
    ds = load_dataset("belebele", ["eng_Latn", "deu_Latn", "spa_Latn"], data_dir=shared("belebele"))
    assert len(ds) == 488 and ds.dropped == {"eng_Latn": 412, "deu_Latn": 412, "spa_Latn": 0}
    assert ds.template == "belebele"
    with pytest.raises(
        DataError, match=r"^belebele: .*eng_Latn\.jsonl line \d+ \(item '.*#2'\): missing in spa_Latn"
    ):
        load_dataset("belebele", ["eng_Latn", "spa_Latn"], data_dir=shared("belebele"), strict=True)


def test_belebele_real_pivot_loaded_but_not_listed():
    ds = load_dataset("belebele", ["deu_Latn"], data_dir=shared("belebele"), strict=True)
    assert ds.languages == ["deu_Latn"] and ds.pivot == "eng_Latn" and len(ds) == 900
    first = ds.item_ids()[0]
    assert ds.english_choices(first) == ds.item("eng_Latn", first).choices


def test_okapi_real_alignment_across_all_languages():
    ds = load_dataset("okapi-mmlu", data_dir=shared("mmlu"))
    assert len(ds.languages) == 11 and ds.languages[0] == "en" and len(ds) == 1143
    assert len(load_dataset("okapi-mmlu", data_dir=shared("mmlu"), split="dev")) == 185


def test_crosslens_mini_bundled():
    folder = resource_dir("crosslens_mini")
    if not any(folder.glob("*.jsonl")):
        pytest.skip("crosslens_mini resource files not written yet")
    ds = load_dataset("crosslens-mini")
    assert ds.pivot == "en" and "en" in ds.languages and len(ds) > 0
    assert all(len(items) == len(ds) for items in ds.items.values())


def test_datasets_command_lists_every_dataset_with_its_sources(capsys: pytest.CaptureFixture[str]) -> None:
    from crosslens.cli import main

    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("belebele", "mmmlu", "mhellaswag", "okapi-mmlu", "xstorycloze", "crosslens-mini"):
        assert name in out
    assert "data_dir[/test]" in out  # brackets in a source are text, not console markup
