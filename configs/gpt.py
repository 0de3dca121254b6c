"""GPT / GPT-2 (Radford et al. 2018, 2019): a decoder-only causal language model.

  python -m vlpjax.main --config=configs/gpt.py           # CPU: a small LM on vlp_shapes captions
  python -m vlpjax.main --config=configs/gpt.py:smoke     # seconds, for tests
  python -m vlpjax.main --config=configs/gpt.py:small \\
      --config.init_from.path=/path/to/hf_gpt2 --config.data.tokenizer=...   # small..xl

Text rows are "bos tokens eos pads" (data.add_bos). The GPT-2 sizes start from Hugging Face
weights through `init_from={"format": "hf_gpt2", ...}` (vlpjax.convert; logits equal to
`GPT2LMHeadModel`'s).
"""

import common
import ml_collections

# arg -> (width, depth, heads): GPT-2 small, medium, large, xl
SIZES = {
    "small": (768, 12, 12),
    "medium": (1024, 24, 16),
    "large": (1280, 36, 20),
    "xl": (1600, 48, 25),
}


def gpt_model(
    width,
    depth,
    heads,
    vocab_size,
    max_length,
    pad_id=0,
    eos_id=3,
    dtype="float32",
    scan=False,
    remat="none",
):
    return ml_collections.ConfigDict(
        dict(
            name="gpt",
            dtype=dtype,
            vocab_size=vocab_size,
            max_length=max_length,
            width=width,
            depth=depth,
            num_heads=heads,
            mlp_dim=4 * width,
            activation="gelu_tanh",
            norm_first=True,
            norm_eps=1e-5,
            final_norm=True,
            pad_id=pad_id,
            eos_id=eos_id,
            dropout_rate=0.0,
            scan=scan,
            remat=remat,
        )
    )


def get_config(arg=None):
    config = common.base_config()
    config.objectives = dict(lm=dict(weight=1.0, label_smoothing=0.0))
    config.evals = None

    if arg in (None, "", "smoke"):
        smoke = arg == "smoke"
        config.data = common.vlp_shapes_data(
            image_size=32, text_length=26, name="vlp_shapes/tiny" if smoke else "vlp_shapes"
        )
        config.data.add_bos = True
        width = 32 if smoke else 128
        config.model = gpt_model(width, 1 if smoke else 4, 4, vocab_size=256, max_length=26)
        common.cpu_schedule(config, smoke, steps=600, batch=64, eval_every=600)
        return config

    if arg not in SIZES:
        raise ValueError(
            f"configs/gpt.py: unknown argument '{arg}'; valid: '', smoke, {', '.join(SIZES)}"
        )
    width, depth, heads = SIZES[arg]
    config.data = common.web_data(224, 1024, tokenizer="")
    config.data.add_bos = True
    # GPT-2's byte-level BPE has one special token (50256) for bos, eos and padding.
    config.model = gpt_model(
        width,
        depth,
        heads,
        vocab_size=50_257,
        max_length=1024,
        pad_id=50_256,
        eos_id=50_256,
        dtype="bfloat16",
        scan=True,
        remat="full",
    )
    config.init_from = ml_collections.ConfigDict(dict(format="hf_gpt2", path="", keys=()))
    config.total_steps = 100_000
    config.batch_size = 512
    config.log_every = 100
    config.checkpoint_every = 2000
    config.mesh = common.mesh(data=-1, fsdp=1)
    config.optimizer = common.adamw(learning_rate=1e-4, warmup_steps=2000, weight_decay=0.1)
    return config
