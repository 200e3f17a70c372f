"""Random-weight Hugging Face T5s the T5 tests share: built with transformers, written with
save_pretrained into a folder, read back by transformers (and by pyengine in the tests)."""

from __future__ import annotations

import numpy as np
import pytest

from pyengine.models import pretrained

CONFIGS = {
    "relu-tied": dict(vocab_size=61, d_model=20, d_kv=6, d_ff=28, num_layers=2, num_decoder_layers=3, num_heads=3,
                      feed_forward_proj="relu", relative_attention_num_buckets=8,
                      relative_attention_max_distance=20),
    "gated-untied": dict(vocab_size=53, d_model=24, d_kv=4, d_ff=36, num_layers=3, num_decoder_layers=1, num_heads=5,
                         feed_forward_proj="gated-gelu", relative_attention_num_buckets=12,
                         relative_attention_max_distance=30, untied=True),
    "gated-tied-one-head": dict(vocab_size=47, d_model=16, d_kv=16, d_ff=40, num_layers=1, num_decoder_layers=2,
                                num_heads=1, feed_forward_proj="gated-gelu"),
    "relu-square": dict(vocab_size=71, d_model=28, d_kv=8, d_ff=44, num_layers=2, num_heads=3,
                        relative_attention_num_buckets=16, relative_attention_max_distance=24),
    "exact-gelu": dict(vocab_size=39, d_model=12, d_kv=4, d_ff=20, num_layers=2, num_decoder_layers=2, num_heads=2,
                       feed_forward_proj="gelu"),
}
# transformers 5's generate sizes its cache by num_layers, so it fails on a decoder deeper than the
# encoder (IndexError in the cache's update): generation is compared on the others.
# (config, seed): seeds whose random models do not repeat one token from the start (a tied ReLU one often does).
GENERATION_CONFIGS = {"gated-untied": 7, "relu-square": 3}


def relative_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def write_t5(folder, name: str, seed: int = 0, **options):
    """A random-weight transformers T5 of CONFIGS[name] saved in `folder`; the transformers model
    read back from that folder (an untied head: an lm_head.weight of its own written beside)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    spec = dict(CONFIGS[name], **options)
    untied = spec.pop("untied", False)
    torch.manual_seed(seed)
    config = transformers.T5Config(**spec, dropout_rate=0.0, decoder_start_token_id=0)
    transformers.T5ForConditionalGeneration(config).save_pretrained(folder)
    if untied:  # transformers 5 ties T5's head when it builds one; a checkpoint of its own unties it
        hf_config, tensors = pretrained.read_folder(folder)
        tensors = {k: np.array(v) for k, v in tensors.items()}
        tensors["lm_head.weight"] = np.random.default_rng(seed).standard_normal(
            tensors["shared.weight"].shape).astype(np.float32)
        hf_config["tie_word_embeddings"] = False
        hf_config.pop("scale_decoder_outputs", None)
        pretrained.write_folder(folder, hf_config, tensors)
    reference = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
    assert (reference.lm_head.weight is reference.shared.weight) != untied
    return reference


def padded_batch(vocab: int, seed: int = 1):
    """Encoder ids (3, 11) with right and left padding, decoder ids (3, 8) with right padding."""
    rng = np.random.default_rng(seed)
    ids, decoder_ids = rng.integers(2, vocab, (3, 11)), rng.integers(2, vocab, (3, 8))
    mask, decoder_mask = np.ones((3, 11), np.int64), np.ones((3, 8), np.int64)
    mask[1, 7:] = 0
    mask[2, :3] = 0
    decoder_mask[0, 5:] = 0
    return ids, mask, decoder_ids, decoder_mask


def pyengine_t5(folder, name: str, seed: int = 0):
    """pyengine's model of a folder that write_t5 wrote."""
    write_t5(folder, name, seed=seed)
    return pretrained.from_pretrained(folder)
