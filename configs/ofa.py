"""OFA (Wang et al. 2022): one encoder-decoder, every task an instruction in the source and an
answer in the target, over a unified vocabulary of text pieces and location tokens.

  python -m vlpjax.main --config=configs/ofa.py          # CPU, vlp_shapes, the main job
  python -m vlpjax.main --config=configs/ofa.py:smoke    # seconds, for tests
  python -m vlpjax.main --config=configs/ofa.py:base \\
      --config.data.tokenizer=/path/to/spm.model       # the paper's sizes: base, large

The default trains on vlp_shapes with OFA's recipe scaled down: a ResNet conv stem and the
encoder-decoder of configs/simvlm.py (model name "ofa"), 64 location bins after the 256
sentencepiece pieces (`<loc_0>`..`<loc_63>`, ids 256..319), and a mixture of instruction tasks
(vlpjax.data.tasks) trained as plain seq2seq (no PrefixLM, no noising):

  caption 1.0, vqa 0.5, visual grounding 0.5, grounded captioning 0.25, image-text matching 0.25

It reports caption CIDEr-D / BLEU-4 / exact match / objects named (beam search after the caption
instruction), VQA accuracy and grounding accuracy (IoU >= 0.5 of the generated box) on the
validation split, each beside its chance level.

`base` / `large` are OFA-Base / OFA-Large's shapes (6+6 layers of width 768, 12+12 of width
1024; a ResNet stem of three stages, 16x downsampling, each feature cell one image
token; 384 / 480 px; 1000 location bins) on TFDS `coco_captions` with the caption task only:
vlpjax has no detection or referring-expression dataset wired for grounding there, so those
tasks and the grounding evaluator need a dataset with boxes and phrases (data.fields.boxes,
data.fields.tags). The stem repeats 3 bottleneck blocks per stage (ResNet-101/152 have 3, 4, 23
/ 3, 8, 36), and the schedule is SimVLM's style, not OFA's pretraining schedule. The model's
vocabulary is 32,000 + 1000: give a sentencepiece model of at most 32,000 pieces.
"""

import common
import simvlm

from vlpjax.data.tasks import INSTRUCTIONS

LOCATION_BINS = 64
# arg -> (width, encoder depth, decoder depth, heads, mlp, image size)
SIZES = {
    "base": (768, 6, 6, 12, 3072, 384),
    "large": (1024, 12, 12, 16, 4096, 480),
}


def ofa_model(*args, source_length, **kwargs):
    """simvlm.simvlm_model's encoder-decoder as model "ofa", with its own source length."""
    model = simvlm.simvlm_model(*args, **kwargs)
    model.name = "ofa"
    model.max_source_length = source_length
    return model


def caption_eval(max_examples, decode, object_field):
    return dict(
        split=None,
        max_examples=max_examples,
        picture_examples=8,
        prompt=INSTRUCTIONS["caption"],
        object_field=object_field,
        decode=decode,
    )


def get_config(arg=None):
    config = common.base_config()
    config.objectives = dict(lm=dict(weight=1.0, label_smoothing=0.0))

    if arg in (None, "", "smoke"):
        smoke = arg == "smoke"
        text_length, source_length = 24, 40  # itm sources hold a caption: up to ~38 tokens
        config.data = common.vlp_shapes_data(
            image_size=32 if smoke else 64,
            text_length=text_length,
            name="vlp_shapes/tiny" if smoke else "vlp_shapes",
        )
        config.data.fields = dict(
            image="image",
            captions="captions",
            questions="questions",
            answers="answers",
            tags="tags",
            boxes="objects/bbox",
        )
        config.data.tasks = dict(
            caption=1.0, vqa=0.5, grounding=0.5, grounded_caption=0.25, itm=0.25
        )
        config.data.instructions = True
        config.data.source_length = source_length
        config.data.location_bins = LOCATION_BINS
        config.data.device_transform = None
        width = 32 if smoke else 128
        config.model = ofa_model(
            width,
            1 if smoke else 3,
            1 if smoke else 3,
            4,
            4 * width,
            vocab_size=256 + LOCATION_BINS,
            image_size=config.data.image_size,
            text_length=text_length,
            source_length=source_length,
            # 64 px -> 32 (7x7/2 conv) -> 16 (one bottleneck, stride 2) -> 2x2 patches: 64 tokens
            stem=(16 if smoke else 32, (32 if smoke else 64,), 1, False),
            patch_size=2,
        )
        config.evals = dict(
            caption=caption_eval(0, simvlm.decode(24, beam_size=4), "tags"),
            vqa=dict(
                split=None, max_examples=0, max_questions=0, decode=simvlm.decode(4, beam_size=1)
            ),
            grounding=dict(
                split=None, max_examples=0, max_objects=0, decode=simvlm.decode(5, beam_size=1)
            ),
        )
        common.cpu_schedule(config, smoke, steps=1200, batch=64, eval_every=600)
        config.optimizer = common.adamw(
            learning_rate=1e-3, warmup_steps=2 if smoke else 100, weight_decay=0.01
        )
        if smoke:
            config.evals.caption.max_examples = 16
            config.evals.caption.picture_examples = 4
            config.evals.caption.decode = simvlm.decode(8, beam_size=2)
            config.evals.vqa.max_examples = 8
            config.evals.grounding.max_examples = 8
        return config

    if arg not in SIZES:
        raise ValueError(
            f"configs/ofa.py: unknown argument '{arg}'; valid: '', smoke, {', '.join(SIZES)}"
        )
    width, encoder_depth, decoder_depth, heads, mlp, image_size = SIZES[arg]
    bins = 1000
    config.data = common.web_data(image_size, 64, tokenizer="")
    config.data.name = "coco_captions"
    config.data.fields = dict(image="image", captions="captions/text")
    config.data.eval_split = "val"
    config.data.tasks = dict(caption=1.0)
    config.data.instructions = True
    config.data.source_length = 32
    config.data.location_bins = bins
    config.data.device_transform = None
    config.model = ofa_model(
        width,
        encoder_depth,
        decoder_depth,
        heads,
        mlp,
        vocab_size=32_000 + bins,
        image_size=image_size,
        text_length=64,
        source_length=32,
        # ResNet's stem and first three stages: 16x downsampling, one token per feature cell
        # (384 px: 24 x 24 = 576 image tokens; 480 px: 900).
        stem=(64, (256, 512, 1024), 3, True),
        patch_size=1,
        dtype="bfloat16",
        scan=True,
        remat="full",
    )
    config.evals = dict(caption=caption_eval(5000, simvlm.decode(32, beam_size=4), None))
    config.total_steps = 250_000
    config.batch_size = 2048
    config.eval_batch_size = 256
    config.log_every = 100
    config.eval_every = 10_000
    config.checkpoint_every = 2000
    config.mesh = common.mesh(data=-1, fsdp=1)
    config.optimizer = common.adamw(learning_rate=2e-4, warmup_steps=10_000, weight_decay=0.01)
    return config
