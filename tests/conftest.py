"""Shared fixtures: tiny random models of every supported family, with real tokenizers.

The tokenizers are trained in-process (byte-level BPE like Llama 3 / Qwen, and Metaspace BPE like
Gemma's SentencePiece), so label tokenisation quirks (" A" vs "▁A") are exercised offline.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from crosslens.models.anatomy import Anatomy
from crosslens.models.loading import LoadedModel

CORPUS = [
    "Given the following question and answer choices, output the letter corresponding to the correct answer.",
    "Question: What is the capital of France? A: Berlin B: Paris C: Madrid D: Rome Answer: B",
    "Frage: Was ist die Hauptstadt von Frankreich? Antwort: Paris",
    "Pregunta: ¿Cuál es la capital de Francia? Respuesta: París",
    "The quick brown fox jumps over the lazy dog. 1 2 3 4 5 6 7 8 9 10",
    "问题：法国的首都是哪里？ 答案：巴黎",
    "Вопрос: Какая столица Франции? Ответ: Париж",
    "A: one B: two C: three D: four E: five Answer: A Answer: B Answer: C Answer: D Answer: E",
    "F: six G: seven H: eight I: nine J: ten Answer: F Answer: G Answer: H Answer: I Answer: J",
] * 3

SHARED_DATA = Path(
    os.environ.get("CROSSLENS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def _tokenizer(kind: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>" if kind == "metaspace" else None))
    if kind == "bytelevel":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = []
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"], initial_alphabet=alphabet
    )
    tok.train_from_iterator(CORPUS, trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def _config(family: str, vocab: int):
    from transformers import Gemma2Config, Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if family == "gemma2":
        # A small softcap so the tanh really bends the random model's logits.
        return Gemma2Config(
            **common, final_logit_softcapping=2.0, sliding_window=256, query_pre_attn_scalar=16
        )
    if family == "gemma3":
        return Gemma3TextConfig(**common, sliding_window=8, query_pre_attn_scalar=16, layer_types=None)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "llama":
        return LlamaConfig(**common)
    if family == "mistral":
        return MistralConfig(**common, sliding_window=None)
    raise ValueError(family)


FAMILIES = ["gemma2", "gemma3", "qwen2", "llama", "mistral"]
_CACHE: dict[str, LoadedModel] = {}


def tiny_model(family: str) -> LoadedModel:
    """A deterministic tiny random model of ``family`` (cached per session)."""
    if family not in _CACHE:
        from transformers import AutoModelForCausalLM

        tok = _tokenizer("metaspace" if family.startswith("gemma") else "bytelevel")
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_config(family, len(tok)), dtype=torch.float32).eval()
        with torch.no_grad():  # larger weights than the init so predictions are not all ~uniform
            for p in model.parameters():
                if p.dim() == 2:
                    p.mul_(8.0)
        model.requires_grad_(False)
        _CACHE[family] = LoadedModel(
            model=model,
            tokenizer=tok,
            spec=f"tiny-{family}",
            revision="random-seed-0",
            dtype=torch.float32,
            device="cpu",
            anatomy=Anatomy.of(model),
        )
    return _CACHE[family]


@pytest.fixture(params=FAMILIES)
def tiny(request) -> LoadedModel:
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared benchmark data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """The tiny llama saved as a plain local model folder (a spec the CLI can load)."""
    lm = tiny_model("llama")
    path = tmp_path_factory.mktemp("tiny-llama")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models run several times faster on one thread (no oversubscription on a busy machine),
    and a one-CPU Ray worker runs on one thread too: a module's local references run the same way."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory) -> Path:
    """The tiny Gemma 3 as a local folder spec, loadable by another process (a subprocess, a Ray worker)."""
    lm = tiny_model("gemma3")
    folder = tmp_path_factory.mktemp("models") / "tiny-gemma3-saved"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def toy_jsonl_dir(tmp_path_factory) -> Path:
    """The toy parallel set in crosslens' generic jsonl format, one file per language."""
    import json

    from helpers import QUESTIONS

    path = tmp_path_factory.mktemp("toy-jsonl")
    for lang, rows in QUESTIONS.items():
        with open(path / f"{lang}.jsonl", "w", encoding="utf-8") as fh:
            for k, (q, c, g) in enumerate(rows):
                fh.write(
                    json.dumps({"id": f"q{k}", "question": q, "choices": c, "answer": g}, ensure_ascii=False)
                    + "\n"
                )
    return path
