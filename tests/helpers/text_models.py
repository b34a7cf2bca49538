"""Tiny random text models in the exact formats the scoring extras load: a BERT folder (bert-score; also the transformer
inside RadGraph) and a RadGraph model folder (the radgraph package), built offline in a second or two."""

from __future__ import annotations

import json
from pathlib import Path

import torch

REPORTS = ["the heart is enlarged .", "no pleural effusion or pneumothorax .", "lungs are clear .",
           "mild pulmonary edema , bibasilar atelectasis .", "a right chest tube is in place ."]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def bert_folder(path: Path, texts=REPORTS, layers: int = 2, max_length: int = 64, seed: int = 0) -> Path:
    """A Hugging Face folder: a WordPiece tokenizer trained by `tokenizers` on `texts` and a random `BertModel`
    (width 32), each saved with save_pretrained."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizer

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator([*texts, "a b 1 2"], trainers.WordPieceTrainer(vocab_size=300, special_tokens=SPECIAL))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    BertTokenizer(tokenizer_object=tok, model_max_length=max_length).save_pretrained(str(path))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=max_length)
    BertModel(cfg).save_pretrained(str(path))
    return path


NER_LABELS = ["Anatomy::definitely present", "Observation::definitely present", "Observation::uncertain",
              "Observation::definitely absent"]
RELATIONS = ["modify", "located_at", "suggestive_of"]


def radgraph_config(model_type: str, transformer: str, max_span_width: int = 3) -> dict:
    """An AllenNLP DyGIE config.json as RadGraph's archives hold it (the keys `radgraph.RadGraph` reads), tiny."""
    bert = {"type": "pretrained_transformer_mismatched", "model_name": transformer, "max_length": 64}
    return {
        "dataset_reader": {"type": "dygie", "max_span_width": max_span_width, "token_indexers": {"bert": bert}},
        "model": {"type": "dygie", "embedder": {"token_embedders": {"bert": bert}}, "initializer": {},
                  "module_initializer": {}, "feature_size": 8, "max_span_width": max_span_width,
                  "target_task": "relation", "feedforward_params": {"num_layers": 1, "hidden_dims": 16, "dropout": 0.0},
                  "loss_weights": {"ner": 1.0, "relation": 1.0, "coref": 0.0, "events": 0.0},
                  "modules": {"coref": {"spans_per_word": 0.3, "max_antecedents": 10, "coref_prop": 0}, "ner": {},
                              "relation": {"spans_per_word": 0.5},
                              "events": {"trigger_spans_per_word": 0.3, "argument_spans_per_word": 0.8,
                                         "loss_weights": {"trigger": 1.0, "arguments": 1.0}}}},
    }


def radgraph_folder(path: Path, model_type: str = "radgraph", transformer: str = "tiny-org/tiny-bert", seed: int = 0,
                    entity_label: int | None = None) -> Path:
    """A RadGraph model folder as the package unpacks one: config.json, vocabulary/ (AllenNLP's files), weights.th
    (the state dict of the DyGIE network `radgraph.RadGraph` builds from that config), and the transformer's folder
    at `path/<transformer>` (where r2gen looks for it). `entity_label`: rig the entity scorer so that every span gets
    that label."""
    from dotmap import DotMap
    from radgraph.allennlp.data import Vocabulary
    from radgraph.allennlp.modules import text_field_embedders, token_embedders
    from radgraph.dygie.models import dygie

    from r2gen.scoring.radgraph import local_transformers

    path.mkdir(parents=True, exist_ok=True)
    bert = bert_folder(path / transformer, seed=seed)
    vocab = Vocabulary()
    vocab.add_tokens_to_namespace(["", *NER_LABELS], f"{model_type}__ner_labels")  # "" is the null label, index 0
    vocab.add_tokens_to_namespace(RELATIONS, f"{model_type}__relation_labels")
    vocab.save_to_files(str(path / "vocabulary"))
    config = radgraph_config(model_type, transformer)
    (path / "config.json").write_text(json.dumps(config, indent=1))
    torch.manual_seed(seed)
    with local_transformers({}):  # its AllenNLP calls tokenizer methods transformers 5 removed
        embedder = text_field_embedders.BasicTextFieldEmbedder(
            {"bert": token_embedders.PretrainedTransformerMismatchedEmbedder(model_name=str(bert), max_length=64)})
    kwargs = DotMap(json.loads(json.dumps(config["model"])))
    for name in ("type", "embedder", "initializer", "module_initializer"):  # as radgraph.RadGraph does
        del kwargs[name]
    state = dygie.DyGIE(vocab=vocab, embedder=embedder, **kwargs).state_dict()
    if entity_label is not None:
        bias = state[f"_ner._ner_scorers.{model_type}__ner_labels.1._module.bias"]  # [labels - 1]: the null scores 0
        bias.fill_(-20.0)[entity_label] = 20.0
    torch.save(state, path / "weights.th")
    return path
