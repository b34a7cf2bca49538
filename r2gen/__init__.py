"""r2gen: write radiology reports from chest X-rays with a timm encoder, a projection and any causal LM."""

__version__ = "0.1.0"
