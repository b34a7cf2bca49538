"""RadGraph F1 of generated reports against their references, as the RadGraph authors define it, from local weights.

Computed by the `radgraph` package (Stanford-AIMI, the `radgraph` extra): its `RadGraph` annotates each report
(entities: a token span and a label such as "Observation::definitely present"; relations between them) and its
`compute_reward` gives the three F1 scores of `F1RadGraph(reward_level="all")` (Delbrouck et al. 2022) per study:

* `RadGraph_F1_simple` (RG_E): F1 of the sets of (entity tokens, label);
* `RadGraph_F1_partial` (RG_ER, the one papers report most): the same with "has a relation" in each item;
* `RadGraph_F1_complete` (RG_ER-bar): entities without relations as (tokens, label), each relation as (tokens,
  label, relation, target tokens).

A study whose prediction or reference is empty (or only whitespace), or one where either report has no entity,
scores 0 at every level, as in `F1RadGraph`; the corpus score is the mean over studies. The package itself
computes every value: here each distinct text is annotated once per process (the references are the same at
every validation), which gives `F1RadGraph`'s numbers because the package annotates one report at a time.

`eval.radgraph` is a folder of one RadGraph model as the package unpacks it (`radgraph-xl.tar.gz` and its siblings
from the StanfordAIMI/RRG_scorers hub repo): `config.json` (AllenNLP), `vocabulary/`, `weights.th`; or a folder
holding one such model folder by its package name (the package's cache, `~/.cache/radgraph/<version>/`). The
model type (radgraph, radgraph-xl, modern-radgraph-xl, echograph: it picks the text preprocessing) is read from
`vocabulary/<type>__ner_labels.txt`. The config names a transformer by its hub id (its `model_name`); its
config.json and tokenizer files (not its weights: weights.th holds them) are looked for in `<model folder>/<hub
id>/`, then as an absolute path, then in the local Hugging Face cache, never downloaded. The package would download the
model when its folder is missing or empty; r2gen only hands it a complete one.

radgraph 0.1.18 (the newest) predates transformers 5: its bundled AllenNLP calls two tokenizer methods that
transformers 5 removed, `encode_plus` (whose arguments `__call__` takes) and `build_inputs_with_special_tokens` (the
tokenizer's special tokens around one sequence). While the model loads, r2gen hands the package's two loaders
(`radgraph.allennlp.common.cached_transformers.get` / `get_tokenizer`) the local folders, and gives each tokenizer
those two methods; nothing else of the package is changed.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from r2gen.errors import ConfigError, InputError, MissingFileError

METRIC_NAMES = ("RadGraph_F1_simple", "RadGraph_F1_partial", "RadGraph_F1_complete")  # compute_reward's "all" order
LEVELS = dict(zip(METRIC_NAMES, ("simple", "partial", "complete"), strict=True))
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model")
_EXTRA = 'pip install "r2gen[radgraph]" (a checkout: pip install -e ".[radgraph]")'


def _radgraph():
    """The radgraph package, or one line naming the extra that installs it."""
    try:
        import radgraph
        import radgraph.radgraph
        import radgraph.rewards
        from radgraph.allennlp.common import cached_transformers  # noqa: F401
    except ModuleNotFoundError as e:
        raise ConfigError(f"eval.radgraph needs the radgraph package ({e}): {_EXTRA}") from None
    return radgraph


@dataclass(frozen=True)
class ModelFolder:
    """A RadGraph model folder, checked: its type and the local folder of each transformer its config names."""

    folder: Path
    model_type: str
    transformers: dict[str, Path]  # hub id in config.json -> local folder

    def describe(self) -> dict:
        return {"model": self.folder.name, "model_type": self.model_type, "transformer": sorted(self.transformers),
                "levels": LEVELS, "package": f"radgraph {importlib.metadata.version('radgraph')}"}


def _transformer_folder(name: str, model_folder: Path, given: str) -> Path:
    from huggingface_hub import try_to_load_from_cache

    def usable(d: Path) -> bool:
        return (d / "config.json").is_file() and any((d / f).is_file() for f in TOKENIZER_FILES)

    given_path = Path(name).expanduser()
    for d in (model_folder / name, *([given_path] if given_path.is_absolute() else [])):
        if usable(d):
            return d
    try:
        cached = try_to_load_from_cache(name, "config.json")  # a lookup in the cache folder, no network
    except Exception:  # not a hub id (a path that is not there)
        cached = None
    if isinstance(cached, str) and usable(Path(cached).parent):
        return Path(cached).parent
    raise MissingFileError(f"eval.radgraph={given}: its config.json names the transformer {name!r}, not found; "
                           f"put that model's config.json and tokenizer files in {model_folder / name} (not its "
                           "weights: weights.th holds them)")


def model_folder(folder: str | Path) -> ModelFolder:
    """Check `eval.radgraph` (module docstring) without loading anything."""
    known = tuple(_radgraph().radgraph.MODEL_MAPPING)
    path = Path(str(folder)).expanduser()
    if not path.is_dir():
        raise MissingFileError(f"eval.radgraph={folder}: no such folder (a RadGraph model: config.json, vocabulary/, "
                               "weights.th), or set eval.radgraph=null")
    if not (path / "config.json").is_file():
        inside = [n for n in known if (path / n / "config.json").is_file()]
        if len(inside) > 1:
            raise ConfigError(f"eval.radgraph={folder}: holds {', '.join(inside)}; point it at one of them")
        path = path / inside[0] if inside else path
    missing = [f for f in ("config.json", "vocabulary", "weights.th") if not (path / f).exists()]
    if missing:
        raise MissingFileError(f"eval.radgraph={folder}: no {', '.join(missing)} there; give a RadGraph model folder "
                               "(radgraph-xl.tar.gz or a sibling from StanfordAIMI/RRG_scorers, unpacked)")
    types = sorted(f.name.removesuffix("__ner_labels.txt") for f in (path / "vocabulary").glob("*__ner_labels.txt"))
    if len(types) != 1 or types[0] not in known:
        raise InputError(f"eval.radgraph={folder}: vocabulary/ should name one model type ({', '.join(known)}) as "
                         f"<type>__ner_labels.txt, found {types or 'none'}")
    try:
        config = json.loads((path / "config.json").read_text())
        names = {config["dataset_reader"]["token_indexers"]["bert"]["model_name"],
                 config["model"]["embedder"]["token_embedders"]["bert"]["model_name"]}
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise InputError(f"eval.radgraph={folder}: config.json is not a RadGraph (DyGIE) config: {e!r}") from None
    return ModelFolder(path, types[0], {n: _transformer_folder(n, path, str(folder)) for n in sorted(names)})


def _with_removed_methods(tokenizer):
    """`tokenizer` with the two methods radgraph's AllenNLP calls, where transformers 5 no longer has them."""
    if not hasattr(tokenizer, "encode_plus"):
        tokenizer.encode_plus = tokenizer.__call__  # the same arguments, the same BatchEncoding
    if not hasattr(tokenizer, "build_inputs_with_special_tokens"):
        bare, full = tokenizer.encode("a", add_special_tokens=False), tokenizer.encode("a")
        at = next((i for i in range(len(full) - len(bare) + 1) if full[i:i + len(bare)] == bare), None)
        if not bare or at is None:
            raise InputError(f"{tokenizer.name_or_path}: cannot tell its special tokens (\"a\" encodes as {full})")
        start, end = full[:at], full[at + len(bare):]

        def build_inputs_with_special_tokens(token_ids_0, token_ids_1=None):
            if token_ids_1 is not None:
                raise NotImplementedError("one sequence only, as RadGraph's AllenNLP indexer asks")
            return [*start, *token_ids_0, *end]

        tokenizer.build_inputs_with_special_tokens = build_inputs_with_special_tokens
    return tokenizer


@contextlib.contextmanager
def local_transformers(folders: dict[str, Path]):
    """While a RadGraph loads: its AllenNLP loaders get local folders for the hub ids in `folders`, and tokenizers
    with the methods they call (module docstring). Not thread-safe: it swaps two functions of the package."""
    from radgraph.allennlp.common import cached_transformers as ct

    get, get_tokenizer = ct.get, ct.get_tokenizer
    local = {name: str(path) for name, path in folders.items()}

    def local_get(model_name, *args, **kwargs):
        return get(local.get(model_name, model_name), *args, **kwargs)

    def local_get_tokenizer(model_name, **kwargs):
        kwargs = {**kwargs, "local_files_only": True}
        return _with_removed_methods(get_tokenizer(local.get(model_name, model_name), **kwargs))

    ct.get, ct.get_tokenizer = local_get, local_get_tokenizer
    try:
        yield
    finally:
        ct.get, ct.get_tokenizer = get, get_tokenizer


def _cuda(device: str | int | None) -> int | None:
    """radgraph's `cuda` argument: None (its default: GPU 0 when there is one), -1 for the CPU, else a GPU index."""
    if device is None or isinstance(device, int):
        return device
    if device == "cpu":
        return -1
    if device == "cuda" or device.startswith("cuda:"):
        return int(device.partition(":")[2] or 0)
    raise ConfigError(f"device={device!r}: choose cpu, cuda or cuda:<index> for RadGraph")


def _checked(predictions: Sequence[str], references: Sequence[str]) -> tuple[list[str], list[str]]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references: they must pair up")
    if not predictions:
        raise ValueError("cannot score an empty corpus: no predictions and no references given")
    for t in (*predictions, *references):
        if not isinstance(t, str):
            raise TypeError(f"reports must be str, got {type(t).__name__}: {t!r}")
    return [t if t.strip() else "" for t in predictions], [t if t.strip() else "" for t in references]


class RadGraphF1:
    """`RadGraphF1(folder).per_study(predictions, references)` -> {metric: per-study values}; the model stays loaded
    and each distinct text is annotated once."""

    def __init__(self, folder: str | Path, device: str | int | None = None):
        radgraph = _radgraph()
        self.model = m = model_folder(folder)
        self._reward = radgraph.rewards.compute_reward
        with contextlib.ExitStack() as stack:
            if m.folder.name == m.model_type:
                cache = m.folder.parent  # the package reads <model_cache_dir>/<model_type>/
            else:
                cache = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="r2gen-radgraph-")))
                os.symlink(m.folder.resolve(), cache / m.model_type, target_is_directory=True)
            stack.enter_context(local_transformers(m.transformers))
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))  # "Using device: cpu"
            self.annotator = radgraph.RadGraph(model_type=m.model_type, model_cache_dir=str(cache), cuda=_cuda(device))
        self._cache: dict[str, dict] = {}

    def describe(self) -> dict:
        return self.model.describe()

    def annotate(self, texts: Sequence[str]) -> list[dict]:
        """The package's annotation of each (non-empty) text: {"text", "entities": {id: {tokens, label, relations}}}."""
        todo = sorted({t for t in texts if t not in self._cache})
        if todo:
            out = self.annotator(todo)  # {"0": annotation, "1": ...} in the order given
            for i, t in enumerate(todo):
                if str(i) not in out:
                    raise RuntimeError(f"radgraph gave no annotation for {t!r}")
                self._cache[t] = out[str(i)]
        return [self._cache[t] for t in texts]

    def per_study(self, predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
        preds, refs = _checked(predictions, references)
        self.annotate([t for t in (*preds, *refs) if t])
        rows = [self._reward(self._cache[p], self._cache[r], "all") if p and r else (0.0, 0.0, 0.0)
                for p, r in zip(preds, refs, strict=True)]
        return {name: [float(row[k]) for row in rows] for k, name in enumerate(METRIC_NAMES)}


def corpus_means(per_study: dict[str, list[float]]) -> dict[str, float]:
    """The corpus score of each metric: the mean of its per-study values."""
    return {k: sum(v) / len(v) for k, v in per_study.items()}


def radgraph_per_study(predictions: Sequence[str], references: Sequence[str], folder: str | Path,
                       device: str | int | None = None) -> dict[str, list[float]]:
    """RadGraph_F1_simple / _partial / _complete of each study. Loads the model on each call: keep a `RadGraphF1` to
    score more than one corpus."""
    return RadGraphF1(folder, device).per_study(predictions, references)


def describe(folder: str | Path) -> dict:
    """What metrics.json records about how RadGraph F1 is computed (no model is loaded)."""
    return model_folder(folder).describe()
