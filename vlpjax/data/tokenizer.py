"""Sentencepiece tokenizer: batched encode to fixed-length int32 ids, decode back to text.

The default model (``assets/vlp_shapes.model``) is trained on vlp_shapes text by
``python -m vlpjax.data.vlp_shapes --train-tokenizer``. Any sentencepiece model works; the special
ids (pad 0, unk 1, bos 2, eos 3) are read from the model itself.

Location tokens (OFA's unified vocabulary, Wang et al. 2022): with ``location_bins=N > 0`` the ids
``sp_vocab + i`` (i in 0..N-1) follow the sentencepiece pieces and are written ``<loc_i>`` in text.
A box is four of them, ``<loc_x1> <loc_y1> <loc_x2> <loc_y2>``, each coordinate in [0, 1]
quantised to ``round(c * (N - 1))`` (`box_to_tokens`, `tokens_to_box`). Location tokens are words
of their own: `decode` writes single spaces around them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
import sentencepiece as spm

DEFAULT_TOKENIZER = os.path.join(os.path.dirname(__file__), "assets", "vlp_shapes.model")

LOCATION = re.compile(r"<loc_(\d+)>")


def box_to_tokens(box_xyxy, bins: int) -> str:
    """(x1, y1, x2, y2) in [0, 1] -> "<loc_a> <loc_b> <loc_c> <loc_d>" (round(c * (bins - 1)))."""
    if bins < 2:
        raise ValueError(f"box_to_tokens needs at least 2 location bins, got {bins}")
    box = np.clip(np.asarray(box_xyxy, np.float64).reshape(4), 0.0, 1.0)
    return " ".join(f"<loc_{int(i)}>" for i in np.round(box * (bins - 1)))


def tokens_to_box(text: str, bins: int) -> np.ndarray | None:
    """The first four `<loc_i>` of `text` as float64[4] (x1, y1, x2, y2) in [0, 1]; None when
    there are fewer than four or one of them is not below `bins`."""
    found = [int(m) for m in LOCATION.findall(text)[:4]]
    if bins < 2 or len(found) < 4 or max(found) >= bins:
        return None
    return np.asarray(found, np.float64) / (bins - 1)


class Tokenizer:
    """A sentencepiece model with the padding and eos conventions the pipeline uses, plus
    `location_bins` location tokens after its pieces (0 = none: plain sentencepiece)."""

    def __init__(self, path: str = DEFAULT_TOKENIZER, location_bins: int = 0):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"sentencepiece model not found: {path}")
        if location_bins < 0 or location_bins == 1:
            raise ValueError(f"location_bins must be 0 or >= 2, got {location_bins}")
        self.path = path
        self.location_bins = int(location_bins)
        self._sp = spm.SentencePieceProcessor(model_file=path)
        self._sp_size = self._sp.get_piece_size()
        # Extra control/user symbols, when the model has them (the default one does).
        self._mask_id = self._sp.piece_to_id("<mask>")

    @property
    def vocab_size(self) -> int:
        """Sentencepiece pieces plus location tokens."""
        return self._sp_size + self.location_bins

    @property
    def location_offset(self) -> int:
        """The id of `<loc_0>` (the sentencepiece vocabulary size)."""
        return self._sp_size

    def is_location(self, i: int) -> bool:
        return self._sp_size <= int(i) < self._sp_size + self.location_bins

    @property
    def pad_id(self) -> int:
        return self._sp.pad_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def mask_id(self) -> int:
        """Id of ``<mask>`` for masked-token objectives; ``unk_id`` if the model lacks it."""
        return self._mask_id

    def piece_to_id(self, piece: str) -> int:
        match = LOCATION.fullmatch(piece)
        if match and self.location_bins and int(match[1]) < self.location_bins:
            return self._sp_size + int(match[1])
        return self._sp.piece_to_id(piece)

    def id_to_piece(self, i: int) -> str:
        if self.is_location(i):
            return f"<loc_{int(i) - self._sp_size}>"
        return self._sp.id_to_piece(int(i))

    def _encode_ids(self, texts: list[str]) -> list[list[int]]:
        """Unpadded ids per text: sentencepiece, with `<loc_i>` markers as location ids."""
        if not self.location_bins or not any("<loc_" in t for t in texts):
            return self._sp.encode(texts)
        # Split every text into text runs and location ids; encode all runs in one call.
        layouts, runs = [], []
        for text in texts:
            layout, start = [], 0
            for match in LOCATION.finditer(text):
                i = int(match[1])
                if i >= self.location_bins:
                    raise ValueError(
                        f"{match[0]} is outside the {self.location_bins} location bins: {text!r}"
                    )
                layout.append(len(runs))
                runs.append(text[start : match.start()])
                layout.append(-1 - i)  # a location id, kept apart from run indices
                start = match.end()
            layout.append(len(runs))
            runs.append(text[start:])
            layouts.append(layout)
        encoded = self._sp.encode(runs)
        out = []
        for layout in layouts:
            ids = []
            for item in layout:
                ids.extend(encoded[item] if item >= 0 else [self._sp_size - 1 - item])
            out.append(ids)
        return out

    def encode(
        self, texts: Sequence[str], max_len: int, add_bos: bool = False, add_eos: bool = True
    ) -> np.ndarray:
        """int32[B, max_len] ids, right-padded with `pad_id`.

        Long texts are truncated before the eos, so with `add_eos` every row's last non-pad
        token is eos; bos, when asked for, is always first. With location bins, `<loc_i>` in the
        text is the location id `sp_vocab + i` and the text around it is sentencepiece's.
        """
        if isinstance(texts, str):
            raise TypeError("Tokenizer.encode takes a list of strings, got one str")
        n_special = int(add_bos) + int(add_eos)
        if max_len < max(n_special, 1):
            raise ValueError(f"max_len={max_len} leaves no room (bos={add_bos}, eos={add_eos})")
        out = np.full((len(texts), max_len), self.pad_id, dtype=np.int32)
        budget = max_len - n_special
        for row, ids in enumerate(self._encode_ids(list(texts))):
            ids = ([self.bos_id] if add_bos else []) + ids[:budget]
            if add_eos:
                ids.append(self.eos_id)
            out[row, : len(ids)] = ids
        return out

    def decode(self, ids) -> list[str]:
        """Texts from int[B, L] (or int[L]) ids: stops at the first eos, skips pad and bos;
        location ids are written `<loc_i>`, separated from their neighbours by one space."""
        ids = np.asarray(ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2:
            raise ValueError(f"decode expects ids of rank 1 or 2, got shape {ids.shape}")
        skip = {self.pad_id, self.bos_id}
        texts = []
        for row in ids.tolist():
            kept = []
            for i in row:
                if i == self.eos_id:
                    break
                if i not in skip:
                    kept.append(i)
            texts.append(self._decode_row(kept))
        return texts

    def _decode_row(self, ids: list[int]) -> str:
        if not self.location_bins:
            return self._sp.decode(ids)
        parts, run = [], []
        for i in ids:
            if self.is_location(i):
                parts.append(self._sp.decode(run))
                parts.append(f"<loc_{i - self._sp_size}>")
                run = []
            else:
                run.append(i)
        parts.append(self._sp.decode(run))
        return " ".join(p for p in parts if p)
