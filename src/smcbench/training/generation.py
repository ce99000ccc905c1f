"""Beam search for encoder-decoder models, with the outputs of `transformers`' `generate(num_beams=K,
early_stopping=True)` and less work.

The search is Hugging Face's vectorised one, step for step and in the same floating-point operations: 2K candidates
a step from the accumulated log-probabilities, candidates that end (EOS or the length limit) scored by
sum / length^length_penalty into a sentence's K finished hypotheses, the forced EOS at the last position, the same
early-stop test. Four things are not done, none of which changes an output:
- a sentence whose finished hypotheses can no longer change (all K finished, or no running beam can beat the worst
  of them) leaves the batch, with its rows of the key/value caches: `generate` keeps decoding it, every step, until
  the whole batch is done;
- the cross-attention cache is not reordered when beams swap: its rows for one sentence's beams are equal (the
  encoder states are repeated per beam), so reordering them within the sentence copies equal values;
- the self-attention cache is not copied twice a step (reordered for the beams, then concatenated with the new
  token's keys and values): the row selections (beam swaps, sentences leaving) wait for the next step's update,
  which writes the selected rows and the new token into the new cache in one pass (`_cache_layers`); the
  attention reads the same values in the same layout;
- no logits processors, stopping criteria or output bookkeeping beyond what this search uses.
Models whose generation config asks for more (no-repeat n-grams, a minimum length, a repetition penalty, ...) are
not supported: `supported()` says so and the caller uses `generate`.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import Tensor, nn

from smcbench.training.heads import padded_head

# Generation settings this search implements; any other set to a non-default value sends the caller to `generate`.
_NEUTRAL = {"no_repeat_ngram_size": (None, 0), "encoder_no_repeat_ngram_size": (None, 0),
            "repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0), "min_length": (None, 0),
            "min_new_tokens": (None, 0), "bad_words_ids": (None,), "forced_bos_token_id": (None,),
            "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "sequence_bias": (None,),
            "exponential_decay_length_penalty": (None,), "renormalize_logits": (None, False),
            "num_beam_groups": (None, 1), "diversity_penalty": (None, 0.0), "do_sample": (None, False),
            "num_return_sequences": (None, 1), "constraints": (None,), "force_words_ids": (None,)}
_HUGE = -1.0e9  # the search's "impossible" score offset, as generate's


def supported(model: nn.Module) -> bool:
    """Is this an encoder-decoder model whose generation config asks for nothing beyond plain beam search?"""
    config = getattr(model, "generation_config", None)
    if config is None or not getattr(model.config, "is_encoder_decoder", False) or config.eos_token_id is None:
        return False
    if isinstance(config.eos_token_id, list) and len(config.eos_token_id) != 1:
        return False
    return all(getattr(config, key, None) in allowed for key, allowed in _NEUTRAL.items())


def _eos(model: nn.Module) -> int:
    eos = model.generation_config.eos_token_id
    return int(eos[0] if isinstance(eos, list) else eos)


@functools.cache
def _cache_layers() -> tuple[type, type] | None:
    """Cache layers for the search, made from transformers' `DynamicLayer` (None where this transformers has none):
    the self-attention's (`SelectOnUpdate`) and the cross-attention's (`SelectNow`). Made on first use, so that
    importing this module does not import transformers."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return None

    class SelectOnUpdate(DynamicLayer):
        """A self-attention cache whose row selections wait for the next update. Keys after a reorder by `a`,
        then a selection of `b`, are `keys[a][b]` = `keys[a[b]]`: the indices compose, and the update writes
        `keys[rows]` and the new token's keys into the new cache at once; `DynamicLayer` copies the cache for
        each selection and again to concatenate (two thirds of a decoding step's copying on mbart-tiny)."""

        rows: Tensor | None = None

        def reorder_cache(self, beam_idx: Tensor) -> None:
            self._select(beam_idx)

        def batch_select_indices(self, indices: Tensor) -> None:
            self._select(indices)

        def _select(self, rows: Tensor) -> None:
            if self.get_seq_length() > 0:
                rows = rows.to(self.keys.device)
                self.rows = rows if self.rows is None else self.rows[rows]

        def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any
                   ) -> tuple[Tensor, Tensor]:
            if self.rows is None:
                return super().update(key_states, value_states, *args, **kwargs)
            self.keys = _select_then_append(self.keys, self.rows, key_states)
            self.values = _select_then_append(self.values, self.rows, value_states)
            self.rows = None
            return self.keys, self.values

    class SelectNow(DynamicLayer):
        """A cross-attention cache whose row selection (sentences leaving) is `index_select`: the same rows as
        `DynamicLayer`'s advanced indexing, a quarter of its time on these shapes."""

        def batch_select_indices(self, indices: Tensor) -> None:
            if self.get_seq_length() > 0:
                self.keys = self.keys.index_select(0, indices.to(self.keys.device))
                self.values = self.values.index_select(0, indices.to(self.values.device))

    return SelectOnUpdate, SelectNow


def _select_then_append(cache: Tensor, rows: Tensor, new: Tensor) -> Tensor:
    """`torch.cat([cache.index_select(0, rows), new], dim=-2)`, written once: no intermediate selected copy."""
    out = cache.new_empty(rows.numel(), *cache.shape[1:-2], cache.shape[-2] + new.shape[-2], cache.shape[-1])
    torch.index_select(cache, 0, rows, out=out[..., : cache.shape[-2], :])
    out[..., cache.shape[-2]:, :] = new
    return out


def _search_cache(cache: Any) -> None:
    """Give the model's fresh encoder-decoder cache the search's layers (`_cache_layers`), where it is made of
    transformers' plain `DynamicLayer`s; any other cache is left as it is (and searched all the same)."""
    layers = _cache_layers()
    if layers is None:
        return
    from transformers.cache_utils import DynamicLayer

    for part, kind in (("self_attention_cache", layers[0]), ("cross_attention_cache", layers[1])):
        for layer in getattr(getattr(cache, part, None), "layers", ()):
            if type(layer) is DynamicLayer:
                layer.__class__ = kind  # adds behaviour, no state: the layer's tensors stay as they are


@torch.no_grad()
def beam_search(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, decoder_start_token_id: int,
                num_beams: int, max_new_tokens: int) -> list[list[int]]:
    """The best finished hypothesis of each source sentence (token ids after the start token, through its EOS),
    as `model.generate(input_ids, attention_mask=..., decoder_start_token_id=..., num_beams=num_beams,
    max_new_tokens=max_new_tokens, early_stopping=True)` returns them (padding aside). An output projection of odd
    width is computed padded (`heads.padded_head`) when its logits equal the plain ones on a probe of as many rows
    as the first step has."""
    with padded_head(model, input_ids.shape[0] * num_beams):
        return _beam_search(model, input_ids, attention_mask, decoder_start_token_id, num_beams, max_new_tokens)


def _beam_search(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, decoder_start_token_id: int,
                 num_beams: int, max_new_tokens: int) -> list[list[int]]:
    config = model.generation_config
    eos, pad = _eos(model), config.pad_token_id
    length_penalty = 1.0 if config.length_penalty is None else float(config.length_penalty)
    forced_eos = config.forced_eos_token_id
    k, device = num_beams, input_ids.device
    batch = input_ids.shape[0]
    max_length = 1 + max_new_tokens  # the decoder prompt (the start token) counts, as in generate
    candidates = 2 * k
    top_k = torch.arange(candidates, device=device) < k

    encoder = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
    hidden = encoder.last_hidden_state.repeat_interleave(k, dim=0)
    mask = attention_mask.repeat_interleave(k, dim=0)

    # Per live sentence (rows of these tensors), as generate's search state.
    running = torch.full((batch, k, max_length), pad, dtype=torch.long, device=device)
    running[:, :, 0] = decoder_start_token_id
    finished = running.clone()
    running_scores = torch.zeros(batch, k, device=device)
    running_scores[:, 1:] = _HUGE
    finished_scores = torch.full((batch, k), _HUGE, device=device)
    is_finished = torch.zeros(batch, k, dtype=torch.bool, device=device)
    open_heuristic = torch.ones(batch, 1, dtype=torch.bool, device=device)
    live = torch.arange(batch, device=device)  # the original sentence of each live row
    results: list[list[int] | None] = [None] * batch

    # transformers 5 names the key/value cache `cache`; 4.x `past_key_values`.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache: Any = None
    tokens = running[:, :, 0].reshape(-1, 1)
    cur_len = 1
    while True:
        out = model(attention_mask=mask, encoder_outputs=(hidden,), decoder_input_ids=tokens, use_cache=True,
                    return_dict=True, **{cache_arg: cache})
        if cache is None:
            _search_cache(getattr(out, cache_arg))
        cache = getattr(out, cache_arg)
        n = live.numel()
        log_probs = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
        del out
        if forced_eos is not None and cur_len == max_length - 1:
            log_probs = torch.full_like(log_probs, -torch.inf)
            log_probs[:, forced_eos] = 0
        vocab = log_probs.shape[-1]
        log_probs = log_probs.view(n, k, vocab) + running_scores[:, :, None]
        top_scores, top_index = torch.topk(log_probs.view(n, k * vocab), candidates)
        from_beam = top_index // vocab
        top_sequences = torch.take_along_dim(running, from_beam[:, :, None], dim=1)
        top_sequences[:, :, cur_len] = top_index % vocab
        ends = (top_sequences[:, :, cur_len] == eos) | (cur_len + 1 >= max_length)

        # The K best candidates that did not end run on.
        running_candidates = top_scores + ends.to(torch.float32) * _HUGE
        keep = torch.topk(running_candidates, k)[1]
        running = torch.take_along_dim(top_sequences, keep[:, :, None], dim=1)
        running_scores = torch.take_along_dim(running_candidates, keep, dim=1)
        beam_index = torch.take_along_dim(from_beam, keep, dim=1)

        # Candidates that ended among the top K join the finished hypotheses, if they beat them.
        just_ended = ends & top_k[None, :]
        scores = top_scores / (cur_len**length_penalty)  # generated length: cur_len + 1 minus the start token
        scores += torch.all(is_finished, dim=-1, keepdim=True).to(torch.float32) * _HUGE
        scores += (~open_heuristic).to(torch.float32) * _HUGE
        scores += (~just_ended) * _HUGE
        merged_scores = torch.cat((finished_scores, scores), dim=1)
        best = torch.topk(merged_scores, k)[1]
        finished = torch.take_along_dim(torch.cat((finished, top_sequences), dim=1), best[:, :, None], dim=1)
        finished_scores = torch.take_along_dim(merged_scores, best, dim=1)
        is_finished = torch.take_along_dim(torch.cat((is_finished, just_ended), dim=1), best, dim=1)

        cur_len += 1
        # generate's early-stop heuristic (early_stopping=True: the best running score at the current length)
        best_running = running_scores[:, :1] / ((cur_len - 1) ** length_penalty)
        worst_finished = torch.where(is_finished, torch.min(finished_scores, dim=1, keepdim=True)[0], _HUGE)
        open_heuristic = open_heuristic & torch.any(best_running > worst_finished, dim=-1, keepdim=True)

        # (All 2K candidates of a sentence end only at the length limit: at most K of them can be EOS.)
        frozen = torch.all(is_finished, dim=-1) | ~open_heuristic[:, 0]
        if cur_len >= max_length:
            frozen = torch.ones_like(frozen)
        for row in frozen.nonzero().flatten().tolist():
            results[int(live[row])] = _tokens(finished[row, 0], eos)
        if bool(frozen.all()):
            break
        # Swap beams in the self-attention cache (rows stay within a sentence), then drop frozen sentences.
        rows = (beam_index + torch.arange(n, device=device)[:, None] * k).reshape(-1)
        cache.self_attention_cache.reorder_cache(rows)
        if bool(frozen.any()):
            stay = (~frozen).nonzero().flatten()
            flat = (stay[:, None] * k + torch.arange(k, device=device)).reshape(-1)
            cache.batch_select_indices(flat)
            hidden, mask = hidden.index_select(0, flat), mask.index_select(0, flat)
            running, running_scores, finished = running[stay], running_scores[stay], finished[stay]
            finished_scores, is_finished = finished_scores[stay], is_finished[stay]
            open_heuristic = open_heuristic[stay]
            live = live[stay]
        tokens = running[:, :, cur_len - 1].reshape(-1, 1)
    return [r if r is not None else [] for r in results]


def _tokens(sequence: Tensor, eos: int) -> list[int]:
    """The generated tokens of a finished hypothesis: after the start token, through the first EOS."""
    out = []
    for t in sequence[1:].tolist():
        out.append(t)
        if t == eos:
            break
    return out
