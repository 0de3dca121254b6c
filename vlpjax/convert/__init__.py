"""Checkpoint converters between vlpjax params and other libraries' formats.

`CONVERTERS[name] = (load, export)`: `load(path, scan=False) -> (model_config, params)` gives a
vlpjax `config.model` dict and a plain numpy params tree; `export(params, model_config, path)`
writes the other format. `CONFIG_READERS[name](path)` derives only the model config (no weights).
"""

from vlpjax.convert.hf_align import export_hf_align, hf_align_model_config, load_hf_align
from vlpjax.convert.hf_bart import (
    bart_model_config,
    export_hf_bart,
    hf_bart_model_config,
    load_hf_bart,
)
from vlpjax.convert.hf_blip import (
    export_hf_blip_caption,
    export_hf_blip_retrieval,
    hf_blip_caption_model_config,
    hf_blip_retrieval_model_config,
    load_hf_blip_caption,
    load_hf_blip_retrieval,
)
from vlpjax.convert.hf_clip import export_hf_clip, hf_clip_model_config, load_hf_clip
from vlpjax.convert.hf_gpt2 import (
    export_hf_gpt2,
    gpt2_model_config,
    hf_gpt2_model_config,
    load_hf_gpt2,
)

CONVERTERS = {
    "hf_clip": (load_hf_clip, export_hf_clip),
    "hf_align": (load_hf_align, export_hf_align),
    "hf_bart": (load_hf_bart, export_hf_bart),
    "hf_gpt2": (load_hf_gpt2, export_hf_gpt2),
    "hf_blip_retrieval": (load_hf_blip_retrieval, export_hf_blip_retrieval),
    "hf_blip_caption": (load_hf_blip_caption, export_hf_blip_caption),
}
CONFIG_READERS = {
    "hf_clip": hf_clip_model_config,
    "hf_align": hf_align_model_config,
    "hf_bart": hf_bart_model_config,
    "hf_gpt2": hf_gpt2_model_config,
    "hf_blip_retrieval": hf_blip_retrieval_model_config,
    "hf_blip_caption": hf_blip_caption_model_config,
}

__all__ = [
    "CONFIG_READERS",
    "CONVERTERS",
    "bart_model_config",
    "export_hf_bart",
    "hf_bart_model_config",
    "load_hf_bart",
    "export_hf_gpt2",
    "gpt2_model_config",
    "hf_gpt2_model_config",
    "load_hf_gpt2",
    "export_hf_align",
    "export_hf_blip_caption",
    "export_hf_blip_retrieval",
    "hf_blip_caption_model_config",
    "hf_blip_retrieval_model_config",
    "load_hf_blip_caption",
    "load_hf_blip_retrieval",
    "export_hf_clip",
    "hf_align_model_config",
    "hf_clip_model_config",
    "load_hf_align",
    "load_hf_clip",
]
