"""The token -> language table: planted tokens of known languages in two tiny in-process tokenizers
(byte-level BPE like Llama 3 / Qwen / SmolLM2, and Metaspace + byte fallback like Gemma's
SentencePiece), the mass readout against a naive per-token loop, and the cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import wordfreq

import crosslens.data.token_languages as tl
from crosslens.data.token_languages import TokenLanguages, build_token_languages, table_code, token_languages

RARE_HAN = "靐"  # a Han character in neither the Chinese nor the Japanese list (checked below)
WORDS = ["the", "house", "Haus", "und", "maison", "一", "房子", "です", "घर", "дом", "بيت", RARE_HAN, "xqz"]
NOISE = [",", "...", "2024", "(", "!?", "A", "y"]  # lone ASCII letters: answer labels, initials
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def _byte_chars() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (the alphabet of byte-level BPE)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _tokenizer(kind: str, extra: tuple[str, ...] = ()):
    """A tokenizer whose vocabulary holds the planted words (with and without a word-start marker),
    noise, single bytes (a lone byte of a multi-byte character decodes to U+FFFD) and specials."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    words = [*WORDS, *NOISE, *extra]
    if kind == "bytelevel":
        chars = _byte_chars()
        pieces = ["".join(chars[b] for b in w.encode()) for w in words]
        vocab = [*SPECIALS, *chars.values(), *pieces, *(chars[ord(" ")] + p for p in pieces)]
        decoder = decoders.ByteLevel()
    else:
        vocab = [*SPECIALS, *(f"<0x{b:02X}>" for b in range(256)), *words, *("▁" + w for w in words)]
        decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(dict.fromkeys(vocab))}, merges=[]))
    tok.decoder = decoder
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def _id(tokenizer, word: str, spaced: bool = True) -> int:
    """The id of ``word`` as a word-initial token (``Ġword`` / ``▁word``) or as a bare piece."""
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i])
        if text.strip() == word and text.startswith(" ") == spaced:
            return i
    raise KeyError(word)


def _row(table: TokenLanguages, tokenizer, word: str, spaced: bool = True) -> dict[str, float]:
    return dict(zip(table.columns, table.probs[_id(tokenizer, word, spaced)].tolist()))


@pytest.fixture(scope="module", params=["bytelevel", "metaspace"])
def built(request) -> tuple[object, TokenLanguages]:
    tok = _tokenizer(request.param)
    return tok, build_token_languages(tok)


def test_table_shape_and_rows_sum_to_one(built):
    tok, table = built
    assert table.languages == tl.ALL_LANGUAGES
    assert table.probs.dtype == np.float32
    assert table.probs.shape == (len(tok), len(tl.ALL_LANGUAGES) + 1)
    np.testing.assert_allclose(table.probs.sum(axis=1), 1.0, atol=1e-6)
    assert (table.probs >= 0).all()
    assert not table.probs.flags.writeable


def test_tokens_without_a_language_are_none(built):
    tok, table = built
    none = table.probs[:, -1]
    assert (none[tok.all_special_ids] == 1).all()
    for word in [*NOISE, "xqz"]:  # punctuation, digits, a Latin piece no word list knows
        assert _row(table, tok, word)["none"] == 1, word
        assert _row(table, tok, word, spaced=False)["none"] == 1, word
    lone_byte = 0xE4  # first byte of a three-byte character: decodes to U+FFFD
    byte_id = tok.convert_tokens_to_ids(_byte_chars()[lone_byte] if "Ġ" in tok.get_vocab() else "<0xE4>")
    assert "\ufffd" in tok.decode([byte_id]) and none[byte_id] == 1


def test_planted_words_get_their_language(built):
    tok, table = built
    for word, lang, at_least in [
        ("house", "en", 0.3),  # an English word, also in code-switched text of many lists
        ("the", "en", 0.7),
        ("Haus", "de", 0.7),  # looked up case-folded
        ("und", "de", 0.9),
        ("maison", "fr", 0.9),
        ("дом", "ru", 0.4),  # also Bulgarian / Macedonian / Serbian
        ("房子", "zh", 0.9),
        ("بيت", "ar", 0.9),
    ]:
        for spaced in (True, False):
            row = _row(table, tok, word, spaced)
            assert max(row, key=row.get) == lang and row[lang] >= at_least, (word, row)
    for word, lang in [("घर", "hi"), ("です", "ja")]:
        assert _row(table, tok, word)[lang] == pytest.approx(1.0, abs=1e-6)
    one = _row(table, tok, "一")
    assert one["zh"] > one["ja"] > 0 and one["zh"] + one["ja"] == pytest.approx(1.0, abs=1e-6)


def test_frequencies_count_only_in_the_languages_script(built):
    tok, table = built
    the = _row(table, tok, "the")
    assert wordfreq.get_frequency_dict("ja")["the"] > 0  # the Japanese list does hold "the"...
    assert the["ja"] == the["zh"] == the["ko"] == the["ru"] == 0  # ...but a Latin token is not Japanese


def test_han_without_frequency_evidence_is_split_between_zh_and_ja(built):
    tok, table = built
    for lang in ("zh", "ja"):
        assert RARE_HAN not in wordfreq.get_frequency_dict(lang)
    row = _row(table, tok, RARE_HAN)
    assert row["zh"] == row["ja"] == 0.5


def test_restricted_languages():
    tok = _tokenizer("bytelevel")
    table = build_token_languages(tok, ["eng_Latn", "deu_Latn", "zho_Hans"])
    assert table.languages == ("en", "de", "zh")
    np.testing.assert_allclose(table.probs.sum(axis=1), 1.0, atol=1e-6)
    assert _row(table, tok, "дом")["none"] == 1  # no table language writes Cyrillic
    assert _row(table, tok, RARE_HAN)["zh"] == 1  # the Han split goes to the table's only Han language
    with pytest.raises(ValueError, match="est_Latn"):
        build_token_languages(tok, ["est_Latn"])


def _naive_masses(table: TokenLanguages, p: np.ndarray, requested: list[str]) -> dict[str, np.ndarray]:
    codes = [table_code(c) for c in requested]
    out = {name: np.zeros(p.shape[:-1]) for name in [*requested, "other", "none"]}
    for t in range(p.shape[-1]):
        for j, column in enumerate(table.columns):
            if column in codes:
                name = requested[codes.index(column)]
            else:
                name = "none" if column == "none" else "other"
            out[name] += p[..., t] * float(table.probs[t, j])
    return out


def test_masses_match_a_per_token_loop(built):
    tok, table = built
    requested = ["eng_Latn", "deu_Latn", "zho_Hans"]
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(len(tok), 0.1), size=(2, 3)).astype(np.float32)
    got = table.masses(p, requested)
    assert list(got) == [*requested, "other", "none"]
    assert all(isinstance(v, np.ndarray) and v.shape == (2, 3) for v in got.values())
    expected = _naive_masses(table, p.astype(np.float64), requested)
    for name in got:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-5, err_msg=name)
    np.testing.assert_allclose(sum(got.values()), 1.0, atol=1e-5)

    as_torch = table.masses(torch.from_numpy(p), requested)
    assert all(isinstance(v, torch.Tensor) for v in as_torch.values())
    np.testing.assert_allclose(as_torch["eng_Latn"].numpy(), got["eng_Latn"], atol=1e-6)


def test_masses_of_planted_distributions(built):
    tok, table = built
    house, haus = _id(tok, "house"), _id(tok, "Haus")
    p = torch.zeros(2, len(tok))
    p[0, house] = 1.0
    p[1, house] = p[1, haus] = 0.5
    got = table.masses(p, ["en", "de"])
    en, de, none = (table.columns.index(c) for c in ("en", "de", "none"))
    rows = table.probs[[house, haus]]
    assert got["en"][0] == pytest.approx(float(rows[0, en]), abs=1e-6)
    assert got["en"][0] > got["de"][0]
    for name, col in [("en", en), ("de", de), ("none", none)]:
        assert got[name][1] == pytest.approx(float(rows[:, col].mean()), abs=1e-6)
    other = 1 - rows[:, [en, de, none]].sum(axis=1)
    np.testing.assert_allclose(got["other"].numpy(), [other[0], other.mean()], atol=1e-6)


def test_masses_padded_head_and_bad_requests(built):
    tok, table = built
    p = torch.full((len(tok) + 3,), 1.0 / (len(tok) + 3))  # a head padded past the tokenizer
    got = table.masses(p, ["en"])
    padded = table.masses(p[: len(tok)], ["en"])
    assert got["none"] == pytest.approx(float(padded["none"]) + 3 / (len(tok) + 3), abs=1e-6)
    assert sum(float(v) for v in got.values()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="rows"):
        table.masses(p[:10], ["en"])
    with pytest.raises(ValueError, match="twice"):
        table.masses(p, ["en", "eng_Latn"])
    with pytest.raises(ValueError, match="est_Latn"):
        table.masses(p, ["est_Latn"])


def test_table_code():
    assert table_code("eng_Latn") == "en"
    assert table_code("zho_Hans") == "zh"
    assert table_code("zh-Hant") == "zh"
    assert table_code("deu_Latn") == table_code("de") == "de"
    assert table_code("arb_Arab") == "ar"
    assert table_code("srp_Cyrl") == "sh"  # wordfreq's Serbo-Croatian list
    assert table_code("tha_Thai") == "th"  # identified by script alone
    assert table_code("swh_Latn") == table_code("SW_KE") == "sw"  # our own list
    for bad in ["est_Latn", "xx", "not a code", ""]:
        with pytest.raises(ValueError) as err:
            table_code(bad)
        message = str(err.value)
        assert "\n" not in message and repr(bad) in message and "en, es" in message


def test_swahili_from_the_text_we_ship():
    """Swahili has no wordfreq list: its words come from the Swahili side of our parallel text, minus
    words seen once and words the other languages' sides use too (names, loanwords)."""
    ours = tl.text_lists()["sw"]
    assert {"katika", "gani", "mnyama"} <= set(ours) and ours["ni"] > ours["katika"] > 0
    assert "kenya" not in ours and "india" not in ours  # also on the English side: names
    assert "mwaka" not in ours  # once in the Swahili text: too little evidence
    tok = _tokenizer("bytelevel", extra=("katika", "gani", "Kenya", "ni", "mwaka"))
    table = build_token_languages(tok)
    assert _row(table, tok, "katika")["sw"] == pytest.approx(1.0, abs=1e-6)  # in no other list
    assert _row(table, tok, "Kenya")["sw"] == 0
    assert _row(table, tok, "mwaka")["sw"] == 0
    ni = _row(table, tok, "ni")
    assert ni["sw"] > 0.5 and ni["fr"] > 0  # a Swahili function word, also French and Spanish "ni"


def test_is_language_code():
    for code in ["de", "swh_Latn", "est_Latn", "YO_NG", "AR_XY", "zh-Hant"]:
        assert tl.is_language_code(code), code
    for code in ["xx", "mini", "not a code", ""]:
        assert not tl.is_language_code(code), code


def test_coverage(built):
    tok, table = built
    cov = table.coverage()
    assert cov.vocab_size == len(tok)
    assert cov.assigned == int((table.probs[:, -1] < 1).sum())
    assert cov.share == pytest.approx(cov.assigned / len(tok))
    assert sum(cov.per_language.values()) + float(table.probs[:, -1].sum()) == pytest.approx(
        len(tok), abs=1e-3
    )
    assert cov.per_language["hi"] == pytest.approx(2.0, abs=1e-5)  # "घर" and "▁घर" / "Ġघर"


@pytest.fixture
def counted_builds(monkeypatch, tmp_path) -> list[object]:
    """Each build the cache triggers, recorded; the cache root moved to a temporary folder. The
    builder is a stand-in with random rows (the real one is tested above, and takes seconds)."""
    monkeypatch.setenv("CROSSLENS_CACHE", str(tmp_path))
    calls: list[object] = []

    def fake_build(tokenizer, languages=None):
        calls.append(tokenizer)
        rows = np.random.default_rng(len(calls)).random((len(tokenizer), len(tl.ALL_LANGUAGES) + 1))
        probs = (rows / rows.sum(axis=1, keepdims=True)).astype(np.float32)
        return TokenLanguages(tl.ALL_LANGUAGES, probs, tl.tokenizer_sha256(tokenizer))

    monkeypatch.setattr(tl, "build_token_languages", fake_build)
    return calls


def test_cache_round_trip(counted_builds, tmp_path):
    tok = _tokenizer("metaspace")
    first = token_languages(tok)
    assert len(counted_builds) == 1
    folder = tmp_path / "token-languages"
    [npz] = folder.glob("*.npz")
    sidecar = json.loads(npz.with_suffix(".json").read_text())
    assert sidecar["tokenizer_sha256"] == first.tokenizer_sha256 and sidecar["method"] == tl.METHOD
    assert sidecar["languages"] == list(tl.ALL_LANGUAGES)

    second = token_languages(_tokenizer("metaspace"))  # an equal tokenizer, loaded from the cache
    assert len(counted_builds) == 1
    np.testing.assert_array_equal(second.probs, first.probs)
    assert second.provenance == first.provenance

    other = token_languages(_tokenizer("metaspace", extra=("Katze",)))
    assert len(counted_builds) == 2 and other.tokenizer_sha256 != first.tokenizer_sha256
    assert len(list(folder.glob("*.npz"))) == 2


def test_corrupt_or_stale_cache_is_rebuilt(counted_builds, tmp_path):
    tok = _tokenizer("bytelevel")
    reference = token_languages(tok)
    [npz] = (tmp_path / "token-languages").glob("*.npz")
    for damage in (b"not a zip file", npz.read_bytes()[:100], b""):
        npz.write_bytes(damage)
        again = token_languages(tok)
        assert again.probs.shape == reference.probs.shape  # rebuilt (the stand-in's rows differ)
        np.testing.assert_array_equal(token_languages(tok).probs, again.probs)  # and cached again
    assert len(counted_builds) == 4

    # A valid file recorded for another tokenizer, sitting under this tokenizer's name.
    other = _tokenizer("bytelevel", extra=("Katze",))
    token_languages(other)
    stale = next(p for p in (tmp_path / "token-languages").glob("*.npz") if p != npz)
    npz.write_bytes(stale.read_bytes())
    assert token_languages(tok).tokenizer_sha256 == reference.tokenizer_sha256
    assert len(counted_builds) == 6


def test_explicit_cache_dir(counted_builds, tmp_path):
    tok = _tokenizer("bytelevel")
    token_languages(tok, cache_dir=tmp_path / "elsewhere")
    assert len(list((tmp_path / "elsewhere").glob("*.npz"))) == 1
    assert not (tmp_path / "token-languages").exists()
