"""A SentencePiece BPE model (`tokenizer.model`) as a `tokenizers.Tokenizer` that encodes and decodes like it.

Needs neither the `sentencepiece` package nor a slow tokenizer class: the model file is parsed with the protobuf
schema transformers bundles. What SentencePiece does, step by step, and its counterpart here:

  normalize characters (the model's precompiled charsmap)  -> normalizers.Precompiled
  remove extra whitespace (if the model says so)           -> Replace: trim, collapse runs of spaces
  add the dummy prefix, escape spaces as "▁"               -> Prepend("▁") + Replace(" ", "▁"): the prefix is added
                                                              even when the text starts with a space, as
                                                              SentencePiece does (Metaspace would skip it)
  BPE over the whole text, merging the best-scored pair    -> BPE with merges ranked by the merged piece's score,
                                                              no pre-tokenizer (one "word" per text)
  unknown characters as UTF-8 byte pieces <0xNN>           -> byte_fallback
  decode: "▁" -> " ", bytes -> text, drop the dummy space  -> Replace, ByteFallback, Fuse, Strip(left=1)

Text between added (special) tokens is encoded like a separate SentencePiece call: it gets its own dummy prefix.
"""

from __future__ import annotations

from pathlib import Path

from r2gen.errors import InputError

# SentencePiece's piece types (sentencepiece_model.proto)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BPE_MODEL = 2


def read_model(path: Path):
    """The `ModelProto` in a SentencePiece model file; a file that is not one is an InputError naming it."""
    from google.protobuf.message import DecodeError
    from transformers.convert_slow_tokenizer import import_protobuf

    proto = import_protobuf().ModelProto()
    try:
        proto.ParseFromString(Path(path).read_bytes())
    except DecodeError as e:
        raise InputError(f"{path}: not a SentencePiece model ({e}); copy the model's own tokenizer.model there") from None
    if not proto.pieces:
        raise InputError(f"{path}: a SentencePiece model without pieces; copy the model's own tokenizer.model there")
    return proto


def ranked_merges(proto) -> list[tuple[str, str]]:
    """Every pair of normal pieces whose concatenation is a normal piece, best first.

    SentencePiece's BPE merges the adjacent pair whose concatenation has the highest score; ranking each pair by
    that score (then by the merged piece's id) gives `tokenizers`' BPE the same order.
    """
    normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == NORMAL}
    ranked = []
    for piece, (score, pid) in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-score, pid, left, right))
    ranked.sort()
    return [(left, right) for _, _, left, right in ranked]


def bpe_tokenizer(path: Path, user_defined: bool = False):
    """A `tokenizers.Tokenizer` equivalent to the SentencePiece BPE model at `path`; ids are the piece ids, and its
    control and unknown pieces (`<unk>`, `<s>`, `</s>`) are special tokens.

    `user_defined`: the model's user-defined pieces (InternLM2's `<|im_start|>` ...) become special tokens too, split
    out before BPE with the text between them encoded separately, as a slow tokenizer that lists them among its
    special tokens does; False refuses a model that has any."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE

    proto = read_model(path)
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    if spec.model_type != BPE_MODEL:
        raise InputError(f"{path}: a SentencePiece model of type {spec.model_type} (BPE is 2); only BPE models convert")
    if spec.treat_whitespace_as_suffix or (not user_defined and any(p.type == USER_DEFINED for p in proto.pieces)):
        raise InputError(f"{path}: uses whitespace-as-suffix or user-defined pieces, which this converter does not "
                         "reproduce exactly yet")
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    if len(vocab) != len(proto.pieces):
        raise InputError(f"{path}: duplicate pieces; not a valid SentencePiece model")
    unk = proto.pieces[spec.unk_id].piece
    tok = Tokenizer(BPE(vocab=vocab, merges=ranked_merges(proto), unk_token=unk, fuse_unk=True,
                        byte_fallback=spec.byte_fallback))

    space = "▁" if norm.escape_whitespaces else " "
    steps = [normalizers.Precompiled(norm.precompiled_charsmap)] if norm.precompiled_charsmap else []
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend(space))  # empty text stays empty, as in SentencePiece
    if norm.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = None  # SentencePiece runs BPE over the whole text, never splitting it into words

    steps = [decoders.Replace("▁", " ")] if norm.escape_whitespaces else []
    if spec.byte_fallback:
        steps.append(decoders.ByteFallback())
    steps.append(decoders.Fuse())  # Strip acts on each token: fuse first so only the text's start is stripped
    if norm.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(steps)

    special = (UNKNOWN, CONTROL, USER_DEFINED) if user_defined else (UNKNOWN, CONTROL)
    tok.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                            for p in proto.pieces if p.type in special])
    return tok
