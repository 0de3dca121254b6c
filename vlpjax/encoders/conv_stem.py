"""SimVLM's image front end: the first blocks of a ResNet turn pixels into a feature map that is
then cut into patches (a conv stem sees local structure a linear patch projection misses)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from vlpjax.layers.initializers import dense_init


class ConvStem(nn.Module):
    """float[B, H, W, 3] -> float[B, H/s, W/s, C]: a 7x7 stride-2 convolution (`width`
    channels), an optional 3x3 stride-2 max-pool, then ResNet bottleneck blocks, `blocks` per
    entry of `stage_widths`, the first of each stage with stride 2 (except right after the
    pool). GroupNorm rather than BatchNorm: no batch statistics to keep, as in BiT."""

    width: int = 64
    stage_widths: tuple = (256,)
    blocks: int = 3
    max_pool: bool = True
    groups: int = 32
    dtype: Any = jnp.float32

    def _norm(self, channels, name):
        # At least 4 channels per group: one channel per group would be instance norm, which
        # normalises away each channel's mean over the image, and with it colour.
        groups = max(1, min(self.groups, channels // 4))
        return nn.GroupNorm(groups, dtype=self.dtype, name=name)

    def _conv(self, channels, kernel, stride, name):
        return nn.Conv(
            channels,
            (kernel, kernel),
            strides=(stride, stride),
            padding="SAME",
            use_bias=False,
            dtype=self.dtype,
            kernel_init=nn.with_logical_partitioning(dense_init, (None, None, None, "embed")),
            name=name,
        )

    @nn.compact
    def __call__(self, images):
        x = self._conv(self.width, 7, 2, "conv")(images.astype(self.dtype))
        x = nn.relu(self._norm(self.width, "norm")(x))
        if self.max_pool:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for s, out in enumerate(self.stage_widths):
            for b in range(self.blocks):
                stride = 2 if b == 0 and not (s == 0 and self.max_pool) else 1
                x = self._bottleneck(x, out, stride, f"stage{s}_block{b}")
        return x

    def _bottleneck(self, x, out, stride, name):
        mid = max(out // 4, 1)
        shortcut = x
        if stride != 1 or x.shape[-1] != out:
            shortcut = self._norm(out, f"{name}_proj_norm")(
                self._conv(out, 1, stride, f"{name}_proj")(x)
            )
        y = nn.relu(self._norm(mid, f"{name}_norm1")(self._conv(mid, 1, 1, f"{name}_conv1")(x)))
        y = nn.relu(
            self._norm(mid, f"{name}_norm2")(self._conv(mid, 3, stride, f"{name}_conv2")(y))
        )
        y = self._norm(out, f"{name}_norm3")(self._conv(out, 1, 1, f"{name}_conv3")(y))
        return nn.relu(shortcut + y)

    def reduction(self) -> int:
        """Pixels per feature-map cell along each side."""
        strides = 2 * (2 if self.max_pool else 1)
        return strides * 2 ** (
            len(self.stage_widths) - int(self.max_pool and len(self.stage_widths) > 0)
        )

    def flops(self, image_size: int) -> float:
        """Analytic forward FLOPs of the convolutions for one image."""
        side = image_size // 2
        flops = 2 * side * side * 49 * 3 * self.width
        side //= 2 if self.max_pool else 1
        channels = self.width
        for s, out in enumerate(self.stage_widths):
            for b in range(self.blocks):
                stride = 2 if b == 0 and not (s == 0 and self.max_pool) else 1
                mid = max(out // 4, 1)
                flops += 2 * side * side * channels * mid  # 1x1 at the input resolution
                side //= stride
                flops += 2 * side * side * (9 * mid * mid + mid * out)
                if stride != 1 or channels != out:
                    flops += 2 * side * side * channels * out
                channels = out
        return float(flops)
