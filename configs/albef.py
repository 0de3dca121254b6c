"""ALBEF (Li et al. 2021): align before fuse. ViT + a BERT whose bottom layers encode the text
and whose top layers cross-attend to the image; ITC with momentum queues, ITM on hard negatives
from the global batch, image-conditioned masked LM, momentum distillation.

  python -m vlpjax.main --config=configs/albef.py          # CPU, vlp_shapes
  python -m vlpjax.main --config=configs/albef.py:smoke    # seconds, for tests
  python -m vlpjax.main --config=configs/albef.py:base \\
      --config.data.tokenizer=/path/to/spm.model          # ViT-B/16 + BERT-base 6+6, 256-d ITC

Retrieval is scored twice: by ITC similarity, and with the top `rerank_k` ITC candidates
re-ranked by the ITM head (`eval/retrieval/itm_*`).
"""

import common
import ml_collections


def fusion_model(name, arg, layers: dict, vocab_size: int, image_size: int, text_length: int):
    """config.model of a fusion model (vlpjax.models.fusion). `layers`: depth, text_layers,
    cross_from, mlm, decoder (and BLIP's enc_id / dec_id)."""
    if arg == "base":  # ViT-B/16 + BERT-base
        width, image_depth, heads, dtype = 768, 12, 12, "bfloat16"
        patch = 16
    else:  # CPU sizes
        width, image_depth, heads, dtype = (
            (32, 1, 4, "float32") if arg == "smoke" else (96, 3, 4, "float32")
        )
        patch = 8
    return ml_collections.ConfigDict(
        dict(
            name=name,
            dtype=dtype,
            image=dict(
                image_size=image_size,
                patch_size=patch,
                width=width,
                depth=image_depth,
                num_heads=heads,
                mlp_dim=4 * width,
                class_token=True,
                pool="cls",
                post_norm="tokens",
            ),
            vocab_size=vocab_size,
            max_length=text_length,
            width=width,
            num_heads=heads,
            mlp_dim=4 * width,
            embed_dim=256,
            temperature_init=0.07,
            norm_eps=1e-12,
            dropout_rate=0.0,
            **layers,
        )
    )


def fusion_config(arg, name: str, layers: dict, objectives: dict, cpu_steps: int):
    """What ALBEF and BLIP share: data, schedule, momentum, queues, retrieval with ITM
    re-ranking. `layers` maps arg -> the model's layer split; `objectives` takes the alpha
    warm-up steps."""
    if arg not in (None, "", "smoke", "base"):
        raise ValueError(f"configs/{name}.py: unknown argument '{arg}'; valid: '', smoke, base")
    config = common.base_config()
    config.ema_decay = 0.995
    smoke = arg == "smoke"
    if arg != "base":
        config.data = common.vlp_shapes_data(
            image_size=32 if smoke else 64,
            text_length=24,
            name="vlp_shapes/tiny" if smoke else "vlp_shapes",
        )
        vocab_size = 256
        common.cpu_schedule(config, smoke, steps=cpu_steps, batch=64, eval_every=cpu_steps // 2)
        config.queue_size = 64 if smoke else 1024
        warmup, rerank = (2, 4) if smoke else (cpu_steps // 4, 16)
    else:
        config.data = common.web_data(image_size=256, text_length=30, tokenizer="")
        config.data.name = "coco_captions"
        config.data.fields = dict(image="image", captions="captions/text")
        config.data.eval_split = "val"
        vocab_size = 30522
        config.total_steps = 100_000
        config.batch_size = 512
        config.eval_batch_size = 256
        config.log_every = 100
        config.eval_every = 5000
        config.checkpoint_every = 2000
        config.mesh = common.mesh(data=-1, fsdp=1)
        config.optimizer = common.adamw(learning_rate=1e-4, warmup_steps=1000, weight_decay=0.02)
        config.queue_size = 65_536
        warmup, rerank = 3000, 128  # ALBEF ramps alpha over the first epoch; k = 128 (COCO)
    config.model = fusion_model(
        name,
        arg,
        layers["base" if arg == "base" else "cpu"],
        vocab_size,
        config.data.image_size,
        config.data.text_length,
    )
    config.data.add_bos = True  # the first token is the [CLS] the ITC and ITM heads read
    config.objectives = objectives(warmup)
    config.evals = dict(
        retrieval=dict(
            split=None,
            max_examples=64 if smoke else 0,
            picture_examples=4 if smoke else 8,
            rerank_k=rerank,
        )
    )
    return config


def distilled(weight: float, warmup: int) -> dict:
    return dict(weight=weight, alpha=0.4, alpha_warmup_steps=warmup)


def get_config(arg=None):
    layers = dict(
        cpu=dict(depth=4, text_layers=2, cross_from=2, mlm=True, decoder=False),
        base=dict(depth=12, text_layers=6, cross_from=6, mlm=True, decoder=False),
    )
    if arg == "smoke":
        layers["cpu"].update(depth=2, text_layers=1, cross_from=1)
    config = fusion_config(
        arg,
        "albef",
        layers,
        lambda warmup: dict(
            itc=distilled(1.0, warmup), itm=dict(weight=1.0), mlm=distilled(1.0, warmup)
        ),
        cpu_steps=600,
    )
    config.data.device_transform = dict(
        name="mlm", rate=0.15, mask_fraction=0.8, random_fraction=0.1
    )
    return config
