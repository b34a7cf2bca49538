"""What every converter shares: read a checkpoint's weights shard by shard and write them renamed as safetensors,
and write the rest of the converted folder (the native config, the tokenizer, generation_config.json).

A source is `*.safetensors` or `pytorch_model*.bin`, one file or shards listed by an `*.index.json`; `.bin` files
are read with `torch.load(weights_only=True)` (no pickled code runs). Only one shard is in memory at a time, so a
12 GB model converts without holding it twice.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from r2gen.errors import InputError, MissingFileError

# (source name, tensor) -> [(target name, tensor)]: [] drops it
Mapper = Callable[[str, torch.Tensor], list[tuple[str, torch.Tensor]]]
FIX = "copy the complete checkpoint (config.json, every weight shard and its index) into that folder"


def read_json(path: Path, optional: bool = False) -> dict:
    """A checkpoint's JSON file (config.json, generation_config.json, ...) as a dict; anything else is an InputError
    naming the file. `optional`: a file the checkpoint leaves out reads as {}."""
    if optional and not Path(path).is_file():
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except ValueError as e:
        raise InputError(f"{path}: not valid JSON ({e}); copy the model's own file there") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a JSON object; copy the model's own file there")
    return data


def weight_files(folder: Path) -> list[Path]:
    """The weight files of the checkpoint in `folder`, in shard order: safetensors when there are any, else .bin."""
    for index, pattern in (("model.safetensors.index.json", "*.safetensors"),
                           ("pytorch_model.bin.index.json", "pytorch_model*.bin")):
        if (folder / index).is_file():
            try:
                weight_map = json.loads((folder / index).read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise InputError(f"{folder / index}: not a weight index ({e!r}); {FIX}") from None
            files = [folder / name for name in dict.fromkeys(sorted(weight_map.values()))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise MissingFileError(f"{folder}: shard {missing[0]} named by {index} is missing "
                                       f"({len(missing)} of {len(files)} absent); {FIX}")
            return files
        files = sorted(folder.glob(pattern))
        if files:
            return files
    raise MissingFileError(f"{folder}: no weights (model.safetensors, model-*.safetensors or pytorch_model*.bin); {FIX}")


def checked_weights(folder: Path, shapes: dict[str, tuple[int, ...]], model: str,
                    optional: Callable[[str], object] = lambda name: False, foreign: str = "an adapter or another model",
                    explain: dict[str, str] | None = None) -> list[Path]:
    """The weight files of the checkpoint in `folder` (`weight_files`), their tensor names checked against `shapes`
    (the family's layout, from config.json): none missing but those `optional` allows, none unexpected. Else an
    InputError on the first: `model` names the family in the fix, `foreign` what an unexpected tensor may be, and
    `explain` holds the message for an unexpected tensor of that name."""
    files, explain = weight_files(folder), explain or {}
    names = tensor_names(files)
    missing = sorted(k for k in set(shapes) - set(names) if not optional(k))
    unexpected = sorted(set(names) - set(shapes))
    if missing:
        raise InputError(f"{folder}: the weights lack {missing[0]} ({len(missing)} tensors missing): an incomplete "
                         f"or different checkpoint; copy every weight shard of the {model} model there")
    for name in unexpected:
        if name in explain:
            raise InputError(f"{folder}/{names[name].name}: {explain[name]}")
    if unexpected:
        raise InputError(f"{folder}/{names[unexpected[0]].name}: unexpected tensor {unexpected[0]} "
                         f"({len(unexpected)} not in {model}'s layout, e.g. {foreign}); "
                         f"convert the plain {model} checkpoint (merge adapters into it first)")
    return files


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a truncated download, an old pickle format, or a file that holds code
        raise InputError(f"{path}: cannot be read as a weights-only PyTorch checkpoint "
                         f"({str(e).strip().splitlines()[0]}); re-download it, or use the model's .safetensors") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise InputError(f"{path}: not a state dict of tensors; re-download it, or use the model's .safetensors")
    return state


def tensor_names(files: Iterable[Path]) -> dict[str, Path]:
    """Every tensor name in `files` -> the file that holds it (safetensors: read from the headers only)."""
    from safetensors import safe_open

    names: dict[str, Path] = {}
    for f in files:
        if f.suffix == ".safetensors":
            try:
                with safe_open(f, framework="pt") as st:
                    keys = list(st.keys())
            except Exception as e:  # safetensors raises its own error types for a damaged header
                raise InputError(f"{f}: not a readable safetensors file ({str(e).splitlines()[0]}); re-download it") from None
        else:
            keys = list(_load_bin(f))
        for k in keys:
            if k in names:
                raise InputError(f"{f}: tensor {k} is also in {names[k].name}; the shards are from different checkpoints")
            names[k] = f
    return names


def iter_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for each tensor in one weight file, in its stored dtype."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(path, framework="pt") as st:
            for k in st.keys():
                yield k, st.get_tensor(k)
    else:
        yield from _load_bin(path).items()


# torch dtype -> safetensors' name for it
DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write `tensors` in the safetensors format, one tensor's bytes at a time: unlike `save_file`, which first
    copies the whole shard into one buffer, this needs no memory beyond the tensors themselves (views of one
    tensor, such as the split q/k/v, are fine)."""
    import struct

    if sys.byteorder != "little":  # safetensors stores little-endian; r2gen has only met little-endian machines
        raise NotImplementedError("writing safetensors on a big-endian machine")
    header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for t in tensors.values():
            f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)


def convert_shards(files: list[Path], mapper: Mapper, out: Path, shapes: dict[str, tuple[int, ...]]) -> int:
    """Write each source shard's tensors, renamed by `mapper`, as one safetensors shard in `out` (plus an index when
    there are several): one shard in memory at a time. `shapes`: the shape every source tensor must have (from
    config.json). Returns the bytes of tensor data written."""
    n, weight_map, total = len(files), {}, 0
    for i, f in enumerate(files):
        name = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        shard: dict[str, torch.Tensor] = {}
        for key, t in iter_tensors(f):
            if tuple(t.shape) != shapes[key]:
                raise InputError(f"{f}: {key} has shape {list(t.shape)}, but config.json implies "
                                 f"{list(shapes[key])}: the weights and config.json are from different models")
            for new, v in mapper(key, t):
                shard[new] = v
                weight_map[new] = name
                total += v.numel() * v.element_size()
        write_safetensors(out / name, shard)
        del shard
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return total


# --- the rest of the converted folder ------------------------------------------------------------------------------
# the settings LlamaConfig takes under the names InternLM2's and Baichuan2's config.json give them too
LLAMA_KEYS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "hidden_act", "max_position_embeddings", "rms_norm_eps", "bos_token_id", "eos_token_id", "pad_token_id"]


def native_config(cls: type, source: dict[str, Any], **settings):
    """The transformers config `cls` (`LlamaConfig`, `GlmConfig`) of `settings` as a converter writes it: the KV
    cache on, its `...ForCausalLM` class as the architecture, and the dtype `source` (the checkpoint's config.json or
    its settings) names as torch_dtype or dtype (else float32)."""
    config = cls(**settings, use_cache=True)
    config.architectures = [cls.__name__.removesuffix("Config") + "ForCausalLM"]
    config.dtype = source.get("torch_dtype") or source.get("dtype") or "float32"
    return config


def native_llama_config(c: dict[str, Any], **settings):
    """The `LlamaConfig` of settings `c` named as LLaMA names them (`LLAMA_KEYS`), with whole heads and no MLP bias;
    `settings`: what the family decides (key/value heads, attention bias, tied embeddings, the rope)."""
    from transformers import LlamaConfig

    return native_config(LlamaConfig, c, **{k: c[k] for k in LLAMA_KEYS},
                         head_dim=c["hidden_size"] // c["num_attention_heads"], mlp_bias=False, **settings)


def eos_and_pad(gen: dict[str, Any], eos: int | list[int], ends: list[int], pad: int | None) -> dict[str, Any]:
    """A generation config of only the token ids (decoding settings are r2gen's `generate.*`): the eos ids of `gen`
    (the checkpoint's generation_config.json; else `eos`), then `ends` (where the family's chat() also stops), each
    once; and `pad`."""
    first = gen.get("eos_token_id", eos)
    first = [first] if isinstance(first, int) else list(first)
    return {"eos_token_id": list(dict.fromkeys(first + ends)), "pad_token_id": pad}


def write_folder(out: Path, files: list[Path], mapper: Mapper, shapes: dict[str, tuple[int, ...]], config, tokenizer,
                 generation: dict[str, Any]) -> None:
    """Write the converted folder into `out`: the weights of `files` renamed by `mapper` (`convert_shards`), the
    native `config`, the `tokenizer`, and generation_config.json holding `generation`."""
    from transformers import GenerationConfig

    convert_shards(files, mapper, out, shapes)
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    GenerationConfig.from_dict(generation).save_pretrained(out)
