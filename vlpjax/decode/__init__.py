"""Decoding: greedy, sampling (temperature, top-k, nucleus) and beam search over a step
function, each inside one jitted `lax.while_loop`."""

from vlpjax.decode.search import STRATEGIES, DecodeConfig, decode, filter_logits, gather_rows

__all__ = ["STRATEGIES", "DecodeConfig", "decode", "filter_logits", "gather_rows"]
