"""`python -m vlpjax.bench decode [--config=configs/simvlm.py] [--batch=8] [--lengths=8,16,32]`

Greedy decoding of a config's encoder-decoder with random weights, KV-cached vs uncached (the
whole prefix re-run at every step, vlpjax.train.generation), from the same encoder output
(encoding, shared by both, is timed on its own): tokens/s at each length, the
per-step time of the cached step at each position, and how many times each jitted function
compiled after repeated calls with the same shapes. EOS is set to an id the model cannot emit,
so every row decodes exactly `length` tokens. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _timed(fn, *args, repeats: int):
    """Median seconds of `fn(*args)` after one warm-up call (which compiles)."""
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def run(config_path: str, batch: int, lengths: list[int], repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from vlpjax.decode import DecodeConfig
    from vlpjax.models import build_model
    from vlpjax.train.generation import cached_decoding, decode_encoded
    from vlpjax.utils.config import load_config

    config = load_config(config_path)
    with config.unlocked():  # room for the longest decode (the weights are random anyway)
        config.model.max_target_length = max(config.model.max_target_length, max(lengths))
    model = build_model(config.model)
    size = config.model.get("image_size", 0)
    rng = np.random.default_rng(0)
    inputs = {"source": jnp.asarray(rng.integers(5, 200, (batch, 8)), jnp.int32)}
    if size:
        inputs["image"] = jnp.asarray(rng.normal(size=(batch, size, size, 3)), jnp.float32)
    target = jnp.zeros((batch, 4), jnp.int32)
    variables = model.init(jax.random.key(0), **inputs, target=target)
    never = int(config.model.vocab_size)  # an EOS id no logit can pick

    results = {"lengths": {}, "compiles": {}}
    # Encoding happens once per input for both ways of decoding: timed on its own.
    encode = jax.jit(lambda v, i: model.apply(v, **i, method="encode"))
    results["encode_seconds"] = _timed(encode, variables, inputs, repeats=repeats)
    encoded, valid = encode(variables, inputs)
    for length in lengths:
        row = {}
        for cached in (True, False):
            cfg = DecodeConfig("greedy", max_length=length)
            fn = jax.jit(
                lambda v, e, m, c=cfg, k=cached: decode_encoded(
                    model, v, e, m, batch, c, start_id=2, eos_id=never, cached=k
                )
            )
            seconds = _timed(fn, variables, encoded, valid, repeats=repeats)
            row["cached" if cached else "uncached"] = {
                "seconds": seconds,
                "tokens_per_sec": batch * length / seconds,
            }
            results["compiles"][f"decode_{'cached' if cached else 'uncached'}_{length}"] = (
                fn._cache_size()
            )
        row["speedup"] = row["cached"]["tokens_per_sec"] / row["uncached"]["tokens_per_sec"]
        results["lengths"][length] = row

    # Per-step time of the cached step by position: one jitted step, called in sequence.
    longest = max(lengths)
    step_fn, state, _ = cached_decoding(model, variables, encoded, valid, batch, longest)
    step = jax.jit(step_fn)
    tokens = jnp.full((batch,), 2, jnp.int32)
    per_position = np.zeros((repeats, longest))
    for r in range(repeats + 1):  # the first pass compiles
        s = state
        for position in range(longest):
            start = time.perf_counter()
            logits, s = step(tokens, s)
            jax.block_until_ready(logits)
            if r:
                per_position[r - 1, position] = time.perf_counter() - start
    median = np.median(per_position, axis=0)
    results["step_ms_by_position"] = {p + 1: float(median[p] * 1e3) for p in range(longest)}
    results["step_ratio_last_to_first"] = float(median[-1] / median[0])
    results["compiles"]["cached_step"] = step._cache_size()
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlpjax.bench decode")
    parser.add_argument("--config", default="configs/simvlm.py")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lengths", default="8,16,32")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    import jax

    lengths = [int(x) for x in args.lengths.split(",")]
    results = run(args.config, args.batch, lengths, args.repeats)
    device = jax.devices()[0].device_kind
    print(f"greedy decoding, {args.config}, batch {args.batch}, {device}")
    print(f"{'length':>8}{'cached tok/s':>15}{'uncached tok/s':>17}{'speedup':>10}")
    for length, row in results["lengths"].items():
        print(
            f"{length:>8}{row['cached']['tokens_per_sec']:>15.0f}"
            f"{row['uncached']['tokens_per_sec']:>17.0f}{row['speedup']:>9.1f}x"
        )
    steps = results["step_ms_by_position"]
    shown = [p for p in (1, 2, 4, 8, 16, 32, 64) if p in steps]
    print("cached step (ms) by position: " + ", ".join(f"{p}: {steps[p]:.2f}" for p in shown))
    print(
        f"step time at position {max(steps)} / position 1: {results['step_ratio_last_to_first']:.2f}"
    )
    print(f"encoding the batch (once, for either): {results['encode_seconds'] * 1e3:.1f} ms")
    print("compilations after repeated calls: " + json.dumps(results["compiles"]))
    print(json.dumps({"benchmark": "decode", "device": device, "batch": args.batch, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
