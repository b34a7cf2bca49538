"""The report-generation LightningModule: timm encoder -> `lm_proj` (+ LayerNorm) -> LM (a decoder-only causal LM,
or a text-to-text encoder-decoder such as T5: r2gen.models.lm).

What trains is set by config: `align.encoder` (frozen / lora / full: R2GenGPT's shallow / delta / deep) and,
independently, `lm.freeze` and `lm.lora`. Checkpoints keep only what cannot be rebuilt from the config
(trainable weights, plus any module trained fully or initialised at random) and the resolved config itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from r2gen.checkpoint import payload
from r2gen.data.context import Context
from r2gen.data.view_positions import VIEW_POSITIONS
from r2gen.errors import InputError
from r2gen.models.encoder import ImageEncoder
from r2gen.models.finding_loss import FindingHead
from r2gen.models.lm import generation_config, is_encoder_decoder, load_lm, quantization_config
from r2gen.models.prompt import Prompt, context_of, decode_reports, lm_inputs, with_prior
from r2gen.models.report_loss import chunk_size, loss_path, report_loss
from r2gen.models.report_loss import describe as describe_loss
from r2gen.models.trainable import apply_align, apply_lm_training, count_params

log = logging.getLogger(__name__)


def image_encoder(cfg: DictConfig) -> ImageEncoder:
    """The run's image encoder, as `R2GenModule` builds it before anything else: right after `seed_everything`, a
    randomly initialised one gets the same weights here and there (`python -m r2gen.cache` builds it alone)."""
    return ImageEncoder(cfg.encoder.name, cfg.encoder.pretrained, cfg.data.view_fusion,
                        cfg.encoder.gradient_checkpointing,
                        image_size=cfg.data.image_size or None,  # null: the encoder's own size
                        **(cfg.encoder.kwargs or {}))


class R2GenModule(pl.LightningModule):
    def __init__(self, cfg: DictConfig | dict, lm_path: str, clean: Callable[[str], str],
                 lm_identity: dict[str, Any] | None = None, finding_labels: Sequence[str] = ()):
        """Built by `r2gen.build.model`, which composes the arguments from the config: `lm_path`, where the LM folder
        is (a locally built LM, lm=tiny, or a converted one, lm.convert, lives in the cache, not at
        `lm.name_or_path`); `clean`, the run's report cleaner (r2gen.data.clean); `lm_identity`, what a checkpoint
        stores to rebuild a built LM (None for a user's or a hub LM); `finding_labels`, the findings the auxiliary
        head classifies (r2gen.models.finding_loss; none: no head)."""
        super().__init__()
        cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
        self.save_hyperparameters({"cfg": OmegaConf.to_container(cfg, resolve=True)})
        self.cfg = cfg
        self.strict_loading = False  # checkpoints hold only what cannot be rebuilt; on_load_checkpoint checks it

        self.encoder = image_encoder(cfg)  # first: a random initialisation depends on the seed alone
        quant = quantization_config(cfg.quant, cfg.lm)  # None unless quant=4bit|8bit
        self.lm_model, self.tokenizer = load_lm(cfg.lm, quant, path=lm_path)
        self.encoder_decoder = is_encoder_decoder(self.lm_model)  # T5: the prompt and image go to its encoder
        text_cfg = self.lm_model.config.get_text_config()
        hidden = text_cfg.hidden_size  # the projection is sized from the LM, whatever its family (T5: d_model)
        self.lm_proj = nn.Linear(self.encoder.num_features, hidden)
        self.lm_norm = nn.LayerNorm(hidden)
        # data.finding_loss > 0: the labeler's findings classified from the image tokens
        self.finding_head = FindingHead(self.encoder.num_features, len(finding_labels)) if finding_labels else None
        self.lm_identity = lm_identity
        self.prompt = Prompt(self.tokenizer, cfg.lm.prompt.text, cfg.lm.prompt.template, cfg.lm.add_bos,
                             self.encoder_decoder)
        self.context = Context.from_config(cfg.get("context"))  # what of a study's context the LM reads
        # context.prior_images: a learned marker added to each image token of the current (0) and the prior (1)
        # study, so the LM tells the two spans apart; zeros at first (the current study's tokens as without it)
        self.study_marker = nn.Embedding(2, hidden) if self.context.prior_images else None
        if self.study_marker is not None:
            nn.init.zeros_(self.study_marker.weight)
        # context.view_positions: a learned marker of each image token's view position (r2gen.data.view_positions),
        # current and prior study alike (see `view_marks`); zeros at first, made without drawing from the random
        # stream, so a run starts exactly as without it (LoRA's initialisation and dropout draw the same numbers)
        self.view_marker = (nn.Embedding.from_pretrained(torch.zeros(len(VIEW_POSITIONS), hidden), freeze=False)
                            if self.context.view_positions else None)
        self.gen_config = generation_config(self.lm_model, self.tokenizer,
                                            OmegaConf.to_container(cfg.generate, resolve=True))
        self.clean = clean

        self.encoder_mode = apply_align(self.encoder, cfg.align)
        if self.encoder_mode != "full" and not cfg.encoder.pretrained:
            rank_zero_warn(f"align.encoder={self.encoder_mode} with encoder.pretrained=false: the encoder's frozen "
                           "weights stay random (and timm zero-initialises each residual branch's last norm, so LoRA "
                           "inside those branches gets no gradient); use align=deep, or pretrained encoder weights")
        self.lm_model = apply_lm_training(self.lm_model, cfg.lm, quantized=quant is not None)
        # lm.loss_logits: the loss from logits at the report positions only, where the LM's forward allows it
        mode = cfg.lm.get("loss_logits", "report")
        self.loss_path = loss_path(self.lm_model, mode, self.encoder_decoder)
        self.loss_chunk = chunk_size(cfg.lm.get("loss_chunk", 1024))
        rank_zero_info(f"lm.loss_logits={mode}: the loss from {describe_loss(self.loss_path, mode)}")
        self.train()  # from_pretrained leaves the LM in eval mode, and Lightning keeps the modes it finds
        c = count_params(self)
        rank_zero_info(
            "parameters: " + ", ".join(f"{k} {t:,}/{n:,} trainable" for k, (t, n) in c.items())
        )

    # --- what trains ---------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if self.encoder_mode == "frozen":
            self.encoder.eval()
        elif self.encoder_mode == "lora":  # base weights are fixed: keep BatchNorm statistics fixed too
            for m in self.encoder.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def persistent_keys(self) -> set[str]:
        """State-dict keys a checkpoint must hold: everything that the config alone cannot rebuild."""
        full = ["lm_proj.", "lm_norm.", "finding_head.", "study_marker.", "view_marker."]
        if self.encoder_mode == "full" or not self.cfg.encoder.pretrained:
            full.append("encoder.")  # trained fully, or random init that no config reproduces
        if not self.cfg.lm.freeze:
            full.append("lm_model.")
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k for k in self.state_dict() if k.startswith(tuple(full)) or k in trainable}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.persistent_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["r2gen"] = payload(self.cfg, keep, self.lm_identity)  # format, kept keys, config (r2gen.checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        missing = self.persistent_keys() - set(checkpoint["state_dict"])
        if missing:
            raise InputError(f"checkpoint lacks {len(missing)} weights this config trains (e.g. {sorted(missing)[:3]}); "
                             "it was saved with a different encoder/lm/align config")

    # --- forward -------------------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_model.get_input_embeddings()(ids)

    def image_tokens(self, images: torch.Tensor | None, view_mask: torch.Tensor, features: torch.Tensor | None = None):
        """The encoder's fused tokens [B, T, C] + mask [B, T], from images [B, V, 3, H, W] or, with a feature cache,
        from the frozen encoder's stored per-view tokens `features` [B, V, L, C]."""
        if features is not None:  # the encoder is skipped: it is frozen, and these are its outputs
            return self.encoder.fuse(features.to(self.lm_proj.weight.dtype), view_mask)
        with torch.set_grad_enabled(self.encoder_mode != "frozen" and torch.is_grad_enabled()):
            return self.encoder(images, view_mask)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Image tokens in the LM's embedding space, [B, T, H]."""
        x = self.lm_norm(self.lm_proj(tokens))
        return x.to(self.lm_model.get_input_embeddings().weight.dtype)

    def encode_images(self, images: torch.Tensor | None, view_mask: torch.Tensor,
                      features: torch.Tensor | None = None):
        """Image tokens in the LM's embedding space, [B, T, H] + [B, T] mask."""
        tokens, mask = self.image_tokens(images, view_mask, features)
        return self.project(tokens), mask

    def visual_tokens(self, batch: dict[str, Any], tokens: torch.Tensor, mask: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """The image tokens the LM reads, [B, T', H] + mask: the current study's (`tokens`, `mask` from
        `image_tokens`) projected; with context.prior_images, the prior study's before them, through the same encoder
        and projection, each span plus its study marker, and a study without a prior's span masked out; with
        context.view_positions, each span's tokens plus their views' markers (`view_marks`)."""
        img = self.project(tokens)
        if self.view_marker is not None:
            img = img + self.view_marks(self._needed(batch, "view_positions"), batch["view_mask"], img)
        if self.study_marker is None:
            return img, mask
        prior_views = self._needed(batch, "prior_view_mask")
        p_tok, p_mask = self.image_tokens(batch.get("prior_images"), prior_views, batch.get("prior_features"))
        p_img = self.project(p_tok)
        if self.view_marker is not None:
            p_img = p_img + self.view_marks(self._needed(batch, "prior_view_positions"), prior_views, p_img)
        return with_prior(img, mask, p_img, p_mask, prior_views, self.study_marker.weight)

    def view_marks(self, positions: torch.Tensor, view_mask: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        """What `view_marker` adds to one study span's projected image tokens `img` [B, T, H]: each token gets the
        marker of the view it came from (`positions` [B, V] ids), an absent view (`view_mask` [B, V] False) none.

        It is added here, in the LM's embedding space after `lm_proj` and `lm_norm` (as the study marker), not to
        the encoder's per-view tokens before `encoder.fuse`: the LayerNorm would rescale it with each token, and the
        encoder (and the feature cache, which stores its per-view tokens) stays as it is. Both fusions get what a
        marker added to each view's tokens before fusion would give: `concat` keeps the views' L tokens side by
        side ([B, V*L, H], view by view), so view v's tokens get v's marker; `mean` averages the present views'
        tokens into L tokens, and the mean of (token + its view's marker) is the mean token plus the mean marker,
        so each fused token gets the mean of the present views' markers (a PA + LATERAL study's differs from a
        PA-only one's). Returns [B, V*L, H] (concat) or [B, 1, H] (mean, added to each of the L tokens)."""
        present = view_mask.to(img.dtype)[:, :, None]  # [B, V, 1]
        marks = self.view_marker(positions).to(img.dtype) * present  # [B, V, H]
        if self.encoder.fusion == "mean":
            return (marks.sum(1) / present.sum(1).clamp_min(1))[:, None]  # [B, 1, H]
        return marks.repeat_interleave(img.shape[1] // positions.shape[1], dim=1)  # [B, V*L, H]

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """`lm`: the LM's loss of the reports (`target_ids`, `target_lengths`: r2gen.data.collate) given the images
        (or their cached features) and the study's context (context.*); with `data.finding_loss`, `finding`: BCE of
        the labeler's findings (`finding_labels`) predicted from the mean image token; `loss`: lm +
        data.finding_loss * finding."""
        tokens, mask = self.image_tokens(batch.get("images"), batch["view_mask"], batch.get("features"))
        img, img_mask = self.visual_tokens(batch, tokens, mask)
        inputs = lm_inputs(self.embed, self.prompt, img, img_mask, batch["target_ids"],
                           batch["target_lengths"], self.encoder_decoder, self._context(batch))
        out = {"lm": report_loss(self.lm_model, inputs, self.loss_path, self.loss_chunk)}
        out["loss"] = out["lm"]
        if self.finding_head is not None and "finding_labels" in batch:
            out["finding"] = self.finding_head.loss(tokens, mask, batch["finding_labels"])
            out["loss"] = out["lm"] + self.cfg.data.finding_loss * out["finding"]
        return out

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """The training loss (see `losses`)."""
        return self.losses(batch)["loss"]

    def _context(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The batch's context tokens for a model that reads them (context.*: r2gen.data.context); a batch without
        them for such a model is an error, not a report written without the context it learned to read."""
        if not self.context.parts:
            return None
        context = context_of(batch)
        if context is None:
            raise self._without_context()
        return context

    def _needed(self, batch: dict[str, Any], key: str) -> torch.Tensor:
        """`batch[key]`, which this model's context needs (context.prior_images, context.view_positions)."""
        if key not in batch:
            raise self._without_context()
        return batch[key]

    def _without_context(self) -> InputError:
        """The error for a batch that lacks the context this model reads (predict.py, the app)."""
        return InputError(f"this model reads each study's {', '.join(self.context.switched_on)} (it was trained "
                          f"with context.{'/'.join(self.context.switched_on)}=true), which these studies do not come "
                          f"with: give it (predict.py, the app and an exported folder's generate_reports take a "
                          f"study's indication, comparison and prior study; evaluate.py a data set whose studies "
                          f"carry them)")

    @torch.no_grad()
    def generate(self, images: torch.Tensor | None, view_mask: torch.Tensor,
                 features: torch.Tensor | None = None, batch: dict[str, Any] | None = None) -> list[str]:
        """Reports for a batch of studies (images, or cached `features`) as people read them: cleaned with the data
        set's policy, then detokenized (`no pneumothorax.`; r2gen.data.clean). `self.clean` of one gives the text
        scoring sees (`no pneumothorax .`). `batch`: the collated batch, for the context tokens of a model that
        reads them."""
        tokens, mask = self.image_tokens(images, view_mask, features)
        img, mask = self.visual_tokens(batch or {}, tokens, mask)
        inputs = lm_inputs(self.embed, self.prompt, img, mask, encoder_decoder=self.encoder_decoder,
                           context=self._context(batch or {}))
        out = self.lm_model.generate(**inputs, generation_config=self.gen_config)
        return decode_reports(self.tokenizer, out, self.clean, self.encoder_decoder)

    # --- loops ---------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        losses = self.losses(batch)
        n = len(batch["ids"])
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=n)
        if "finding" in losses:
            self.log_dict({"train/lm_loss": losses["lm"], "train/finding_loss": losses["finding"]}, batch_size=n)
        return losses["loss"]

    def validation_step(self, batch, batch_idx) -> list[str]:
        """The batch's generated reports as scored (cleaned, like the references); the evaluation callback
        (r2gen.scoring.callback) records and scores them, and the results files show them detokenized."""
        return [self.clean(t) for t in self.generate(batch.get("images"), batch["view_mask"], batch.get("features"),
                                                     batch)]

    def test_step(self, batch, batch_idx) -> list[str]:
        return self.validation_step(batch, batch_idx)

    def predict_step(self, batch, batch_idx) -> list[str]:
        """The batch's reports as people read them (predict.py, the app)."""
        return self.generate(batch.get("images"), batch["view_mask"], batch.get("features"), batch)

    # --- optimisation --------------------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.cfg.optim
        head = [self.finding_head] if self.finding_head is not None else []
        head += [m for m in (self.study_marker, self.view_marker) if m is not None]
        parts = {"proj": (o.lr, [self.lm_proj, self.lm_norm, *head]), "encoder": (o.encoder_lr, [self.encoder]),
                 "lm": (o.lm_lr, [self.lm_model])}
        groups = []
        for name, (lr, mods) in parts.items():
            params = [p for m in mods for p in m.parameters() if p.requires_grad]
            decay = [p for p in params if p.ndim >= 2]  # no weight decay on biases and norm weights
            rest = [p for p in params if p.ndim < 2]
            groups += [{"params": ps, "lr": lr, "weight_decay": wd, "name": f"{name}{sfx}"}
                       for ps, wd, sfx in ((decay, o.weight_decay, ""), (rest, 0.0, "_no_decay")) if ps]
        opt = torch.optim.AdamW(groups, betas=tuple(o.betas), eps=o.eps)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(o.warmup_ratio * total)
        floor = o.min_lr_ratio

        def factor(step: int) -> float:  # linear warmup, then cosine down to min_lr_ratio * lr
            if step < warmup:
                return (step + 1) / warmup
            t = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
