"""BERTScore (Zhang et al. 2020) of generated reports against their references, from a model folder the user has.

Computed by the `bert-score` package (`bert_score.BERTScorer`, the `bertscore` extra) from `eval.bertscore`, a local
Hugging Face model folder (config.json, weights, tokenizer files, e.g. what `hf download roberta-large --local-dir
<folder>` wrote). Nothing is downloaded: the folder's path is the scorer's `model_type`, which transformers reads
from disk; `num_layers` is always given, so bert_score never looks the name up in its `model2layers` table (a
KeyError for a path); a baseline file is always given by path. Per study: precision, recall and F1 of greedy
cosine matching between the two texts' token embeddings at one layer; the corpus score is their mean over studies.

The choices, all recorded by `describe()` (for metrics.json):

* layer (`eval.bertscore_layer`): null takes bert_score's tuned layer when the folder is named like a model of its
  table (`roberta-large` -> 17, `distilroberta-base` -> 5, `microsoft/deberta-xlarge-mnli` -> folder
  `deberta-xlarge-mnli` -> 40), else the model's last layer. 0 is the embeddings.
* rescaling (`eval.bertscore_rescale`): null rescales, `(score - b) / (1 - b)`, only when the folder holds a
  bert_score baseline file, `rescale_baseline.tsv` (its CSV: `LAYER,P,R,F`, one row per layer); true also accepts
  bert_score's own English baseline for a model of its table; false never rescales. Rescaled scores can be negative.
* idf weighting (`eval.bertscore_idf`): off, bert_score's default; on, its weights come from the references of the
  corpus being scored, as `bert_score.score(idf=True)` does.
* batch size (`eval.bertscore_batch_size`): 64, bert_score's default; it changes speed, not scores.

Empty texts: bert_score scores a pair with an empty side as raw P = R = F = 0 (then rescaled like any other), but
its path for an empty text calls a tokenizer method transformers 5 removed (`build_inputs_with_special_tokens`), so
such pairs get that value here without reaching bert_score, and idf comes from the non-empty references.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from r2gen.errors import ConfigError, InputError, MissingFileError

METRIC_NAMES = ("BERTScore_P", "BERTScore_R", "BERTScore_F1")
BASELINE_FILE = "rescale_baseline.tsv"
DEFAULT_BATCH_SIZE = 64
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")
_EXTRA = 'pip install "r2gen[bertscore]" (a checkout: pip install -e ".[bertscore]")'


def _bert_score():
    """The bert_score package, or one line naming the extra that installs it."""
    try:
        import bert_score
        import bert_score.utils
    except ModuleNotFoundError as e:
        raise ConfigError(f"eval.bertscore needs the bert-score package ({e}): {_EXTRA}") from None
    return bert_score


@dataclass(frozen=True)
class Settings:
    """How BERTScore is computed, resolved from `eval.bertscore*` and the folder (its config.json, its name)."""

    folder: Path
    layer: int
    layer_from: str
    layers_in_model: int
    rescale: bool
    baseline: Path | None
    baseline_from: str | None
    idf: bool
    batch_size: int

    def describe(self) -> dict:
        """What metrics.json records about the BERTScore numbers beside it."""
        from bert_score.utils import get_hash

        version = importlib.metadata.version("bert-score")
        return {"model": self.folder.name, "layer": self.layer, "layer_from": self.layer_from,
                "layers_in_model": self.layers_in_model, "idf": self.idf, "rescaled": self.rescale,
                "baseline": self.baseline_from, "batch_size": self.batch_size, "package": f"bert-score {version}",
                # bert_score's own signature of the setting, with the folder's name for the model
                "hash": get_hash(self.folder.name, self.layer, self.idf, self.rescale,
                                 self.baseline == self.folder / BASELINE_FILE, False)}


def settings(folder: str | Path, layer: int | None = None, rescale: bool | None = None, idf: bool = False,
             batch_size: int = DEFAULT_BATCH_SIZE) -> Settings:
    """Check the folder and resolve the layer and the baseline (module docstring); reads no weights."""
    bert_score = _bert_score()
    model2layers = bert_score.utils.model2layers
    path = Path(str(folder)).expanduser()
    if not (path / "config.json").is_file():
        raise MissingFileError(f"eval.bertscore={folder}: no config.json there; give a local Hugging Face model folder "
                               "(config.json, weights, tokenizer files), or set eval.bertscore=null")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise MissingFileError(f"eval.bertscore={folder}: no tokenizer files there ({', '.join(TOKENIZER_FILES)})")
    if not (any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))):
        raise MissingFileError(f"eval.bertscore={folder}: no weights there (*.safetensors or pytorch_model*.bin)")
    config = json.loads((path / "config.json").read_text())
    n = config.get("num_hidden_layers", config.get("n_layers", config.get("num_layers")))
    if not isinstance(n, int):
        raise InputError(f"eval.bertscore={folder}: config.json gives no layer count (num_hidden_layers)")
    known = {name.split("/")[-1]: name for name in model2layers}.get(path.name)  # the table's name for this folder

    if layer is not None:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= n:
            raise ConfigError(f"eval.bertscore_layer={layer}: choose 0 (the embeddings) to {n} ({path.name} has {n} "
                              "layers), or null")
        layer_from = "eval.bertscore_layer"
    elif known is not None and model2layers[known] <= n:
        layer, layer_from = model2layers[known], f"bert_score's tuned layer for {known}"
    else:
        layer, layer_from = n, "the model's last layer"

    own = path / BASELINE_FILE
    packaged = Path(bert_score.__file__).parent / "rescale_baseline" / "en" / f"{known}.tsv" if known else None
    if rescale is None:
        rescale = own.is_file()
    if not rescale:
        baseline, baseline_from = None, None
    elif own.is_file():
        baseline, baseline_from = own, f"{BASELINE_FILE} in the model folder"
    elif packaged is not None and packaged.is_file():
        baseline, baseline_from = packaged, f"bert_score's English baseline for {known}"
    else:
        raise ConfigError(f"eval.bertscore_rescale=true: no baseline for {path.name}; put bert_score's baseline file "
                          f"(CSV LAYER,P,R,F, one row per layer) at {own}, or set eval.bertscore_rescale=false")
    if baseline is not None:
        with baseline.open() as f:
            rows = sum(1 for _ in csv.DictReader(f))
        if rows <= layer:
            raise InputError(f"{baseline}: {rows} baseline rows, none for layer {layer}: it is for another model")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"eval.bertscore_batch_size={batch_size}: give a positive integer")
    return Settings(path, layer, layer_from, n, bool(rescale), baseline, baseline_from, bool(idf), batch_size)


def _checked(predictions: Sequence[str], references: Sequence[str]) -> tuple[list[str], list[str]]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references: they must pair up")
    if not predictions:
        raise ValueError("cannot score an empty corpus: no predictions and no references given")
    for t in (*predictions, *references):
        if not isinstance(t, str):
            raise TypeError(f"reports must be str, got {type(t).__name__}: {t!r}")
    return list(predictions), list(references)


class BERTScore:
    """`BERTScore(folder).per_study(predictions, references)` -> {metric: per-study values}; the model stays loaded."""

    def __init__(self, folder: str | Path, *, layer: int | None = None, rescale: bool | None = None,
                 idf: bool = False, batch_size: int = DEFAULT_BATCH_SIZE, device: str | None = None):
        bert_score = _bert_score()
        self.settings = s = settings(folder, layer, rescale, idf, batch_size)
        self.scorer = bert_score.BERTScorer(
            model_type=str(s.folder), num_layers=s.layer, batch_size=s.batch_size, idf=s.idf, device=device,
            lang="en" if s.rescale else None,  # asked for whenever rescaling; the baseline is given by path
            rescale_with_baseline=s.rescale, baseline_path=str(s.baseline) if s.baseline else None,
            nthreads=0)  # idf counts in this process: no worker pool forked from a training run
        if s.rescale:  # read the baseline now: a bad file fails here, not after the model has run
            with warnings.catch_warnings():  # torch on pandas 3's read-only arrays; the values are only read
                warnings.simplefilter("ignore", UserWarning)
                self.scorer.baseline_vals  # noqa: B018
        tokenizer, config = self.scorer._tokenizer, getattr(self.scorer._model, "config", None)
        # a tokenizer saved without model_max_length truncates nothing; keep texts within the position table
        positions = getattr(config, "max_position_embeddings", None)
        if isinstance(positions, int):
            limit = positions - (2 if "roberta" in config.model_type or config.model_type == "camembert" else 0)
            tokenizer.model_max_length = min(tokenizer.model_max_length, limit)

    def describe(self) -> dict:
        return self.settings.describe()

    def per_study(self, predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
        preds, refs = _checked(predictions, references)
        scored = [i for i, (p, r) in enumerate(zip(preds, refs, strict=True)) if p.strip() and r.strip()]
        if self.settings.idf:
            with warnings.catch_warnings():  # "Overwriting the previous importance weights": one corpus each call
                warnings.simplefilter("ignore")
                self.scorer.compute_idf([r for r in refs if r.strip()])
        empty = [0.0, 0.0, 0.0]  # bert_score's raw P, R, F for a pair with an empty side
        if self.settings.rescale:
            b = self.scorer.baseline_vals.tolist()
            empty = [(0.0 - v) / (1.0 - v) for v in b]
        rows = [list(empty) for _ in preds]
        if scored:
            p, r, f = self.scorer.score([preds[i] for i in scored], [refs[i] for i in scored],
                                        batch_size=self.settings.batch_size)
            for i, row in zip(scored, zip(p.tolist(), r.tolist(), f.tolist(), strict=True), strict=True):
                rows[i] = list(row)
        return {name: [row[k] for row in rows] for k, name in enumerate(METRIC_NAMES)}


def corpus_means(per_study: dict[str, list[float]]) -> dict[str, float]:
    """The corpus score of each metric: the mean of its per-study values."""
    return {k: sum(v) / len(v) for k, v in per_study.items()}


def bertscore_per_study(predictions: Sequence[str], references: Sequence[str], folder: str | Path,
                        **opts) -> dict[str, list[float]]:
    """BERTScore_P / _R / _F1 of each study; `opts` as `BERTScore` (layer, rescale, idf, batch_size, device). Loads
    the model on each call: keep a `BERTScore` to score more than one corpus."""
    return BERTScore(folder, **opts).per_study(predictions, references)


def describe(folder: str | Path, **opts) -> dict:
    """What metrics.json records about how BERTScore is computed; `opts` as `settings` (no model is loaded)."""
    return settings(folder, **opts).describe()
