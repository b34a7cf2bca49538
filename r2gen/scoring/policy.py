"""Score a corpus of generated reports: NLG metrics (pycocoevalcap) and, where the data set has a labeler,
clinical scores from labelling predictions and references alike.

`Scoring` holds how a corpus is scored (labeler, reference protocol, uncertain-label policy, the weights that pick
the best checkpoint); validation during training, the test after training, `evaluate.py ckpt=...` and
`evaluate.py predictions=...` all build it from the config with `Scoring.from_config`, so they score alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from r2gen.data.synthetic import FINDINGS
from r2gen.errors import ConfigError
from r2gen.scoring.additive import Family, mean_family
from r2gen.scoring.bertscore import BERTScore
from r2gen.scoring.bertscore import describe as describe_bertscore
from r2gen.scoring.bootstrap import Bootstrap, intervals
from r2gen.scoring.chexpert import CHEXPERT_LABELS, ce_family, label_reports, to_binary
from r2gen.scoring.demo_labeler import finding_family, label_report
from r2gen.scoring.laterality import laterality_family
from r2gen.scoring.nlg import score_corpus_families
from r2gen.scoring.protocol import check as check_protocol
from r2gen.scoring.radgraph import RadGraphF1
from r2gen.scoring.radgraph import describe as describe_radgraph
from r2gen.scoring.temporal import temporal_family

LABELERS = ("demo", "chexpert")
REFERENCES = ("full", "truncated")


def label_names(labeler: str | None) -> tuple[str, ...]:
    """The labels a labeler gives, in order: demo's seven findings, CheXpert's 14 observations, or none."""
    if labeler == "demo":
        return tuple(FINDINGS)
    if labeler == "chexpert":
        return tuple(CHEXPERT_LABELS)
    return ()


def truncate_reference(text: str, words: int) -> str:
    """The first `words` whitespace tokens of a cleaned reference, joined by single spaces.

    R2Gen's protocol (cuhksz-nlp/R2Gen modules/tokenizers.py `Tokenizer.__call__` gives `[0] + ids + [0]`;
    modules/datasets.py `BaseDataset` cuts that to `[:max_seq_length]`; modules/trainer.py `_train_epoch` scores
    against `tokenizer.decode_batch(reports_ids[:, 1:])`, which stops at the first 0): the reference is the first
    max_seq_length - 1 words of the cleaned report. R2Gen also maps rare words to `<unk>` on that side; r2gen
    keeps the words.
    """
    return " ".join(text.split()[:words])


@dataclass(frozen=True)
class Scoring:
    """How a corpus is scored. `labeler`: demo | chexpert | None; `references`: full | truncated (to
    `truncate_words` words); `ce_uncertain`: negative | positive (the CheXpert labeler's UNCERTAIN as 0 or 1);
    `chexbert` / `chexbert_tokenizer`: label with CheXbert weights instead of the rule-based labeler; `bootstrap`:
    how the intervals of the test scores are drawn (r2gen.scoring.bootstrap); `bertscore` (+ `bertscore_layer`,
    `_rescale`, `_idf`, `_batch_size`) and `radgraph`: local model folders for BERTScore and RadGraph F1 (the
    optional extras, r2gen.scoring.bertscore / .radgraph), scored beside the others when set; a missing package or
    folder is an error when the `Scoring` is made, before anything trains; `protocol`: the named protocol
    (conf/protocol/) the run claims, r2gen.scoring.protocol."""

    labeler: str | None = None
    weights: Mapping[str, float] | None = None
    references: str = "full"
    truncate_words: int | None = None
    ce_uncertain: str = "negative"
    chexbert: str | None = None
    chexbert_tokenizer: str | None = None
    bootstrap: Bootstrap = field(default_factory=Bootstrap)
    bertscore: str | None = None
    bertscore_layer: int | None = None
    bertscore_rescale: bool | None = None
    bertscore_idf: bool = False
    bertscore_batch_size: int = 64
    radgraph: str | None = None
    protocol: str | None = None

    def __post_init__(self) -> None:
        if self.labeler not in (None, *LABELERS):
            raise ConfigError(f"data.labeler={self.labeler!r}: choose demo, chexpert or null")
        if self.references not in REFERENCES:
            raise ConfigError(f"eval.references={self.references!r}: choose full or truncated")
        if self.references == "truncated" and not (isinstance(self.truncate_words, int) and self.truncate_words > 0):
            raise ConfigError(f"eval.references=truncated keeps data.max_report_tokens - 1 words; got "
                              f"{self.truncate_words!r} words: set data.max_report_tokens to 2 or more")
        if self.ce_uncertain not in ("negative", "positive"):
            raise ConfigError(f"eval.ce_uncertain={self.ce_uncertain!r}: choose negative or positive")
        if self.chexbert and self.labeler != "chexpert":
            raise ConfigError(f"eval.chexbert is set but data.labeler={self.labeler!r}: CheXbert labels CheXpert "
                              "observations; set data.labeler=chexpert, or eval.chexbert=null")
        if not isinstance(self.bertscore_idf, bool):
            raise ConfigError(f"eval.bertscore_idf={self.bertscore_idf!r}: choose true or false")
        check_protocol(self.protocol)
        self.model_settings  # noqa: B018 - the extras' packages and folders checked now, no model loaded

    @classmethod
    def from_config(cls, cfg) -> Scoring:
        """From a composed config: `data.labeler`, `data.max_report_tokens`, `monitor.weights` and `eval.*`."""
        e = cfg.eval
        return cls(labeler=cfg.data.get("labeler"), weights=dict(cfg.monitor.weights or {}) or None,
                   references=e.references, truncate_words=int(cfg.data.max_report_tokens) - 1,
                   ce_uncertain=e.ce_uncertain, chexbert=e.chexbert, chexbert_tokenizer=e.chexbert_tokenizer,
                   bootstrap=Bootstrap.from_config(e.get("bootstrap")), bertscore=e.get("bertscore"),
                   bertscore_layer=e.get("bertscore_layer"), bertscore_rescale=e.get("bertscore_rescale"),
                   bertscore_idf=e.get("bertscore_idf", False), bertscore_batch_size=e.get("bertscore_batch_size", 64),
                   radgraph=e.get("radgraph"), protocol=e.get("protocol"))

    @property
    def reference_protocol(self) -> str:
        """What metrics.json says under "references": `full` or `truncated(<words kept>)`."""
        return "full" if self.references == "full" else f"truncated({self.truncate_words})"

    @property
    def labeler_name(self) -> str | None:
        """What metrics.json says under "labeler": null, demo, chexpert or chexbert, with the uncertain policy."""
        if self.labeler != "chexpert":
            return self.labeler
        return f"{'chexbert ' + str(self.chexbert) if self.chexbert else 'chexpert'} (uncertain -> {self.ce_uncertain})"

    def prepare(self, records: Sequence[dict]) -> list[dict]:
        """The records as scored: references truncated under `references=truncated` (other keys kept)."""
        if self.references == "full":
            return [dict(r) for r in records]
        return [{**r, "reference": truncate_reference(r["reference"], self.truncate_words)} for r in records]

    @cached_property
    def model_settings(self) -> dict[str, dict]:
        """{"bertscore": how it is computed, "radgraph": ...} for the model-based scores that are on (what
        metrics.json records beside them); checks each package and folder, loads no model."""
        out = {}
        if self.bertscore:
            out["bertscore"] = describe_bertscore(self.bertscore, **self._bertscore_options)
        if self.radgraph:
            out["radgraph"] = describe_radgraph(self.radgraph)
        return out

    @property
    def _bertscore_options(self) -> dict:
        return {"layer": self.bertscore_layer, "rescale": self.bertscore_rescale, "idf": self.bertscore_idf,
                "batch_size": self.bertscore_batch_size}

    @cached_property
    def _bertscore(self):
        return BERTScore(self.bertscore, **self._bertscore_options)

    @cached_property
    def _radgraph(self):
        return RadGraphF1(self.radgraph)

    def model_families(self, predictions: Sequence[str], references: Sequence[str]) -> list[Family]:
        """BERTScore and RadGraph F1 (where their folders are given) as means over studies; the models stay loaded
        for the next corpus (each validation)."""
        out = []
        if self.bertscore:
            out.append(mean_family(self._bertscore.per_study(predictions, references)))
        if self.radgraph:
            out.append(mean_family(self._radgraph.per_study(predictions, references)))
        return out

    @cached_property
    def _chexbert(self):
        from r2gen.scoring.chexbert import CheXbert

        return CheXbert(self.chexbert, self.chexbert_tokenizer)

    def raw_labels(self, texts: Sequence[str]) -> list[dict[str, int | None]]:
        """Per report, the labeler's own values: demo {finding: 0/1}; chexpert {label: 1/0/-1/None}."""
        if self.labeler == "demo":
            return [label_report(t) for t in texts]
        if self.labeler == "chexpert":
            if self.chexbert:
                return self._chexbert.label(texts)
            return label_reports(texts)
        return [{} for _ in texts]

    def label_matrix(self, texts: Sequence[str]) -> list[list[int]]:
        """Per report, 1/0 for each of `label_names(labeler)` in order (what the finding loss learns)."""
        names = label_names(self.labeler)
        return [[int(x.get(k, 0)) for k in names] for x in self.labels(texts)]

    def labels(self, texts: Sequence[str]) -> list[dict[str, int]]:
        """Per report, 1/0 per label (chexpert: mapped with `to_binary(ce_uncertain)`)."""
        raw = self.raw_labels(texts)
        if self.labeler != "chexpert":
            return [{k: int(v or 0) for k, v in x.items()} for x in raw]
        return [to_binary(x, self.ce_uncertain) for x in raw]

    def labeler_families(self, predictions: Sequence[str], references: Sequence[str]) -> list[Family]:
        """The labeler's scores as per-study statistics (r2gen.scoring.additive): demo finding F1; chexpert CE
        scores and whether sided findings are on the reference's side."""
        if self.labeler == "demo":
            return [finding_family(list(predictions), self.raw_labels(references)),
                    temporal_family(predictions, references, "demo")]
        if self.labeler == "chexpert":
            return [ce_family(self.raw_labels(predictions), self.raw_labels(references), self.ce_uncertain),
                    laterality_family(predictions, references),
                    temporal_family(predictions, references, "chexpert")]
        return []

    def labeler_scores(self, predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
        return {k: v for f in self.labeler_families(predictions, references) for k, v in f.scores().items()}

    def intervals(self, families: Sequence[Family], scores: Mapping[str, float]) -> dict[str, list[float]]:
        """{score: [low, high]}: the study-level bootstrap interval of each of `scores` (none when off)."""
        return intervals(families, scores, self.bootstrap, self.weights)


def score_records(records: Sequence[dict[str, str]], scoring: Scoring | None = None) -> dict[str, float]:
    """Corpus scores of `[{"id", "prediction", "reference"}]` (references already as `scoring.prepare` gives them),
    plus `score`, the weighted sum used to pick the best checkpoint (`monitor.weights`, e.g. 0.5*Bleu_4 +
    0.5*CIDEr as R2GenGPT)."""
    return score_families(records, scoring, nlg_families=False)[0]


def score_families(records: Sequence[dict[str, str]], scoring: Scoring | None = None, nlg_families: bool = True
                   ) -> tuple[dict[str, float], list[Family]]:
    """`score_records`'s scores and the same scores as per-study statistics (for intervals and paired tests),
    from one pass of the scorers and the labeler. `nlg_families=False`: only the labeler's (which its scores
    come from), as validation needs no intervals."""
    scoring = scoring or Scoring()
    preds = [r["prediction"] for r in records]
    refs = [r["reference"] for r in records]
    scores, families = score_corpus_families(preds, refs, families=nlg_families)
    labeled = scoring.labeler_families(preds, refs) + scoring.model_families(preds, refs)
    for f in labeled:
        scores.update(f.scores())
    if scoring.weights:
        unknown = [k for k in scoring.weights if k not in scores]
        if unknown:
            raise ConfigError(f"monitor.weights names {unknown}, not among the scores {sorted(scores)}")
        scores["score"] = float(sum(w * scores[k] for k, w in scoring.weights.items()))
    return scores, families + labeled
