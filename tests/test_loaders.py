"""Format readers: the real shared files (when present), small official-format files, malformed input."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from crosslens.data.loaders import read_belebele, read_mmlu_csvs
from crosslens.data.registry import load_dataset
from crosslens.data.schema import DataError
from crosslens.files import FileFormatError

SHARED = Path(
    os.environ.get("CROSSLENS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
OKAPI_COUNTS = {  # val / dev items per language, from SOURCES.md
    "de": (1449, 277), "fr": (1417, 270), "es": (1465, 272), "ru": (1450, 279), "zh": (1421, 271),
    "vi": (1456, 271), "id": (1441, 256), "hi": (1414, 235), "ar": (1433, 274), "bn": (1310, 216),
}  # fmt: skip


def shared(folder: str) -> Path:
    path = SHARED / folder
    if not path.is_dir():
        pytest.skip(f"shared benchmark data not found at {path}")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[list[str]], **fmt) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, **fmt).writerows(rows)
    return path


def bele(n: int, lang: str = "eng_Latn", **over) -> dict:
    row = {
        "link": f"https://en.wikibooks.org/wiki/P{n}", "question_number": 1,
        "flores_passage": f"Passage {n}.", "question": f"Q{n} {lang}?",
        **{f"mc_answer{k}": "abcd"[k - 1] for k in range(1, 5)},
        "correct_answer_num": "2", "dialect": lang,
    }  # fmt: skip
    row.update(over)
    return row


# ---------------------------------------------------------------- real files


def test_belebele_real_counts_and_fields():
    root = shared("belebele")
    counts = {
        lang: len(read_belebele(root / f"{lang}_Latn.jsonl", lang).items) for lang in ("eng", "deu", "spa")
    }
    assert counts == {"eng": 900, "deu": 900, "spa": 488}
    item = read_belebele(root / "eng_Latn.jsonl", "eng_Latn").items[0]
    assert item.item_id == "https://en.wikibooks.org/wiki/Accordion/Right_hand#1"
    assert item.gold == 0 and len(item.choices) == 4 and item.context.startswith("Make sure your hand")


@pytest.mark.parametrize("split,n,ones", [("eval", 1511, 798), ("train", 360, 164)])
def test_xstorycloze_real_counts(split, n, ones):
    ds = load_dataset("xstorycloze", data_dir=shared("xstorycloze"), split=split, strict=True)
    assert len(ds.languages) == 11 and ds.pivot == "en" and ds.languages[0] == "en"
    assert {lang: len(items) for lang, items in ds.items.items()} == dict.fromkeys(ds.languages, n)
    assert Counter(it.gold for it in ds.items["en"])[0] == ones


def test_xstorycloze_quotes_are_literal_text():
    ds = load_dataset("xstorycloze", ["eu"], data_dir=shared("xstorycloze"))
    hits = [it for it in ds.items["eu"] if '"Buffy banpiro-ehiztaria"' in it.question + " ".join(it.choices)]
    assert len(hits) == 1 and hits[0].item_id.startswith("ad552657-")


@pytest.mark.parametrize("split,col,english", [("val", 0, 1531), ("dev", 1, 285)])
def test_okapi_mmlu_real_counts(split, col, english):
    root = shared("mmlu")
    assert len(read_mmlu_csvs(root / split, split, "en", "okapi-mmlu").items) == english
    for lang, counts in OKAPI_COUNTS.items():
        ds = load_dataset("okapi-mmlu", [lang], data_dir=root, split=split)
        assert len(ds) + ds.dropped[lang] == counts[col]


def test_okapi_mmlu_real_ids_are_zero_based_rows():
    ds = load_dataset("okapi-mmlu", ["de"], data_dir=shared("mmlu"), strict=False)
    # every German item found its English row with the same answer: nothing dropped on the German side
    assert ds.dropped["de"] == 0 and len(ds) == 1449
    assert ds.item("en", "college_medicine/val/2").gold == ds.item("de", "college_medicine/val/2").gold


# ---------------------------------------------------------------- official formats, small files


def test_mmmlu_with_and_without_index_column(tmp_path):
    header = ["Question", "A", "B", "C", "D", "Answer", "Subject"]
    rows = [["Wer?", "a", "b", "c", "d", "B", "anatomy"], ["Was?", "a", "b", "c", "d", "C", "anatomy"],
            ["Wie?", "a", "b", "c", "d", "A", "virology"]]  # fmt: skip
    write_csv(tmp_path / "mmlu_DE-DE.csv", [header, *rows])
    write_csv(tmp_path / "mmlu_FR-FR.csv", [["", *header], *[[str(k), *r] for k, r in enumerate(rows)]])
    write_csv(
        tmp_path / "test" / "anatomy_test.csv",
        [["Who?", "a", "b", "c", "d", "B"], ["What?", "a", "b", "c", "d", "C"]],
    )
    write_csv(tmp_path / "test" / "virology_test.csv", [["How, then?", "a", "b", "c", "d", "A"]])
    ds = load_dataset("mmmlu", ["DE_DE", "FR_FR"], data_dir=tmp_path, strict=True)
    assert ds.pivot == "EN_US" and ds.item_ids() == ["anatomy/test/0", "anatomy/test/1", "virology/test/0"]
    assert ds.item("FR_FR", "anatomy/test/1").question == "Was?"
    assert ds.english_choices("virology/test/0") == ("a", "b", "c", "d")
    assert ds.item("EN_US", "virology/test/0").question == "How, then?"


def test_mhellaswag_okapi_list_and_original_jsonl(tmp_path):
    row = {
        "ind": 24,
        "ctx": "A man is sitting on a roof. he",
        "endings": ["e0", "e1", "e2", "e3"],
        "label": 3,
    }
    write_jsonl(tmp_path / "hellaswag_val.jsonl", [row, {**row, "ind": 92, "label": 0}])
    okapi = [{**row, "ctx": "Ein Mann sitzt auf einem Dach. er", "label": "3", "activity_label": "Dach"}]
    (tmp_path / "de_validation.json").write_text(json.dumps(okapi, indent=2), encoding="utf-8")
    ds = load_dataset("mhellaswag", ["de"], data_dir=tmp_path)
    assert ds.item_ids() == ["24"] and ds.dropped == {"de": 0, "en": 1}
    assert ds.item("de", "24").gold == 3 and ds.item("de", "24").question.startswith("Ein Mann")


def test_okapi_arc_option_counts_and_pivot(tmp_path):
    three = {
        "id": "Mercury_1",
        "instruction": "Q?",
        "option_a": "x",
        "option_b": "y",
        "option_c": "z",
        "answer": "C",
    }
    five = {"id": "Mercury_2", "instruction": "Q2?", **{f"option_{c}": c for c in "abcde"}, "answer": "E"}
    four = {
        "id": "Mercury_3",
        "instruction": "Q3?",
        **{f"option_{c}": c for c in "abcd"},
        "option_e": None,
        "answer": "A",
    }
    for lang in ("de", "fr"):
        (tmp_path / f"{lang}_test.json").write_text(json.dumps([three, five, four]), encoding="utf-8")
    ds = load_dataset("okapi-arc", data_dir=tmp_path)
    assert ds.pivot is None and ds.english_choices("Mercury_1") is None
    assert [len(it.choices) for it in ds.items["de"]] == [3, 5, 4] and ds.items["de"][1].gold == 4
    (tmp_path / "en_test.json").write_text(json.dumps([three, five]), encoding="utf-8")
    ds = load_dataset("okapi-arc", ["de"], data_dir=tmp_path)
    assert ds.pivot == "en" and ds.languages == ["de"] and ds.dropped == {"de": 1, "en": 0}


def test_xcopa_subfolders_and_pivot_file(tmp_path):
    row = {
        "premise": "Premisa.",
        "choice1": "uno",
        "choice2": "dos",
        "question": "effect",
        "label": 1,
        "idx": 1,
    }
    write_jsonl(tmp_path / "it" / "test.it.jsonl", [row, {**row, "idx": 2, "question": "cause", "label": 0}])
    write_jsonl(tmp_path / "et" / "test.et.jsonl", [row])
    write_jsonl(tmp_path / "et" / "val.et.jsonl", [{**row, "idx": 9}])
    ds = load_dataset("xcopa", data_dir=tmp_path)
    assert ds.languages == ["et", "it"] and ds.pivot is None and ds.item_ids() == ["1"]
    assert (
        ds.item("it", "1").context == "Premisa."
        and ds.item("it", "1").question == "What happened as a result?"
    )
    assert load_dataset("xcopa", data_dir=tmp_path, split="val").item_ids() == ["9"]
    copa = write_jsonl(tmp_path / "copa_test.jsonl", [{**row, "premise": "Premise."}])
    ds = load_dataset("xcopa", ["it"], data_dir=tmp_path, pivot_file=copa)
    assert ds.pivot == "en" and ds.item("en", "1").context == "Premise." and "en" not in ds.languages


def test_generic_jsonl_folder_and_single_file(tmp_path):
    en = {"id": "q1", "question": "2+2?", "choices": ["3", "4", "5"], "answer": 1}
    write_jsonl(tmp_path / "dir" / "en.jsonl", [en, {**en, "id": "q2", "context": "Some text."}])
    write_jsonl(tmp_path / "dir" / "de.jsonl", [{**en, "question": "2+2 ?"}])
    ds = load_dataset("jsonl", data_dir=tmp_path / "dir")
    assert ds.languages == ["en", "de"] and ds.item_ids() == ["q1"] and ds.dropped == {"en": 1, "de": 0}
    rows = [{**en, "id": i, "language": lang} for lang in ("en", "sw") for i in ("q1", 7)]
    single = write_jsonl(tmp_path / "all.jsonl", rows)
    ds = load_dataset("jsonl", ["sw"], data_dir=single)
    assert ds.item_ids() == ["7", "q1"] and ds.pivot == "en"


# ---------------------------------------------------------------- malformed input: one clear line each


def bad_belebele(tmp_path, row: dict | str, lang: str = "deu_Latn") -> Path:
    write_jsonl(tmp_path / "eng_Latn.jsonl", [bele(1), bele(2)])
    line = row if isinstance(row, str) else json.dumps(row)
    (tmp_path / f"{lang}.jsonl").write_text(json.dumps(bele(1, lang)) + "\n" + line + "\n", encoding="utf-8")
    return tmp_path / f"{lang}.jsonl"


def load_error(name: str, path: Path, **kw) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(name, data_dir=path, **kw)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{name}: ")
    return message


ITEM2 = "'https://en.wikibooks.org/wiki/P2#1'"


def test_missing_field(tmp_path):
    row = bele(2, "deu_Latn")
    del row["mc_answer3"]
    path = bad_belebele(tmp_path, row)
    assert (
        load_error("belebele", tmp_path)
        == f"belebele: {path} line 2 (item {ITEM2}): field 'mc_answer3' is missing"
    )


def test_invalid_json_line(tmp_path):
    path = bad_belebele(tmp_path, '{"link": "x", ')
    assert f"{path} line 2: invalid JSON" in load_error("belebele", tmp_path)


def test_duplicate_id(tmp_path):
    path = bad_belebele(tmp_path, bele(1, "deu_Latn"))
    message = load_error("belebele", tmp_path)
    assert (
        f"{path} line 2 (item 'https://en.wikibooks.org/wiki/P1#1'): duplicate id (first at {path} line 1)"
        in message
    )


def test_empty_text(tmp_path):
    path = bad_belebele(tmp_path, bele(2, "deu_Latn", question="  "))
    assert load_error("belebele", tmp_path).endswith(
        f"{path} line 2 (item {ITEM2}): field 'question' is empty"
    )


def test_bad_gold(tmp_path):
    path = bad_belebele(tmp_path, bele(2, "deu_Latn", correct_answer_num="5"))
    assert f"{path} line 2 (item {ITEM2}): answer index 4 (0-based) is out of range" in load_error(
        "belebele", tmp_path
    )


def test_gold_not_a_number(tmp_path):
    path = bad_belebele(tmp_path, bele(2, "deu_Latn", correct_answer_num="B"))
    assert f"{path} line 2 (item {ITEM2}): field 'correct_answer_num' must be an integer" in load_error(
        "belebele", tmp_path
    )


@pytest.mark.parametrize("choices", [["only"], list("abcdefghijk")])
def test_wrong_choice_count(tmp_path, choices):
    path = write_jsonl(
        tmp_path / "en.jsonl", [{"id": "q1", "question": "Q?", "choices": choices, "answer": 0}]
    )
    assert f"{path} line 1 (item 'q1'): expected 2 to 10 choices, got {len(choices)}" in load_error(
        "jsonl", tmp_path
    )


def test_not_utf8(tmp_path):
    path = bad_belebele(tmp_path, bele(2, "deu_Latn"))
    path.write_bytes(path.read_bytes().replace(b"Q2", b"Q\xe42"))
    assert f"{path} line 2: not valid UTF-8 (byte 0xe4)" in load_error("belebele", tmp_path)


def test_unreadable_file(tmp_path):
    with pytest.raises(FileFormatError, match=r"missing\.jsonl: cannot read file"):
        read_belebele(tmp_path / "missing.jsonl", "eng_Latn")


def test_empty_folder(tmp_path):
    assert load_error("belebele", tmp_path) == f"belebele: {tmp_path}: no Belebele files (<lang>.jsonl) found"


def test_mmmlu_missing_column(tmp_path):
    path = write_csv(
        tmp_path / "mmlu_DE-DE.csv", [["Question", "A", "B", "C", "D", "Answer"], ["Q", *"abcd", "A"]]
    )
    assert f"{path} line 1: column 'Subject' is missing from the header" in load_error("mmmlu", tmp_path)


def test_xstorycloze_wrong_column_count(tmp_path):
    header = ["InputStoryid", *[f"InputSentence{k}" for k in range(1, 5)], "RandomFifthSentenceQuiz1",
              "RandomFifthSentenceQuiz2", "AnswerRightEnding"]  # fmt: skip
    path = write_csv(tmp_path / "spring2016.val.en.tsv.split_20_80_eval.tsv",
                     [header, ["id1", "s1", "s2", "s3", "s4", "e1", "2"]], delimiter="\t")  # fmt: skip
    assert f"{path} line 2: expected 8 columns, got 7" in load_error("xstorycloze", tmp_path)


def test_okapi_answer_letter_out_of_range(tmp_path):
    rows = [{"id": "anatomy/val/0", "instruction": "Q?", **{f"option_{c}": c for c in "abcd"}, "answer": "E"}]
    (tmp_path / "de_val.json").write_text(json.dumps(rows), encoding="utf-8")
    where = f"{tmp_path / 'de_val.json'} record 1 (item 'anatomy/val/0')"
    assert f"{where}: field 'answer' must be one of A, B, C, D" in load_error("okapi-mmlu", tmp_path)


def test_xcopa_bad_question_kind(tmp_path):
    row = {"premise": "P.", "choice1": "a", "choice2": "b", "question": "because", "label": 0, "idx": 3}
    path = write_jsonl(tmp_path / "test.it.jsonl", [row])
    assert f"{path} line 1 (item '3'): field 'question' must be 'cause' or 'effect'" in load_error(
        "xcopa", tmp_path
    )


def test_hellaswag_endings_not_a_list(tmp_path):
    path = write_jsonl(
        tmp_path / "de_validation.json", [{"ind": 5, "ctx": "c", "endings": "e1 e2", "label": 0}]
    )
    assert f"{path} line 1 (item '5'): field 'endings' must be a list" in load_error("mhellaswag", tmp_path)


def test_record_not_an_object(tmp_path):
    path = tmp_path / "de_val.json"
    path.write_text('[["not", "an", "object"]]', encoding="utf-8")
    assert f"{path} record 1: expected an object with named fields, got list" in load_error(
        "okapi-mmlu", tmp_path
    )
