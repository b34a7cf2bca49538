"""What trains: the encoder per `align.encoder` (frozen / lora / full) and the LM per `lm.freeze` / `lm.lora`,
with activation (gradient) checkpointing and k-bit preparation of a quantized LM."""

from __future__ import annotations

from torch import nn

from r2gen.errors import ConfigError

ENCODER_MODES = ("frozen", "lora", "full")
# Non-reentrant checkpointing works when the inputs (our inputs_embeds) need no grad and with frozen layers.
GC_KWARGS = {"use_reentrant": False}


def _lora_config(lora, where: str, **extra):
    from peft import LoraConfig

    targets = lora.target_modules
    if not targets:
        raise ConfigError(f"{where}.target_modules is empty: name the modules LoRA adapts (a list or a regex)")
    targets = targets if isinstance(targets, str) else list(targets)
    return LoraConfig(r=int(lora.r), lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, **extra)


def apply_align(encoder: nn.Module, align) -> str:
    """Freeze the encoder, add LoRA to it, or leave it fully trainable. Returns the mode."""
    mode = align.encoder
    if mode not in ENCODER_MODES:
        raise ConfigError(f"align.encoder={mode!r}: choose {', '.join(ENCODER_MODES)} (or pick align=shallow|delta|deep)")
    if mode == "full":
        encoder.requires_grad_(True)
        return mode
    encoder.requires_grad_(False)
    if mode == "lora":
        from peft import inject_adapter_in_model

        inject_adapter_in_model(_lora_config(align.lora, "align.lora"), encoder.model)
        for name, p in encoder.named_parameters():
            p.requires_grad_("lora_" in name)
    return mode


def _enable_checkpointing(lm: nn.Module) -> None:
    enable = getattr(lm, "activation_checkpointing_enable", None)  # transformers' new name (5.x); the old one warns
    if enable is not None:
        enable(activation_checkpointing_kwargs=GC_KWARGS)
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=GC_KWARGS)


def apply_lm_training(lm: nn.Module, lm_cfg, quantized: bool = False) -> nn.Module:
    """Train the LM fully (`lm.freeze=false`), freeze it, or freeze it and add LoRA (`lm.lora.r>0`).

    `lm.gradient_checkpointing` recomputes activations in backward instead of storing them. A quantized LM
    is prepared with peft's `prepare_model_for_kbit_training` (norms and embeddings in float32) before LoRA.
    """
    lora = lm_cfg.get("lora")
    use_lora = bool(lora) and int(lora.r) > 0
    checkpointing = lm_cfg.gradient_checkpointing
    if not isinstance(checkpointing, bool):
        raise ConfigError(f"lm.gradient_checkpointing={checkpointing!r}: choose true or false")
    if checkpointing and not getattr(lm, "supports_gradient_checkpointing", False):
        raise ConfigError(f"lm.gradient_checkpointing=true but {type(lm).__name__} does not support it: set it to false")
    if not lm_cfg.freeze:
        if use_lora:
            raise ConfigError("lm.freeze=false trains the whole LM, and lm.lora.r>0 adds LoRA to a frozen one: "
                              "set lm.lora.r=0 or lm.freeze=true")
        lm.requires_grad_(True)
        if checkpointing:
            _enable_checkpointing(lm)
        return lm
    lm.requires_grad_(False)
    if quantized:  # freezes everything, upcasts norms/embeddings to float32 for stable k-bit training
        from peft import prepare_model_for_kbit_training

        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=False)
    if checkpointing:
        _enable_checkpointing(lm)
        lm.enable_input_require_grads()  # a frozen first layer would otherwise cut the graph at a checkpoint
    if not use_lora:
        return lm
    from peft import get_peft_model

    task = "SEQ_2_SEQ_LM" if getattr(lm.config, "is_encoder_decoder", False) else "CAUSAL_LM"
    return get_peft_model(lm, _lora_config(lora, "lm.lora", task_type=task))


def count_params(module) -> dict[str, tuple[int, int]]:
    """{part: (trainable, total)} for the encoder, the projection, the LM, the finding head, the study and view
    markers (if any) and all."""
    parts = {"encoder": [module.encoder], "projection": [module.lm_proj, module.lm_norm], "lm": [module.lm_model]}
    if getattr(module, "finding_head", None) is not None:
        parts["finding head"] = [module.finding_head]
    if getattr(module, "study_marker", None) is not None:
        parts["study markers"] = [module.study_marker]
    if getattr(module, "view_marker", None) is not None:
        parts["view markers"] = [module.view_marker]
    out = {}
    for name, mods in parts.items():
        ps = [p for m in mods for p in m.parameters()]
        out[name] = (sum(p.numel() for p in ps if p.requires_grad), sum(p.numel() for p in ps))
    out["all"] = (sum(t for t, _ in out.values()), sum(n for _, n in out.values()))
    return out
