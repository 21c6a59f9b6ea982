"""Global-MMLU (CS / CA tags), MMLU-ProX (up to 10 choices) and the Hub loaders of the Okapi sets
and mHellaSwag, on small files written in the official layouts (the Hub through a stand-in of the
`datasets` library that serves rows in each repository's documented fields)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import tiny_model
from crosslens.cli import main
from crosslens.data import loaders
from crosslens.data.registry import load_dataset
from crosslens.data.schema import DataError
from crosslens.experiment.report import write_report
from crosslens.stages.evaluate.stage import evaluate

GMMLU = {  # sample_id -> (question, options, answer, cultural_sensitivity_label)
    "astronomy/test/0": ("Which planet is largest?", ["Mars", "Jupiter", "Venus", "Earth"], "B", "CA"),
    "world_religions/test/3": (
        "Which holiday ends Ramadan?",
        ["Diwali", "Easter", "Eid al-Fitr", "Holi"],
        "C",
        "CS",
    ),
    "high_school_geography/test/7": (
        "Where is the Nile?",
        ["Africa", "Asia", "Europe", "Oceania"],
        "A",
        "CS",
    ),
    "college_physics/test/1": ("What is the unit of force?", ["Joule", "Watt", "Pascal", "Newton"], "D", "-"),
}


def _gmmlu_rows(lang: str, drop: str | None = None) -> list[dict]:
    return [
        {
            "sample_id": sid, "subject": sid.split("/")[0], "subject_category": "STEM",
            "question": f"[{lang}] {q}", **{f"option_{c}": f"{o} ({lang})" for c, o in zip("abcd", opts)},
            "answer": ans, "required_knowledge": "[]", "time_sensitive": "[]", "reference": "[]",
            "culture": "[]", "region": "[]", "country": "[]", "cultural_sensitivity_label": label,
            "is_annotated": label != "-",
        }
        for sid, (q, opts, ans, label) in GMMLU.items()
        if sid != drop
    ]  # fmt: skip


PROX = [  # question_id, options, answer letter
    (70, [f"option {k}" for k in range(10)], "J"),
    (71, ["yes", "no", "maybe", "never"], "C"),
    (72, [f"v{k}" for k in range(7)], "A"),
]


def _prox_rows(lang: str) -> list[dict]:
    rows = []
    for qid, opts, ans in PROX:
        row = {"question_id": qid, "question": f"[{lang}] question {qid}?", "answer": ans,
               "answer_index": "ABCDEFGHIJ".index(ans), "cot_content": "", "category": "math"}  # fmt: skip
        row |= {f"option_{k}": (f"{opts[k]} ({lang})" if k < len(opts) else None) for k in range(10)}
        rows.append(row)
    return rows


def _write(root: Path, lang: str, split: str, rows: list[dict]) -> None:
    (root / lang).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / lang / f"{split}-00000-of-00001.parquet")


@pytest.fixture
def gmmlu_dir(tmp_path: Path) -> Path:
    root = tmp_path / "global-mmlu"
    _write(root, "en", "test", _gmmlu_rows("en"))
    _write(root, "de", "test", _gmmlu_rows("de"))
    _write(root, "zh", "test", _gmmlu_rows("zh", drop="college_physics/test/1"))
    _write(root, "de", "dev", _gmmlu_rows("de")[:1])
    return root


@pytest.fixture
def prox_dir(tmp_path: Path) -> Path:
    root = tmp_path / "mmlu-prox"
    for lang in ("en", "de"):
        _write(root, lang, "test", _prox_rows(lang))
    return root


def test_global_mmlu_reads_the_hub_layout_with_its_cultural_tags(gmmlu_dir):
    ds = load_dataset("global-mmlu", ["de", "zh"], data_dir=gmmlu_dir)
    assert ds.pivot == "en" and len(ds) == 3  # college_physics is missing in zh: dropped everywhere
    it = ds.item("de", "world_religions/test/3")
    assert it.question == "[de] Which holiday ends Ramadan?" and it.gold == 2 and it.tags == ("CS",)
    assert ds.item("zh", "astronomy/test/0").tags == ("CA",)
    assert (
        load_dataset("global-mmlu", ["en"], data_dir=gmmlu_dir).item("en", "college_physics/test/1").tags
        == ()
    )
    with pytest.raises(DataError, match="unknown language 'zh'"):
        load_dataset("global-mmlu", ["zh"], data_dir=gmmlu_dir, split="dev")
    bad = _gmmlu_rows("de")
    bad[1]["answer"] = "E"
    _write(gmmlu_dir, "de", "test", bad)
    with pytest.raises(DataError) as err:
        load_dataset("global-mmlu", ["de"], data_dir=gmmlu_dir)
    assert "de/test-00000-of-00001.parquet row 1 (item 'world_religions/test/3')" in str(err.value)
    assert "field 'answer' must be one of A, B, C, D" in str(err.value)


def test_mmlu_prox_has_up_to_ten_choices_and_checks_its_answer_fields(prox_dir):
    ds = load_dataset("mmlu-prox", ["de"], data_dir=prox_dir)
    assert [len(ds.item("de", i).choices) for i in ds.item_ids()] == [10, 4, 7]
    assert ds.item("de", "70").gold == 9 and ds.max_choices() == 10
    rows = _prox_rows("de")
    rows[1]["answer_index"] = 0
    _write(prox_dir, "de", "test", rows)
    with pytest.raises(DataError, match=r"row 1 \(item '71'\): answer 'C' and answer_index 0 disagree"):
        load_dataset("mmlu-prox", ["de"], data_dir=prox_dir)
    rows = _prox_rows("de")
    rows[2]["option_3"] = None
    _write(prox_dir, "de", "test", rows)
    with pytest.raises(DataError, match="option_4 follows an empty option_3"):
        load_dataset("mmlu-prox", ["de"], data_dir=prox_dir)


def test_ten_letters_are_read_and_tags_get_their_own_table_1(tmp_path, prox_dir, gmmlu_dir):
    lm = tiny_model("gemma3")
    evaluate(lm, load_dataset("mmlu-prox", ["de"], data_dir=prox_dir), tmp_path / "prox")
    df = pd.read_parquet(tmp_path / "prox" / "records").set_index(["language", "item_id"])
    assert (
        len(df.loc[("de", "70"), "label_logprobs"]) == 10 and len(df.loc[("de", "71"), "label_logprobs"]) == 4
    )
    assert "J: option 9 (de) Answer:" in df.loc[("de", "70"), "prompt"]
    run = json.loads((tmp_path / "prox" / "run.json").read_text())["stages"]["records"]
    assert run["label_tokens"]["letters"][-1] == "J"

    gm = load_dataset("global-mmlu", ["en", "de", "zh"], data_dir=gmmlu_dir)
    summary = evaluate(lm, gm, tmp_path / "g")
    assert {t: v["n_items"] for t, v in summary["by_tag"].items()} == {"CA": 1, "CS": 2}
    assert set(summary["by_tag"]["CS"]["accuracy"]) == {"en", "de", "zh"}
    assert set(summary["by_tag"]["CS"]["cloze"]["accuracy"]) == {"en", "de", "zh"}
    write_report(tmp_path / "g")
    md = (tmp_path / "g" / "report.md").read_text()
    assert "By tag (Table 1 over each tag's items)" in md and "| CS | 2 |" in md


class _FakeHub:
    """``datasets.get_dataset_config_names`` / ``load_dataset`` over rows given per (repo, config, split)."""

    def __init__(self, rows: dict[tuple[str, str | None, str], list[dict]]):
        self.rows, self.calls = rows, []

    def get_dataset_config_names(self, repo: str) -> list[str]:
        return sorted({c for r, c, _ in self.rows if r == repo and c is not None})

    def load_dataset(self, repo: str, config: str | None, split: str) -> list[dict]:
        self.calls.append((repo, config, split))
        return self.rows[(repo, config, split)]


def _okapi(lang: str, ids: list[str], n: int = 4) -> list[dict]:
    return [
        {
            "id": i,
            "instruction": f"[{lang}] {i}?",
            **{f"option_{c}": f"{c}-{lang}" for c in "abcde"[:n]},
            "answer": "B",
        }
        for i in ids
    ]


def test_hub_loaders_map_repositories_splits_and_english(monkeypatch):
    hs = lambda lang, k: {"ind": k, "ctx": f"[{lang}] ctx {k}", "endings": ["a", "b", "c", "d"], "label": "2"}  # noqa: E731
    cais = [
        {"question": f"q{k}", "subject": s, "choices": ["w", "x", "y", "z"], "answer": 1}
        for s, k in (("anatomy", 0), ("anatomy", 1), ("astronomy", 2))
    ]
    fake = _FakeHub({
        ("CohereLabs/Global-MMLU", "en", "dev"): _gmmlu_rows("en"),
        ("CohereLabs/Global-MMLU", "de", "dev"): _gmmlu_rows("de"),
        ("li-lab/MMLU-ProX", "en", "validation"): _prox_rows("en"),
        ("li-lab/MMLU-ProX", "ja", "validation"): _prox_rows("ja"),
        ("alexandrainst/m_hellaswag", "de", "val"): [hs("de", 5), hs("de", 6)],
        ("alexandrainst/m_hellaswag", "en", "val"): [],  # English comes from the original HellaSwag
        ("Rowan/hellaswag", None, "validation"): [hs("en", 5), hs("en", 6), hs("en", 7)],
        ("alexandrainst/m_mmlu", "fr", "val"): _okapi("fr", ["anatomy/val/1", "astronomy/val/0"]),
        ("cais/mmlu", "all", "validation"): cais,
        ("alexandrainst/m_arc", "de", "validation"): _okapi("de", ["Mercury_1", "Mercury_2"], 5),
    })  # fmt: skip
    monkeypatch.setattr(loaders, "_hub", lambda: fake)
    g = load_dataset("global-mmlu", ["de"], split="dev")
    assert len(g) == 4 and g.source == "hub:CohereLabs/Global-MMLU (split dev)"
    assert g.item("de", "world_religions/test/3").tags == ("CS",)
    p = load_dataset("mmlu-prox", ["ja"], split="validation")
    assert p.item("ja", "70").gold == 9
    h = load_dataset("mhellaswag", ["de"])
    assert h.item_ids() == ["5", "6"] and h.item("en", "5").question == "[en] ctx 5"
    assert ("alexandrainst/m_hellaswag", "en", "val") not in fake.calls
    m = load_dataset("okapi-mmlu", ["fr"], split="val")
    assert m.item_ids() == ["anatomy/val/1", "astronomy/val/0"]
    assert m.item("en", "anatomy/val/1").question == "q1"  # the 2nd anatomy row of cais/mmlu validation
    a = load_dataset("okapi-arc", ["de"], split="val")
    assert len(a.item("de", "Mercury_1").choices) == 5 and a.pivot is None


def test_datasets_lists_the_new_benchmarks_with_their_sources(capsys):
    from crosslens.data.registry import list_datasets

    info = {d.name: d for d in list_datasets()}
    assert info["global-mmlu"].splits == ("test", "dev") and len(info["global-mmlu"].languages) == 42
    assert info["mmlu-prox"].splits == ("test", "validation") and len(info["mmlu-prox"].languages) == 29
    assert (
        "CohereLabs/Global-MMLU" in info["global-mmlu"].source
        and "li-lab/MMLU-ProX" in info["mmlu-prox"].source
    )
    assert "alexandrainst/m_hellaswag" in info["mhellaswag"].source
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "global-mmlu" in out and "mmlu-prox" in out
