"""r2gen: write radiology reports from chest X-rays with a timm encoder, a projection and any causal LM (or T5-style
encoder-decoder)."""

__version__ = "0.1.0"
