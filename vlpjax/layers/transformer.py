"""The transformer block every system uses, and the layer stack (optionally scanned + remat)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from vlpjax.layers.attention import MultiHeadAttention
from vlpjax.layers.initializers import layer_norm
from vlpjax.layers.mlp import Mlp, ModalityExperts

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


class TransformerBlock(nn.Module):
    """Self-attention, optional cross-attention to a context, and an MLP or modality experts.

    `norm_first=True` is the pre-LN block (ViT, CLIP, GPT-2); False is the post-LN block (BERT).
    Scan-compatible: `__call__` returns `(x, None)`.
    """

    num_heads: int
    mlp_dim: int
    head_dim: int | None = None
    cross_attention: bool = False
    num_experts: int = 0
    activation: str = "gelu"
    norm_first: bool = True
    norm_eps: float = 1e-6
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    use_bias: bool = True
    deterministic: bool = True
    decode: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x,
        mask=None,
        context=None,
        context_mask=None,
        modality=None,
        *,
        unimodal: bool = False,
        self_attention: str = "self_attention",
    ):
        """x: float[B, L, D]; mask: bool[B, 1, L, L]; context: float[B, K, Dc] (cross-attention);
        context_mask: bool[B, 1, L, K]; modality: int[B, L] (experts). Returns (float[B, L, D], None).

        For a text transformer used several ways with shared weights (BLIP): `unimodal` skips
        the cross-attention; `self_attention` names the self-attention (and its norm) to use,
        so a causal decoder pass can own its self-attention and share the rest."""
        x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
        attention = dict(
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            use_bias=self.use_bias,
            dropout_rate=self.attention_dropout_rate,
            deterministic=self.deterministic,
            dtype=self.dtype,
        )
        dropout = nn.Dropout(self.dropout_rate, deterministic=self.deterministic)

        def sublayer(name, fn, x):
            if self.norm_first:
                return x + dropout(fn(layer_norm(self.norm_eps, self.dtype, f"{name}_norm")(x)))
            return layer_norm(self.norm_eps, self.dtype, f"{name}_norm")(x + dropout(fn(x)))

        attend = MultiHeadAttention(**attention, decode=self.decode, name=self_attention)
        x = sublayer(self_attention, lambda h: attend(h, mask=mask), x)
        if self.cross_attention and not unimodal:
            cross = MultiHeadAttention(
                **attention, decode=self.decode, cross=True, name="cross_attention"
            )
            x = sublayer("cross_attention", lambda h: cross(h, context, mask=context_mask), x)
        ffn = dict(
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            deterministic=self.deterministic,
            use_bias=self.use_bias,
            dtype=self.dtype,
        )
        if self.num_experts:
            experts = ModalityExperts(self.num_experts, self.mlp_dim, **ffn, name="experts")
            x = sublayer("mlp", lambda h: experts(h, modality), x)
        else:
            x = sublayer("mlp", Mlp(self.mlp_dim, **ffn, name="mlp"), x)
        return x, None


def _remat_policy(name: str):
    import jax

    return {
        "full": None,
        "dots": jax.checkpoint_policies.checkpoint_dots,
        "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    }[name]


class TransformerStack(nn.Module):
    """`num_layers` TransformerBlocks.

    `scan=True` stacks the layers' parameters on a leading `layers` axis and runs them with
    `nn.scan` (one compiled body: fast compiles for deep models); `remat` trades compute for
    activation memory and is what makes a scanned stack affordable (see DESIGN: never scan
    without a remat policy on accelerators). Parameters live under `layers` (scanned) or
    `layer_{i}` (unrolled); `vlpjax.convert` handles both.
    """

    num_layers: int
    block: dict  # TransformerBlock attributes (scalars only)
    scan: bool = False
    remat: str = "none"
    final_norm: bool = False
    norm_eps: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None, context=None, context_mask=None, modality=None):
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"unknown remat policy '{self.remat}'; valid: {REMAT_POLICIES}")
        block_cls = TransformerBlock
        if self.remat != "none":
            block_cls = nn.remat(
                block_cls, policy=_remat_policy(self.remat), prevent_cse=not self.scan
            )
        block_kwargs = dict(self.block, dtype=self.dtype)
        if self.scan:
            stack = nn.scan(
                block_cls,
                variable_axes={"params": 0, "cache": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast,) * 4,
                length=self.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(**block_kwargs, name="layers")
            x, _ = stack(x, mask, context, context_mask, modality)
        else:
            for i in range(self.num_layers):
                x, _ = block_cls(**block_kwargs, name=f"layer_{i}")(
                    x, mask, context, context_mask, modality
                )
        if self.final_norm:
            x = layer_norm(self.norm_eps, self.dtype, "final_norm")(x)
        return x


def stack_for(module: nn.Module, train: bool, final_norm: bool = False, depth=None, **block):
    """The layer stack of a module whose attributes name its shape (depth, num_heads, mlp_dim,
    activation, norm_eps, dropout_rate, scan, remat, dtype, and optionally norm_first), as ViT,
    the text encoder and decoder, and the encoder-decoder's encoder do. `depth` overrides the
    module's; `block` adds TransformerBlock attributes (cross_attention, decode)."""
    return TransformerStack(
        depth or module.depth,
        dict(
            num_heads=module.num_heads,
            mlp_dim=module.mlp_dim,
            activation=module.activation,
            norm_first=getattr(module, "norm_first", True),
            norm_eps=module.norm_eps,
            dropout_rate=module.dropout_rate,
            deterministic=not train,
            **block,
        ),
        scan=module.scan,
        remat=module.remat,
        final_norm=final_norm,
        norm_eps=module.norm_eps,
        dtype=module.dtype,
        name="transformer",
    )
