"""Predict functions over a model's variables (params + any model state) for evaluators:
embeddings (dual encoders) and generated texts (encoder-decoders, language models), run on
fixed-size sharded batches (the last one padded), results replicated back to every process as
numpy."""

from __future__ import annotations

import jax
import numpy as np

from vlpjax.decode import DecodeConfig
from vlpjax.sharding import batch_sharding, replicated
from vlpjax.train.generation import generate


class Predictor:
    def __init__(
        self, model, mesh, tokenizer, text_length: int, batch_size: int, add_bos: bool = False
    ):
        self.mesh = mesh
        self.add_bos = add_bos  # text rows as training saw them (data.add_bos)
        self.tokenizer = tokenizer
        self.text_length = text_length
        self.batch_size = batch_size
        self.model = model
        self._generators = {}  # (decode config, inputs) -> jitted generation
        out = replicated(mesh)
        self._embed_image = jax.jit(
            lambda v, x: model.apply(v, image=x)[1]["img/embed"], out_shardings=out
        )
        self._embed_text = jax.jit(
            lambda v, t: model.apply(v, text=t)[1]["txt/embed"], out_shardings=out
        )
        # Fusion models: image tokens once, then the ITM head on (image, text) pairs.
        self._image_tokens = jax.jit(
            lambda v, x: model.apply(v, x, method="image_tokens"), out_shardings=out
        )
        self._itm_scores = jax.jit(
            lambda v, tokens, t: model.apply(v, tokens, t, method="itm_scores"),
            out_shardings=out,
        )

    def _batched(self, fn, variables, *arrays: np.ndarray):
        """fn(variables, *chunks) over fixed-size chunks of the arrays' rows (the last padded);
        fn returns an array or a tuple of arrays, concatenated over the chunks."""
        outputs = []
        for start in range(0, len(arrays[0]), self.batch_size):
            chunks = [a[start : start + self.batch_size] for a in arrays]
            n = len(chunks[0])
            placed = []
            for chunk in chunks:
                if n < self.batch_size:
                    pad = np.zeros((self.batch_size - n, *chunk.shape[1:]), chunk.dtype)
                    chunk = np.concatenate([chunk, pad])
                # Every process holds the whole chunk; each device takes its rows.
                sharding = batch_sharding(self.mesh, chunk.ndim)
                placed.append(
                    jax.make_array_from_callback(chunk.shape, sharding, lambda i, c=chunk: c[i])
                )
            result = fn(variables, *placed)
            outputs.append(jax.tree.map(lambda x, n=n: np.asarray(x)[:n], result))
        return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)

    def generate(
        self,
        variables,
        images: np.ndarray | None,
        sources: list[str] | None,
        config: DecodeConfig | dict,
        source_length: int | None = None,
        seed: int = 0,
    ) -> list[str]:
        """Texts generated for `images` (float32[N, S, S, 3]) and/or `sources` (N encoder
        prefixes: prompts, questions, instructions; None = empty) with `config` (a
        DecodeConfig or its fields as a dict). Sampling draws from `seed`, folded with each
        chunk's first row so chunks differ."""
        if isinstance(config, dict):
            config = DecodeConfig(**config)
        key = (config, images is not None, sources is not None)
        if key not in self._generators:
            use_image, use_source = images is not None, sources is not None

            def run(v, seed, *arrays):
                inputs = {}
                if use_image:
                    inputs["image"] = arrays[0]
                if use_source:
                    inputs["source"] = arrays[1 if use_image else 0]
                rng = jax.random.fold_in(jax.random.key(seed[0]), arrays[-1][0])
                return generate(
                    self.model,
                    v,
                    inputs,
                    config,
                    start_id=self.tokenizer.bos_id,
                    eos_id=self.tokenizer.eos_id,
                    pad_id=self.tokenizer.pad_id,
                    rng=rng if config.strategy == "sample" else None,
                )[0]

            self._generators[key] = jax.jit(run, out_shardings=replicated(self.mesh))
        arrays = [] if images is None else [images]
        if sources is not None:
            length = source_length or self.text_length
            arrays.append(self.tokenizer.encode(sources, length, add_eos=False))
        rows = np.arange(len(arrays[0]), dtype=np.int32)
        seeds = np.full(len(rows), seed, np.int32)
        tokens = self._batched(self._generators[key], variables, seeds, *arrays, rows)
        return self.tokenizer.decode(tokens)

    def embed_images(self, variables, images: np.ndarray) -> np.ndarray:
        """float32[N, S, S, 3] -> float32[N, E] normalised."""
        return self._batched(self._embed_image, variables, images)

    def embed_texts(self, variables, texts: list[str]) -> np.ndarray:
        """N strings -> float32[N, E] normalised."""
        return self._batched(self._embed_text, variables, self.tokenize(texts))

    def tokenize(self, texts: list[str]) -> np.ndarray:
        return self.tokenizer.encode(texts, self.text_length, add_bos=self.add_bos)

    def image_tokens(self, variables, images: np.ndarray) -> np.ndarray:
        """float32[N, S, S, 3] -> the image encoder's tokens float32[N, P, D] (fusion models)."""
        return self._batched(self._image_tokens, variables, images)

    def itm_scores(self, variables, image_tokens: np.ndarray, text_ids: np.ndarray) -> np.ndarray:
        """Match probabilities float32[N] of the pairs (image_tokens[r], text_ids[r])."""
        return self._batched(self._itm_scores, variables, image_tokens, text_ids)
