"""BART (Lewis et al. 2019): the encoder-decoder reads noised text and writes the original.

  python -m vlpjax.main --config=configs/bart.py          # CPU: vlp_shapes caption documents
  python -m vlpjax.main --config=configs/bart.py:smoke    # seconds, for tests
  python -m vlpjax.main --config=configs/bart.py:base --config.data.tokenizer=...  # base | large

Noising (vlpjax.data.noising, in the jitted step): text infilling (Poisson(3) spans, 30% of the
tokens, one mask per span) and sentence permutation, the paper's best combination. The
documents are each image's five captions, one after another (the `document` task). Hugging Face
BART checkpoints load with `init_from={"format": "hf_bart", "path": DIR}` (vlpjax.convert).
"""

import common
import ml_collections

# arg -> (width, encoder depth, decoder depth, heads, mlp)
SIZES = {"base": (768, 6, 6, 12, 3072), "large": (1024, 12, 12, 16, 4096)}


def bart_model(
    width,
    encoder_depth,
    decoder_depth,
    heads,
    mlp,
    vocab_size,
    text_length,
    pad_id=0,
    decoder_start_id=2,
    dtype="float32",
    scan=False,
    remat="none",
):
    return ml_collections.ConfigDict(
        dict(
            name="bart",
            dtype=dtype,
            vocab_size=vocab_size,
            max_source_length=text_length,
            max_target_length=text_length,
            width=width,
            encoder_depth=encoder_depth,
            decoder_depth=decoder_depth,
            num_heads=heads,
            mlp_dim=mlp,
            image_size=0,
            norm_first=False,  # post-LN blocks
            norm_eps=1e-5,
            embed_norm=True,
            embed_scale=False,
            position_offset=2,
            logits_bias=True,
            activation="gelu",
            pad_id=pad_id,
            decoder_start_id=decoder_start_id,
            dropout_rate=0.1 if width >= 768 else 0.0,
            scan=scan,
            remat=remat,
        )
    )


def denoise():
    return dict(name="denoise", sentence_end=".", text_infilling=0.3, sentence_permutation=1.0)


def get_config(arg=None):
    config = common.base_config()
    config.objectives = dict(lm=dict(weight=1.0, label_smoothing=0.0))
    config.evals = None

    if arg in (None, "", "smoke"):
        smoke = arg == "smoke"
        config.data = common.vlp_shapes_data(
            image_size=32, text_length=80, name="vlp_shapes/tiny" if smoke else "vlp_shapes"
        )
        config.data.tasks = dict(document=1.0)
        config.data.device_transform = denoise()
        width = 32 if smoke else 128
        config.model = bart_model(
            width,
            1 if smoke else 3,
            1 if smoke else 3,
            4,
            4 * width,
            vocab_size=256,
            text_length=80,
        )
        common.cpu_schedule(config, smoke, steps=600, batch=64, eval_every=600)
        return config

    if arg not in SIZES:
        raise ValueError(
            f"configs/bart.py: unknown argument '{arg}'; valid: '', smoke, {', '.join(SIZES)}"
        )
    width, encoder_depth, decoder_depth, heads, mlp = SIZES[arg]
    config.data = common.web_data(224, 512, tokenizer="")
    config.data.tasks = dict(document=1.0)
    config.data.device_transform = denoise()
    config.model = bart_model(
        width,
        encoder_depth,
        decoder_depth,
        heads,
        mlp,
        vocab_size=50_265,
        text_length=512,
        pad_id=1,
        dtype="bfloat16",
        scan=True,
        remat="full",
    )
    config.total_steps = 500_000
    config.batch_size = 8000
    config.log_every = 100
    config.checkpoint_every = 5000
    config.mesh = common.mesh(data=-1, fsdp=1)
    config.optimizer = common.adamw(learning_rate=4e-4, warmup_steps=10_000, weight_decay=0.01)
    return config
