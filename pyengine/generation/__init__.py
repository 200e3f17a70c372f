"""Text generation with transformers' semantics: greedy search, sampling
(temperature, top-k, top-p, seeded) and beam search (length_penalty,
early_stopping True / False / "never", num_return_sequences), the n-gram ban,
max_length / max_new_tokens, EOS and the padding of finished rows, batched
prompts of different lengths (left padding and an attention_mask), for
decoder-only and encoder-decoder models.

The protocol a model implements for ``generate(model, input_ids, ...)``:

- ``model.generation_config``: a dict with ``eos_token_id`` (int, list or
  None), ``pad_token_id``, ``bos_token_id``, ``decoder_start_token_id``
  (encoder-decoder only), ``is_encoder_decoder`` (bool), ``vocab_size``, and
  optionally ``max_length`` (the default when neither max_length nor
  max_new_tokens is given) and ``max_position_embeddings`` (else the default
  is 20 new tokens, at most max_position_embeddings in all, as transformers).
- optionally ``model.generation_defaults``: the settings of the folder's
  generation_config.json (``num_beams``, ``max_length``, ...), the defaults
  of the arguments left at None (pyengine.generation.config).
- ``model.new_cache(batch, capacity)``: a cache with ``.length`` (positions
  held) and ``.reorder(index)`` (index int64 (B',): rows selected or
  duplicated, for beam search and num_return_sequences).
- decoder-only: ``model.decode_step(ids (B, t) int64, cache, attention_mask)``
  -> float32 numpy logits (B, V) of the last position, the t positions
  appended to the cache; attention_mask is None (no padding) or the 0/1
  int64 mask (B, cache.length + t) of every position so far (the model
  counts positions over the real tokens, as transformers' generate does).
- encoder-decoder: ``model.encode(input_ids, attention_mask)`` -> encoder
  hidden states (B, S, d) float32 numpy; ``model.decode_step(decoder_ids,
  cache, None, encoder_hidden=..., encoder_attention_mask=...)`` -> logits
  (B, V); the cache keeps the cross-attention keys and values computed at its
  first step (``reorder`` reorders them too). The encoder rows and their mask
  are passed once per prompt (B' = B / expand rows): the cache's B rows are
  num_beams or num_return_sequences consecutive copies of each prompt, which
  share their prompt's cross-attention keys and values.

A decoder-only prompt is run once for the B prompts (the prefill), and the
cache is then duplicated for the beams (``reorder``); with no padding the
mask is passed as None. Sampling draws from numpy's PCG64 seeded with
``seed``: reproducible for a seed, not the token stream of torch.multinomial.
"""

from pyengine.generation.logits import ban_repeated_ngrams, top_k_filter, top_p_filter
from pyengine.generation.loop import generate

__all__ = ["generate", "ban_repeated_ngrams", "top_k_filter", "top_p_filter"]
