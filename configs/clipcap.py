"""ClipCap (Mokady et al. 2021): a frozen CLIP image embedding, mapped to a fixed-length prefix
by an MLP or a small transformer, then a GPT language model writes the caption.

  python -m vlpjax.main --config=configs/clip.py          # 1. the CLIP to freeze
  python -m vlpjax.main --config=configs/clipcap.py       # 2. ClipCap on top of workdirs/clip
  python -m vlpjax.main --config=configs/clipcap.py:smoke # seconds, for tests (random CLIP)
  python -m vlpjax.main --config=configs/clipcap.py:base  # ViT-B/16 CLIP + GPT-2 small weights:
      --config.init_from.clip.path=/path/to/hf_clip --config.init_from.gpt2.path=/path/to/hf_gpt2

`mapping` = "mlp" (GPT fine-tuned, the paper's first variant) or "transformer" (GPT frozen:
add r"^decoder/" to optimizer.freeze, the paper's second variant). The CLIP tower is frozen in
the model (no gradient) and in the optimizer (no Adam state).
"""

import clip
import common
import gpt
import ml_collections


def clipcap_model(clip_model, gpt_model, prefix_length, mapping):
    lm = {k: v for k, v in gpt_model.items() if k not in ("name", "dtype")}
    lm["max_length"] = gpt_model.max_length + prefix_length
    return ml_collections.ConfigDict(
        dict(
            name="clipcap",
            dtype=gpt_model.dtype,
            image=clip_model.image,
            embed_dim=clip_model.embed_dim,
            image_projection=True,
            projection_bias=clip_model.projection_bias,
            freeze_image=True,
            normalize_prefix=False,
            prefix_length=prefix_length,
            mapping=mapping,
            mapping_hidden=0,
            clip_length=0,
            mapping_depth=2 if gpt_model.width < 768 else 8,
            mapping_heads=4 if gpt_model.width < 768 else 8,
            mapping_activation="relu",
            **lm,
        )
    )


def clip_source(path):
    return dict(format="vlpjax", path=path, keys=("image_encoder", "image_projection"))


def get_config(arg=None):
    base = clip.get_config("smoke" if arg == "smoke" else (arg or None))
    lm = gpt.get_config("smoke" if arg == "smoke" else (None if not arg else "small"))
    config = common.base_config()
    config.objectives = dict(lm=dict(weight=1.0, label_smoothing=0.0))
    config.data = base.data
    config.data.add_bos = True
    config.data.fields = dict(image="image", captions="captions", tags="tags")
    text_length = lm.model.max_length
    config.data.text_length = text_length
    config.model = clipcap_model(
        base.model, lm.model, prefix_length=4 if not arg else 10, mapping="mlp"
    )
    config.optimizer = lm.optimizer
    config.optimizer.freeze = (r"^image_encoder/", r"^image_projection/")
    decode = dict(strategy="beam", max_length=text_length - 1, beam_size=4, length_penalty=0.6)
    config.evals = dict(
        caption=dict(
            split=None,
            max_examples=0,
            picture_examples=8,
            prompt="",
            object_field="tags",
            decode=decode,
        )
    )
    if arg in (None, "", "smoke"):
        smoke = arg == "smoke"
        common.cpu_schedule(config, smoke, steps=900, batch=64, eval_every=450)
        config.optimizer.freeze = (r"^image_encoder/", r"^image_projection/")
        if smoke:
            config.evals.caption.max_examples = 16
            config.evals.caption.picture_examples = 4
            config.evals.caption.decode = dict(decode, max_length=8, beam_size=2)
            config.init_from = None  # a random CLIP: seconds, no prior run needed
        else:
            config.init_from = dict(clip=clip_source("workdirs/clip"))
        return config

    config.data.fields = base.data.fields
    config.evals.caption.object_field = None
    config.init_from = dict(
        clip=dict(format="hf_clip", path="", keys=("image_encoder", "image_projection")),
        gpt2=dict(format="hf_gpt2", path="", keys=("decoder",)),
    )
    for key in ("total_steps", "eval_batch_size", "log_every", "eval_every", "checkpoint_every"):
        config[key] = base[key]
    config.batch_size = 40 * 32  # the paper: batch 40 per GPU
    config.total_steps = 10 * 118_000 // 1280
    config.mesh = base.mesh
    return config
