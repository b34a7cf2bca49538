"""`python -m r2gen.export`: a trained checkpoint as a folder a colleague loads without r2gen.

`part=all` (the default) writes a self-contained Hugging Face folder; in a fresh process without r2gen:

    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    model.generate_reports([["frontal.png", "lateral.dcm"], ...])   # the reports predict.py writes

`part=lm` writes the LM alone, LoRA merged, as a plain folder of its own architecture.

  exporter.py             `export(cfg)`: the checks, LoRA merged, the folder written whole or not at all
  model_card.py           the folder's README.md, with the run's test scores (`run_scores`)
  configuration_r2gen.py  the folder's own code: its config and model classes, which run r2gen's standalone
  modeling_r2gen.py       modules copied beside them verbatim (`EXPORTED`: image loading, the transform, the
                          encoder, prompt assembly, report cleaning), so they preprocess, fuse, prompt, generate and
                          clean as predict.py does, not as a second implementation
"""

from r2gen.export.exporter import EXPORTED, export, import_exported
from r2gen.export.model_card import run_scores

__all__ = ["EXPORTED", "export", "import_exported", "run_scores"]
