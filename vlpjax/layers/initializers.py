"""Initializers shared by every layer (one place to change the defaults)."""

from flax import linen as nn

dense_init = nn.initializers.xavier_uniform()
embed_init = nn.initializers.normal(stddev=0.02)
zeros_init = nn.initializers.zeros
ones_init = nn.initializers.ones


def dense(features: int, dtype, axes=("embed", None), use_bias: bool = True, name=None):
    """nn.Dense whose kernel carries the logical `axes` (in, out) and whose bias the out axis."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=nn.with_logical_partitioning(dense_init, axes),
        bias_init=nn.with_logical_partitioning(zeros_init, axes[1:]),
        name=name,
    )


def layer_norm(eps: float, dtype, name: str | None = None) -> nn.LayerNorm:
    """LayerNorm whose scale and bias carry the `embed` logical axis."""
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        scale_init=nn.with_logical_partitioning(ones_init, ("embed",)),
        bias_init=nn.with_logical_partitioning(zeros_init, ("embed",)),
        name=name,
    )
