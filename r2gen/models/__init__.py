"""Model parts: the timm encoder, language-model loading, prompt assembly and the LightningModule."""
