"""Vision Transformer image encoder (ViT, CLIP-ViT, the image side of ALBEF/BLIP/VLMo)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from vlpjax.layers import AttentionPool, PatchEmbed, PositionEmbed, pool_tokens
from vlpjax.layers.flops import transformer_flops
from vlpjax.layers.initializers import embed_init, layer_norm
from vlpjax.layers.transformer import stack_for

# name -> (width, depth, heads, mlp_dim): the standard sizes.
VIT_VARIANTS = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
    "g": (1408, 40, 16, 6144),
}


class ViT(nn.Module):
    """float[B, H, W, 3] images -> (float[B, D] pooled, float[B, N(+1), D] tokens).

    `pre_norm` is CLIP's LayerNorm before the blocks; `post_norm` is "tokens" (normalise every
    output token, big_vision), "pooled" (normalise only the pooled vector, CLIP) or "none".
    """

    image_size: int
    patch_size: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    class_token: bool = True
    pool: str = "cls"  # cls | mean | map | none
    pre_norm: bool = False
    post_norm: str = "tokens"
    position: str = "learned"
    patch_bias: bool = True
    activation: str = "gelu"
    norm_eps: float = 1e-6
    dropout_rate: float = 0.0
    scan: bool = False
    remat: str = "none"
    dtype: Any = jnp.float32

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @nn.compact
    def __call__(self, images, train: bool = False):
        x = PatchEmbed(
            self.patch_size, self.width, self.patch_bias, self.dtype, name="patch_embed"
        )(images.astype(self.dtype))
        if x.shape[1] != self.num_patches:
            raise ValueError(
                f"ViT built for {self.image_size}px images got {images.shape[1]}x{images.shape[2]}"
            )
        if self.class_token:
            cls = self.param(
                "class_token", nn.with_logical_partitioning(embed_init, ("embed",)), (self.width,)
            )
            x = jnp.concatenate(
                [jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, self.width)), x], 1
            )
        num_positions = self.num_patches + int(self.class_token)
        if self.position == "sincos2d" and self.class_token:
            raise ValueError("sincos2d positions assume no class token")
        x = PositionEmbed(num_positions, self.position, self.dtype, name="position_embed")(x)
        if self.pre_norm:
            x = layer_norm(self.norm_eps, self.dtype, "pre_norm")(x)
        x = stack_for(self, train)(x)
        if self.post_norm == "tokens":
            x = layer_norm(self.norm_eps, self.dtype, "post_norm")(x)
        if self.pool == "map":
            pooled = AttentionPool(
                self.num_heads, mlp_dim=self.mlp_dim, dtype=self.dtype, name="map"
            )(x)[:, 0]
        elif self.pool == "none":
            pooled = x
        else:
            pooled = pool_tokens(
                x[:, int(self.class_token) :] if self.pool == "mean" else x, self.pool
            )
        if self.post_norm == "pooled":
            pooled = layer_norm(self.norm_eps, self.dtype, "post_norm")(pooled)
        return pooled, x

    def flops(self) -> float:
        """Analytic forward FLOPs for one image (matmuls + attention)."""
        tokens = self.num_patches + int(self.class_token)
        patch = 2 * self.num_patches * self.patch_size**2 * 3 * self.width
        return patch + transformer_flops(tokens, self.width, self.mlp_dim, self.depth)
