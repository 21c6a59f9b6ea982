"""The word tasks (Wendler et al. 2024): the word list reader and its one-line errors, the prompts,
which tokens stand for a word, the tokenizer's filter on planted overlaps, the probabilities against
a naive computation from transformers' hidden states through the same lens (every family), resume,
extension, refusal, the command line and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import FAMILIES, tiny_model
from crosslens.cli import main
from crosslens.data.schema import DataError
from crosslens.data.token_languages import TokenLanguages
from crosslens.data.words import LANGUAGE_NAMES, read_words
from crosslens.lenses.lens import LensInfo, TunedLens
from crosslens.models.passes import prefix_groups
from crosslens.options import OptionError
from crosslens.stages.activations import last_token_states
from crosslens.stages.words.compute import curves, mean_ci, screen, word_tokens
from crosslens.stages.words.stage import shared_last_states, words_stage
from crosslens.stages.words.tasks import Pair, exemplars, render
from crosslens.store import RunMismatchError, Store
from helpers import toy_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# (id, en, de, fr): "radio" and "hotel" are the planted overlaps (the German word is the English
# one capitalised); "water"'s German word starts with a character neither tiny tokenizer has a token
# for (the Gemma-like one: its unknown token; the byte-level one: a byte token); the others share no
# first token with English in either tiny tokenizer (test_word_tokens_are_the_first_token_of_each_variant).
CONCEPTS = [
    ("dog", "dog", "Hund", "chien"),
    ("question", "question", "Frage", "demande"),
    ("capital", "capital", "Hauptstadt", "capitale"),
    ("radio", "radio", "Radio", "poste"),
    ("hotel", "hotel", "Hotel", "auberge"),
    ("water", "water", "Ωasser", "eau"),
]
CLOZE = {"en": 'A "___" is a thing.', "de": 'Ein "___" ist ein Ding.', "fr": 'Un "___" est une chose.'}


def write_words(path: Path, rows: list[dict] | None = None) -> Path:
    rows = rows or [
        {"id": c, "words": {"en": [en], "de": [de], "fr": [fr]}, "cloze": CLOZE} for c, en, de, fr in CONCEPTS
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def table_for(tokenizer) -> TokenLanguages:
    """A token -> language table without wordfreq (fast): ASCII-letter tokens half English, half
    German; tokens with other letters French; the rest none."""
    vocab = max(tokenizer.get_vocab().values()) + 1
    probs = np.zeros((vocab, 4), dtype=np.float32)
    for i in range(vocab):
        text = tokenizer.decode([i]).strip()
        if text.isascii() and text.isalpha():
            probs[i, :2] = 0.5
        elif any(ch.isalpha() for ch in text):
            probs[i, 2] = 1.0
        else:
            probs[i, 3] = 1.0
    return TokenLanguages(("en", "de", "fr"), probs, "test")


def plan(lm, out: Path, words: Path, **kw):
    kw = {"layers": [0, 2, lm.anatomy.n_layers], "n_boot": 50, "batch_size": 3, "chunk_size": 2} | kw
    return words_stage(
        lm, toy_dataset(("en", "de")), out, words=words, token_table=table_for(lm.tokenizer), **kw
    )


def run(stage) -> dict:
    from crosslens.stages.base import run_stage

    return run_stage(stage)


# -- the word list ---------------------------------------------------------------------------------------
def test_the_bundled_list_reads_with_names_for_every_language() -> None:
    words = read_words()
    assert len(words.concepts) >= 100 and words.languages == sorted("en de fr es ru zh ja ar hi sw".split())
    assert all(lang in LANGUAGE_NAMES for lang in words.languages)
    assert words.concept("flower").word("zh") == "花" and len(words.sha256) == 64
    assert words.code_for("deu_Latn") == "de" and words.code_for("zho_Hant") is None


@pytest.mark.parametrize(
    "line, words",
    [
        ('{"id": "cat", "words": {"en": ["cat"]}}', ("line 2", "'cat'", "'de'", "translation")),
        ('{"id": "cat", "words": {"en": ["cat"], "de": []}}', ("line 2", "'cat'", "'de'")),
        (
            '{"id": "cat", "words": {"en": ["cat"], "de": ["Katze"]}, "cloze": {"de": "Eine Katze."}}',
            ("line 2", "'cat'", "exactly one blank"),
        ),  # fmt: skip
        (
            '{"id": "cat", "words": {"en": ["cat"], "de": ["Katze"]}, "cloze": {"de": "___ und ___"}}',
            ("line 2", "'cat'", "it has 2"),
        ),  # fmt: skip
        ('{"id": "dog", "words": {"en": ["dog"], "de": ["Hund"]}}', ("line 2", "'dog'", "twice", "line 1")),
        ('{"id": "cat", "word": {"en": ["cat"]}}', ("line 2", "'cat'", "'word'")),
        ('{"id": "cat", "words": {"en": ["c\\"at"], "de": ["Katze"]}}', ("line 2", "'cat'", "quote")),
        ('{"id": "cat", "words": ', ("line 2", "invalid JSON")),
        ('["cat"]', ("line 2", "JSON object")),
    ],
)
def test_a_malformed_word_list_is_one_line(tmp_path: Path, line: str, words: tuple[str, ...]) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text('{"id": "dog", "words": {"en": ["dog"], "de": ["Hund"]}}\n' + line + "\n")
    with pytest.raises(DataError) as err:
        read_words(path).require(["en", "de"])
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message, message


# -- prompts and tokens ------------------------------------------------------------------------------------
def test_prompts_are_wendlers_and_never_show_the_concept_asked(tmp_path: Path) -> None:
    words = read_words(write_words(tmp_path / "w.jsonl"))
    dog = words.concept("dog")
    pair = Pair("translation", "fr", "de")
    shots = exemplars(words, pair, "dog", 4, seed=0)
    assert "dog" not in [s.id for s in shots] and shots == exemplars(words, pair, "dog", 4, seed=0)
    assert shots != exemplars(words, pair, "dog", 4, seed=1)
    lines = render(pair, dog, shots).split("\n")
    assert len(lines) == 5 and lines[-1] == 'Français: "chien" - Deutsch: "'
    assert lines[0] == f'Français: "{shots[0].word("fr")}" - Deutsch: "{shots[0].word("de")}"'
    assert render(Pair("repetition", "de", "de"), dog, []) == 'Deutsch: "Hund" - Deutsch: "'
    cloze = render(Pair("cloze", "de", "de"), dog, shots[:1]).split("\n")
    assert cloze == [
        f'Ein "___" ist ein Ding. Antwort: "{shots[0].word("de")}"',
        'Ein "___" ist ein Ding. Antwort: "',
    ]


def test_word_tokens_are_the_first_token_of_each_variant() -> None:
    """What P(word) sums: the first token of the word, capitalised, each with and without a leading
    space, as it follows ': "' (a variant whose first token is a bare space adds nothing)."""
    tok = tiny_model("llama").tokenizer
    assert sorted(tok.decode([i]) for i in word_tokens(tok, ["dog"])) == [" D", " d", "D", "d"]
    assert word_tokens(tok, ["花"]) == ()  # only byte tokens: no token stands for the word
    both = word_tokens(tok, ["dog", "Hund"])
    assert set(word_tokens(tok, ["dog"])) | set(word_tokens(tok, ["Hund"])) == set(both)
    for family in ("gemma3", "llama"):
        tok = tiny_model(family).tokenizer
        for _, en, de, _fr in CONCEPTS[:3]:
            assert not set(word_tokens(tok, [en])) & set(word_tokens(tok, [de])), (family, en, de)


@pytest.mark.parametrize("family", ["gemma3", "llama"])
def test_the_filter_drops_exactly_the_planted_overlaps(family: str, tmp_path: Path) -> None:
    lm = tiny_model(family)
    words = read_words(write_words(tmp_path / "w.jsonl"))
    screened = screen(lm.tokenizer, words.concepts, ["de", "en"])
    why = "unknown" if family == "gemma3" else "bytes"  # the byte-level tokenizer has no unknown token
    assert screened.dropped["de"] == {"shared": ["radio", "hotel"], "unknown": [], "bytes": []} | {
        why: ["water"]
    }
    assert screened.kept["de"] == ["dog", "question", "capital"]
    assert screened.kept["en"] == [c for c, *_ in CONCEPTS]  # English is never compared with itself
    assert screened.counts()["de"] | {"dropped": None} == {"concepts": 6, "kept": 3, "dropped": None}


def test_translation_leaves_out_a_target_word_the_source_word_gives_away(tmp_path: Path) -> None:
    """A target word sharing a first token with the source word could be copied from the prompt (花
    in Chinese and Japanese): it is left out of that translation pair only."""
    rows = [{"id": c, "words": {"en": [en], "de": [de], "fr": [de if c == "capital" else fr]}}
            for c, en, de, fr in CONCEPTS]  # fmt: skip
    words = read_words(write_words(tmp_path / "w.jsonl", rows))
    screened = screen(tiny_model("llama").tokenizer, words.concepts, ["de"], sources=["fr", "en"])
    assert screened.copies("fr", "de") == ["capital"] and screened.copies("en", "de") == []
    lm = tiny_model("llama")
    stage = plan(lm, tmp_path / "out", tmp_path / "w.jsonl", sources=["fr"], targets=["de", "en"])
    assert stage.copies == {"translation:fr>de": ["capital"], "translation:fr>en": []}
    read: dict[str, set[str]] = {}
    for u in stage.units:
        read.setdefault(u.language, set()).update(u.item_ids)
    assert "capital" not in read["translation:fr>de"] and "capital" in read["translation:fr>en"]


# -- the readings --------------------------------------------------------------------------------------------
def _naive(lm, prompt: str, layer: int, lens: TunedLens | None) -> torch.Tensor:
    """Next-token probabilities after ``prompt`` at ``layer`` from transformers' own hidden states:
    hidden_states[l] (l < L) is block l's output before the final norm, which is applied once here;
    the last layer is the model's own output (transformers 5's hidden_states[-1] is post-norm)."""
    ids = torch.tensor([lm.tokenizer(prompt).input_ids])
    with torch.no_grad():
        out = lm.model(ids, output_hidden_states=True)
        if layer == lm.anatomy.n_layers:
            return out.logits[0, -1].float().softmax(-1)
        h = out.hidden_states[layer][0, -1]
        if lens is not None and layer in lens.layers:
            lin = lens.translators[str(layer)]
            h = h + lin(h)
        logits = lm.model.lm_head(lm.model.model.norm(h)).float()
        cap = getattr(lm.model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits.softmax(-1)


@pytest.mark.parametrize("family", FAMILIES)
def test_probabilities_equal_a_naive_computation_through_the_same_lens(family: str, tmp_path: Path) -> None:
    lm = tiny_model(family)
    n = lm.anatomy.n_layers
    tuned = TunedLens(lm.anatomy, range(n), LensInfo({}, list(range(n))), sha256="test")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for lin in tuned.translators.values():
            lin.weight.copy_(0.05 * torch.randn(lin.weight.shape, generator=g))
            lin.bias.copy_(0.05 * torch.randn(lin.bias.shape, generator=g))
    stage = plan(lm, tmp_path / "out", write_words(tmp_path / "w.jsonl"), tasks=["translation", "cloze"],
                 sources=["en", "fr"], targets=["de"], lenses=["logit", tuned], layers=[0, 1, n])  # fmt: skip
    run(stage)
    rows = Store(tmp_path / "out").read("words")
    tags = sorted(set(rows["lens"]))
    assert tags[0] == "logit" and tags[1].startswith("tuned:") and len(tags) == 2
    assert set(rows["task"]) == {"translation", "cloze"} and set(rows["source"]) == {"en", "fr", "de"}
    for pair_key in ("translation:fr>de", "cloze:de>de"):
        pair = Pair.of(pair_key)
        concept = stage.screened.kept["de"][0]
        target, english = stage.screened.tokens[(concept, "de")], stage.screened.tokens[(concept, "en")]
        for tag, lens in (("logit", None), (tags[1], tuned)):
            for layer in (0, 1, n):
                p = _naive(lm, stage.prompt(pair, concept), layer, lens)
                at = (
                    (rows["task"] == pair.task)
                    & (rows["source"] == pair.source)
                    & (rows["concept"] == concept)
                )
                row = rows[at & (rows["lens"] == tag) & (rows["layer"] == layer)].iloc[0]
                assert row["p_target"] == pytest.approx(p[list(target)].sum().item(), abs=1e-4)
                assert row["p_english"] == pytest.approx(p[list(english)].sum().item(), abs=1e-4)
                entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
                assert row["entropy"] == pytest.approx(entropy, abs=1e-4)
                assert row["top_token"] == lm.tokenizer.decode([int(p.argmax())])
    masses = rows[["mass_english", "mass_target", "mass_other", "mass_none"]].sum(axis=1)
    np.testing.assert_allclose(masses, 1.0, atol=1e-5)


@pytest.mark.parametrize("family", ["gemma3", "llama"])
def test_a_shared_exemplar_block_is_encoded_once_with_the_same_states(family: str, tmp_path: Path) -> None:
    """A pair's prompts share their exemplar block: encoded once (its cache extended by each prompt's
    own tokens) they give the states of each prompt encoded alone (Gemma 3's sliding window is 8)."""
    lm = tiny_model(family)
    words = read_words(write_words(tmp_path / "w.jsonl"))
    pair = Pair("translation", "en", "de")
    prompts = [render(pair, c, exemplars(words, pair, c.id, 4, seed=0)) for c in words.concepts]
    ids = [lm.tokenizer(p).input_ids for p in prompts]
    assert any(k >= 32 for k, _ in prefix_groups(ids, 32))
    shared, alone = shared_last_states(lm, ids, [0, 2, 4], 3), last_token_states(lm, ids, [0, 2, 4], 3)
    for layer in (0, 2, 4):
        np.testing.assert_allclose(shared[layer], alone[layer], atol=1e-4, rtol=0)


def test_translation_from_english_is_kept_apart_from_the_latent_curves() -> None:
    """Its prompt holds the English word: its P(English) measures copying, pooled on its own."""
    rows = pd.DataFrame(
        [
            {"task": "translation", "source": s, "target": t, "lens": "logit", "layer": 1, "concept": c,
             "p_target": 0.1, "p_english": 0.9 if s == "en" else 0.2, "mass_target": 0.0,
             "mass_english": 0.0, "entropy": 1.0}
            for s, t in (("en", "de"), ("fr", "de"), ("de", "en"), ("en", "fr"))
            for c in ("a", "b")
        ]
    )  # fmt: skip
    found = curves(rows, 0, 0)["translation"]
    assert set(found) == {"de", "en", "all", "from_en"}
    mean = {g: found[g]["logit"][1]["p_english"]["mean"] for g in found}
    assert mean == pytest.approx({"de": 0.2, "en": 0.2, "all": 0.2, "from_en": 0.9})


def test_mean_ci_is_a_percentile_bootstrap() -> None:
    values = np.array([0.1, 0.2, 0.3, 0.4, np.nan])
    cell = mean_ci(values, 2000, seed=0)
    assert cell["mean"] == pytest.approx(0.25) and cell["n"] == 4
    assert 0.1 <= cell["ci_low"] < 0.25 < cell["ci_high"] <= 0.4
    assert np.isnan(mean_ci(np.array([0.5]), 100, 0)["ci_low"])


# -- resume, extension, refusal ------------------------------------------------------------------------------
def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "words").glob("*.parquet"))}


def test_more_targets_layers_and_concepts_extend_and_equal_a_fresh_run(tmp_path: Path) -> None:
    lm = tiny_model("llama")
    words = write_words(tmp_path / "w.jsonl")
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    run(plan(lm, out, words, targets=["de"], sources=["fr"], layers=[1, 2], n_concepts=4))
    first = _shards(out)
    more = {"targets": ["de", "en"], "sources": ["fr"], "layers": [1, 2, 4]}
    summary = run(plan(lm, out, words, **more))
    assert all(_shards(out)[k] == v for k, v in first.items()) and len(_shards(out)) > len(first)
    run(plan(lm, fresh, words, **more))
    a, b = (Store(x).read("words") for x in (out, fresh))
    keys = ["task", "source", "target", "concept", "lens", "layer"]
    a, b = (df.sort_values(keys).reset_index(drop=True) for df in (a, b))
    assert not a.duplicated(keys).any() and len(a) == len(b)
    np.testing.assert_allclose(a["p_target"], b["p_target"], atol=1e-6)
    assert summary["layers"] == [1, 2, 4] and summary["pairs"] == ["translation:fr>de", "translation:fr>en"]
    assert set(summary["curves"]["translation"]) == {"de", "en", "all"}
    # A smaller selection reads a subset: the summary covers the run's own pairs and layers.
    before = _shards(out)
    again = run(plan(lm, out, words, targets=["de"], sources=["fr"], layers=[2]))
    assert again["layers"] == [2] and set(again["curves"]["translation"]) == {"de", "all"}
    assert _shards(out) == before


def test_another_word_list_seed_or_shots_is_refused(tmp_path: Path) -> None:
    lm = tiny_model("llama")
    words = write_words(tmp_path / "w.jsonl")
    out = tmp_path / "out"
    run(plan(lm, out, words, targets=["de"], sources=["en"], layers=[1]))
    before = _shards(out)
    other = [{"id": c, "words": {"en": [en], "de": [de + "e"], "fr": [fr]}, "cloze": CLOZE}
             for c, en, de, fr in CONCEPTS]  # fmt: skip
    changed = write_words(tmp_path / "w2.jsonl", other)
    for kw, word in ((dict(words=changed), "words"), (dict(seed=1), "seed"), (dict(shots=2), "shots")):
        stage = plan(lm, out, **({"words": words} | kw), targets=["de"], sources=["en"], layers=[1])
        with pytest.raises(RunMismatchError, match=word):
            stage.check()
    assert _shards(out) == before


def test_bad_options_are_one_line_before_any_reading(tmp_path: Path) -> None:
    lm = tiny_model("llama")
    words = write_words(tmp_path / "w.jsonl")
    cases = [
        (dict(tasks=["sing"]), "tasks"),
        (dict(targets=["xx"]), "targets"),
        (dict(sources=["de"], targets=["de"]), "targets"),  # translation needs two languages
        (dict(shots=9), "shots"),
    ]
    for kw, field in cases:
        with pytest.raises(OptionError) as err:
            run(plan(lm, tmp_path / "out", words, **kw))
        assert err.value.field.split("[")[0] == field, err.value
    assert not (tmp_path / "out").exists()


# -- the command line and the report -------------------------------------------------------------------------
def test_cli_runs_prints_the_filter_and_the_report_has_its_section(
    saved_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from crosslens.experiment.report import write_report

    words = write_words(tmp_path / "w.jsonl")
    out = tmp_path / "out"
    base = ["words", "-m", str(saved_model), "-d", "crosslens-mini", "--languages", "en,de,fr",
            "-o", str(out), "--words", str(words), "--layers", "1,4", "--n-boot", "20"]  # fmt: skip
    assert main([*base, "--task", "translation,cloze", "--source", "en,fr"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert (
        "de: kept 3 of 6 concepts (2 share a first token with the English word; 1 start with the" in printed
    )
    assert "fig_words.png" in printed.replace(" ", "")  # rich may break a long path anywhere
    assert (out / "fig_words_latent.png").is_file()
    summary = json.loads((out / "words_summary.json").read_text())
    assert summary["tasks"] == ["translation", "cloze"] and "en" in summary["targets"]
    assert summary["examples"]["translation"].endswith('- Deutsch: "')
    md = write_report(out).with_name("report.md").read_text()
    for text in (
        "Word task translation: per layer",
        "kept per target language",
        "fig_words.png",
        "| word list |",
    ):
        assert text in md, text

    def no_load(*args: object, **kw: object) -> None:
        raise AssertionError("a refused command must not load the model")

    monkeypatch.setattr("crosslens.models.loading.load_model", no_load)
    partial = tmp_path / "partial.jsonl"
    partial.write_text(words.read_text() + '{"id": "cat", "words": {"en": ["cat"], "fr": ["chat"]}}\n')
    for extra, expected in (
        (["--task", "sing"], ("--task", "'sing'")),
        (["--target", "xx"], ("--target", "'xx'")),
        (["--words", str(partial)], ("partial.jsonl line 7", "'cat'", "'de'")),
        (["--words", str(tmp_path / "none.jsonl")], ("--words", "none.jsonl")),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in err, err
        for word in expected:
            assert word in " ".join(err.split()), err


@pytest.mark.slow
def test_gemma_3_270m_reads_english_between_chinese_and_german(tmp_path: Path) -> None:
    """The field's picture on the real Gemma 3 270M (docs/words.md): translating de -> zh and
    zh -> de, the English word is likelier than the target word at layer 14, and the target word
    is likelier than the English word in the model's own output (layer 18)."""
    from crosslens.data.registry import load_dataset
    from crosslens.models.loading import load_model

    lm = load_model("gemma-3-270m")
    stage = words_stage(lm, load_dataset("crosslens-mini", ["de", "zh"]), tmp_path, layers=[14, 18],
                        n_concepts=8, n_boot=100)  # fmt: skip
    summary = run(stage)
    for target in ("de", "zh"):
        curve = summary["curves"]["translation"][target]["logit"]
        assert curve[14]["p_english"]["mean"] > 3 * curve[14]["p_target"]["mean"], target
        assert curve[18]["p_target"]["mean"] > 3 * curve[18]["p_english"]["mean"], target


def test_an_experiment_runs_the_words_section_and_reports_it(tmp_path: Path) -> None:
    from crosslens.experiment.config import parse_config
    from crosslens.experiment.runner import run_experiment

    lm = tiny_model("gemma3")
    config = {
        "models": [lm.spec],
        "datasets": [{"name": "crosslens-mini", "languages": ["en", "de", "fr"], "limit": 4}],
        "layers": [2, 4],
        "lens": {"enabled": False},
        "pca": {"enabled": False},
        "words": {"tasks": ["translation", "repetition"], "n_concepts": 8, "n_boot": 20},
        "output": str(tmp_path / "runs"),
    }
    report = run_experiment(parse_config(config, check_models=False), progress=False, models={lm.spec: lm})
    folder = tmp_path / "runs" / "tiny-gemma3" / "crosslens-mini"
    summary = json.loads((folder / "words_summary.json").read_text())
    assert summary["tasks"] == ["translation", "repetition"] and summary["layers"] == [2, 4]
    assert set(Store(folder).read("words")["task"]) == {"translation", "repetition"}
    md = report.with_name("report.md").read_text()
    assert "Word task repetition: where P(target) and P(English) turn" in md and "fig_words.png" in md
