"""BLIP (Li et al. 2022): one text transformer used three ways with shared weights: unimodal
encoder (ITC, momentum queues and distillation), image-grounded encoder ([ENC] first, ITM on
hard negatives from the global batch), image-grounded causal decoder with its own
self-attention (captions, LM with label smoothing 0.1).

  python -m vlpjax.main --config=configs/blip.py          # CPU, vlp_shapes
  python -m vlpjax.main --config=configs/blip.py:smoke    # seconds, for tests
  python -m vlpjax.main --config=configs/blip.py:base \\
      --config.data.tokenizer=/path/to/spm.model         # ViT-B/16 + BERT-base

Hugging Face `BlipForImageTextRetrieval` / `BlipForConditionalGeneration` weights load with
init_from=dict(format="hf_blip_retrieval" | "hf_blip_caption", path=...) and the model section
that `python -m vlpjax.convert inspect hf_blip_caption PATH` prints (not `:base`: the retrieval
checkpoint has no decoder). Their ids are BERT WordPiece ids (+ [DEC], [ENC]); the data
pipeline reads sentencepiece models only, so feed such weights ids from BLIP's own tokenizer
(e.g. transformers' BlipProcessor) through the library API.
CapFilt (caption, filter, re-pretrain): `python -m vlpjax.capfilt --help`.
"""

import albef

DECODE = dict(strategy="beam", max_length=23, beam_size=4, length_penalty=0.6)


def get_config(arg=None):
    layers = dict(
        # enc_id 5 is the vlp_shapes tokenizer's <cls> piece, standing in for BLIP's [ENC].
        cpu=dict(depth=3, text_layers=3, cross_from=0, mlm=False, decoder=True, enc_id=5),
        base=dict(depth=12, text_layers=12, cross_from=0, mlm=False, decoder=True, enc_id=None),
    )
    if arg == "smoke":
        layers["cpu"].update(depth=2, text_layers=2)
    config = albef.fusion_config(
        arg,
        "blip",
        layers,
        lambda warmup: dict(
            itc=albef.distilled(1.0, warmup),
            itm=dict(weight=1.0),
            lm=dict(weight=1.0, label_smoothing=0.1),
        ),
        cpu_steps=600,
    )
    smoke = arg == "smoke"
    config.data.fields = dict(image="image", captions="captions", tags="tags")
    decode = dict(DECODE, max_length=config.data.text_length - 1)
    config.evals.caption = dict(
        split=None,
        max_examples=16 if smoke else 0,
        picture_examples=4 if smoke else 8,
        prompt="",
        object_field=None if arg == "base" else "tags",
        decode=dict(decode, max_length=8, beam_size=2) if smoke else decode,
    )
    if arg == "base":
        config.data.fields = dict(image="image", captions="captions/text")
        config.batch_size = 2880
        config.optimizer.learning_rate = 3e-4
        config.optimizer.weight_decay = 0.05
        config.queue_size = 57_600
    return config
