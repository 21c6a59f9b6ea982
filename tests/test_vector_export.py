"""Steering vectors for other tools: lm-evaluation-harness's steered model and llama.cpp control vectors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from crosslens.cli import main
from crosslens.interop.vector_export import hookpoint, read_gguf, read_lmeval, write_gguf, write_lmeval
from crosslens.models.loading import load_model
from crosslens.scoring.options import EvalOptions
from crosslens.stages.steering.stage import (
    VECTORS_FILE,
    SteeringVectors,
    add_at_positions,
    full_scores,
    run_steering,
)
from helpers import toy_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def vectors() -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {2: torch.randn(64, generator=g), 4: torch.randn(64, generator=g)}


def test_lmeval_file_round_trips_and_names_the_decoder_layers(tmp_path: Path, vectors) -> None:
    path = write_lmeval(tmp_path / "v.pt", vectors, "gemma3_text", coefficient=2.5)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"layers.1", "layers.3"} == {hookpoint("gemma3_text", 2), hookpoint("gemma3_text", 4)}
    assert raw["layers.1"]["action"] == "add" and raw["layers.1"]["steering_coefficient"] == 2.5
    back, coefficients = read_lmeval(path, "gemma3_text")
    assert all(torch.equal(back[k], vectors[k]) for k in vectors) and coefficients == {2: 2.5, 4: 2.5}


def test_lmeval_reader_refuses_pickles_and_foreign_entries(tmp_path: Path, vectors) -> None:
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"layers.1": {"steering_vector": torch.ones(4), "action": "add", "x": object()}}, fh)
    with pytest.raises(ValueError, match="plain tensors"):
        read_lmeval(evil, "llama")
    other = tmp_path / "other.pt"
    torch.save({"encoder.h.3": {"steering_vector": torch.ones(4), "action": "add"}}, other)
    with pytest.raises(ValueError, match="not a decoder layer"):
        read_lmeval(other, "llama")
    clamp = tmp_path / "clamp.pt"
    torch.save({"layers.3": {"steering_vector": torch.ones(4), "action": "clamp"}}, clamp)
    with pytest.raises(ValueError, match="'add'"):
        read_lmeval(clamp, "llama")


def test_gguf_control_vector_round_trips(tmp_path: Path, vectors) -> None:
    path = write_gguf(tmp_path / "v.gguf", vectors, "llama")
    back, hint = read_gguf(path)
    assert hint == "llama" and set(back) == {2, 4}
    for k, v in vectors.items():
        np.testing.assert_array_equal(back[k], v.numpy())
    import gguf

    names = sorted(t.name for t in gguf.GGUFReader(str(path)).tensors)
    assert names == ["direction.1", "direction.3"]  # repeng / llama.cpp: the 0-based decoder layer
    with pytest.raises(ValueError, match="direction.0"):
        write_gguf(tmp_path / "first.gguf", {1: vectors[2]}, "llama")


def test_gguf_reader_refuses_a_model_file(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="controlvector"):
        read_gguf(path)


def test_cli_exports_the_vectors_of_a_steering_folder(saved_model: Path, tmp_path: Path, capsys) -> None:
    lm = load_model(str(saved_model))
    ds = toy_dataset()
    run_steering(lm, ds, tmp_path / "s", ["de", "zh"], [2, 3], [1.0], n_vectors=3)
    sv = SteeringVectors.load(tmp_path / "s" / VECTORS_FILE)
    out = tmp_path / "de.pt"
    args = [
        "export-vectors",
        str(tmp_path / "s"),
        "--format",
        "lm-eval",
        "--language",
        "de",
        "--out",
        str(out),
    ]
    assert main([*args, "--coefficient", "2"]) == 0
    back, coefficients = read_lmeval(out, lm.anatomy.model_type)
    assert set(back) == {2, 3} and coefficients == {2: 2.0, 3: 2.0}
    assert all(torch.equal(back[k], sv.get("de", k)) for k in back)
    g = tmp_path / "de.gguf"
    assert (
        main(["export-vectors", str(tmp_path / "s"), "--format", "gguf", "--language", "zh", "--out", str(g)])
        == 0
    )
    assert np.array_equal(read_gguf(g)[0][3], sv.get("zh", 3).numpy())
    capsys.readouterr()
    assert main([*args[:-2], "--out", str(tmp_path / "x.pt"), "--layers", "7"]) == 2
    assert "--layers" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
    assert (
        main(["export-vectors", str(tmp_path / "s"), "--format", "onnx", "--language", "de", "--out", "y"])
        == 2
    )
    capsys.readouterr()
    pivot = tmp_path / "en.pt"  # v(en -> en) is the zero vector: nothing to steer with
    assert main([*args[:4], "--language", "en", "--out", str(pivot)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--language: 'en' is the pivot" in err and "de, zh" in err
    assert not pivot.exists()


def test_lmeval_steered_model_equals_crosslens_steering_at_all_positions(
    saved_model: Path, tmp_path: Path
) -> None:
    """lm-evaluation-harness's own steered model, loading crosslens' file, gives crosslens' logits."""
    from lm_eval.models import hf_steered as steered_model  # the dev extra installs lm-eval

    lm = load_model(str(saved_model))
    g = torch.Generator().manual_seed(1)
    v = torch.randn(lm.anatomy.d_model, generator=g)
    path = write_lmeval(tmp_path / "v.pt", {2: v}, lm.anatomy.model_type, coefficient=3.0)
    model = steered_model.SteeredModel(
        pretrained=str(saved_model), steer_path=str(path), device="cpu", batch_size=1, dtype="float32"
    )
    prompt = "Question: What is the capital of France?\nA. Berlin\nB. Paris\nAnswer:"
    ids = lm.tokenizer(prompt).input_ids
    labels = [lm.tokenizer(" A", add_special_tokens=False).input_ids[-1], lm.tokenizer(" B").input_ids[-1]]
    with torch.no_grad():
        logits = model._model_call(torch.tensor([ids]))
    theirs = torch.log_softmax(logits[0, -1].float(), dim=-1)[labels].numpy()
    with add_at_positions(lm.anatomy, 2, 3.0 * v, None):
        ((ours, _),) = full_scores(lm, [ids], [labels], None, EvalOptions(batch_size=1))
    ((plain, _),) = full_scores(lm, [ids], [labels], None, EvalOptions(batch_size=1))
    assert not np.allclose(plain, theirs, atol=1e-3)  # the steering matters
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
