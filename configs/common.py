"""Pieces shared by recipes: the vlp_shapes data section, optimizer and mesh defaults."""

import ml_collections


def vlp_shapes_data(image_size=64, text_length=32, name="vlp_shapes"):
    return ml_collections.ConfigDict(
        dict(
            source="tfds",
            name=name,
            data_dir=None,
            train_split="train",
            eval_split="validation",
            fields=dict(image="image", captions="captions"),
            image_size=image_size,
            text_length=text_length,
            tokenizer="vlp_shapes",
            shuffle_buffer=10_000,
            crop="resize",
            eval_crop="resize",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            max_skip_ratio=0.01,
        )
    )


def web_data(image_size, text_length, tokenizer):
    """Real image-text data: set data.train_split / eval_split (TFDS splits, a JSONL manifest or
    a shard glob) from the command line; CLIP preprocessing (center crop, CLIP mean/std)."""
    data = vlp_shapes_data(image_size, text_length)
    data.tokenizer = tokenizer
    data.crop = "center"
    data.eval_crop = "center"
    data.mean = (0.48145466, 0.4578275, 0.40821073)
    data.std = (0.26862954, 0.26130258, 0.27577711)
    return data


def adamw(learning_rate, warmup_steps, weight_decay=0.1, b2=0.98):
    return ml_collections.ConfigDict(
        dict(
            name="adamw",
            learning_rate=learning_rate,
            schedule="cosine",
            warmup_steps=warmup_steps,
            end_factor=0.0,
            b1=0.9,
            b2=b2,
            eps=1e-6,
            weight_decay=weight_decay,
            grad_clip_norm=1.0,
            lr_multipliers=(),
            freeze=(),
        )
    )


def mesh(data=-1, fsdp=1, tensor=1):
    return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor, rules=()))


def vlp_shapes_zeroshot():
    """Zero-shot shape and colour classification on vlp_shapes with its prompt templates."""
    from vlpjax.data.vlp_shapes import ZEROSHOT_PROMPTS

    return ml_collections.ConfigDict(
        dict(
            split=None,
            max_examples=0,
            tasks=dict(
                shape=dict(
                    label_field="objects/shape",
                    prompts=tuple(ZEROSHOT_PROMPTS["shape"]),
                    classnames=None,
                ),
                color=dict(
                    label_field="objects/color",
                    prompts=tuple(ZEROSHOT_PROMPTS["color"]),
                    classnames=None,
                ),
            ),
        )
    )


def base_config(label_smoothing=0.0):
    """What every contrastive recipe starts from: trainer defaults, the mesh, InfoNCE, and
    retrieval + zero-shot evaluation on vlp_shapes. Recipes fill in model, data and schedule."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.mesh = mesh()
    config.objectives = dict(
        contrastive=dict(
            weight=1.0, implementation="gather", label_smoothing=label_smoothing, tile_size=0
        )
    )
    config.evals = dict(
        retrieval=dict(split=None, max_examples=0, picture_examples=8),
        zeroshot=vlp_shapes_zeroshot(),
    )
    config.keep_checkpoints = 3
    config.async_checkpoints = True
    config.grad_accum_steps = 1
    config.grad_cache_steps = 1
    config.ema_decay = 0.0
    config.init_from = None
    config.max_nonfinite_steps = 5
    config.progress_bar = True
    return config


def cpu_schedule(config, smoke: bool, steps: int, batch: int, eval_every: int):
    """The schedule of a recipe's default CPU run on vlp_shapes; `smoke` = seconds, for tests."""
    config.total_steps = 8 if smoke else steps
    config.batch_size = 16 if smoke else batch
    config.eval_batch_size = 64 if smoke else 256
    config.log_every = 2 if smoke else 50
    config.eval_every = 0 if smoke else eval_every
    config.checkpoint_every = 4 if smoke else eval_every
    config.optimizer = adamw(learning_rate=1e-3, warmup_steps=2 if smoke else 50)
    if smoke:
        config.data.shuffle_buffer = 256
        for name in ("retrieval", "zeroshot"):
            if name in (config.evals or {}):
                config.evals[name].max_examples = 64
        if "retrieval" in (config.evals or {}):
            config.evals.retrieval.picture_examples = 4
