"""Read a checkpoint's weights shard by shard and write them renamed as safetensors: what every converter shares.

A source is `*.safetensors` or `pytorch_model*.bin`, one file or shards listed by an `*.index.json`; `.bin` files
are read with `torch.load(weights_only=True)` (no pickled code runs). Only one shard is in memory at a time, so a
12 GB model converts without holding it twice.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

from r2gen.errors import InputError, MissingFileError

# (source name, tensor) -> [(target name, tensor)]: [] drops it
Mapper = Callable[[str, torch.Tensor], list[tuple[str, torch.Tensor]]]
FIX = "copy the complete checkpoint (config.json, every weight shard and its index) into that folder"


def read_json(path: Path) -> dict:
    """A checkpoint's JSON file (config.json, generation_config.json, ...) as a dict; anything else is an InputError
    naming the file."""
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
