"""The vocabulary a static table is built over: the teacher's own tokenizer, as stock ``StaticEmbedding`` reads it.

The table keeps one row per id of the teacher's tokenizer, so its ``tokenizer.json`` is the teacher's
with the special-token template, padding and truncation off. Of the special tokens only the pad and
unknown tokens stay matchable in text; ``[CLS]``, ``[SEP]``, ``[MASK]`` and the like are no longer added
tokens, so a literal "[CLS]" in a text is split as any other word (model2vec prunes them the same way,
``model2vec/distill/distillation.py::distill_from_model``). The rows a method does not fit (model2vec's
``[unused\\d+]`` tokens, the pruned special tokens) stay zero: no text tokenizes to them.
"""

from __future__ import annotations

import json
import re
import string

import numpy as np
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from csekit.errors import CsekitError

#: model2vec's default ``token_remove_pattern``: BERT's placeholder tokens.
UNUSED_PATTERN = re.compile(r"\[unused\d+\]")
#: The punctuation Wada et al.'s reference leaves out of every sentence (``apply_pca.py::PUNCTLIST``).
PUNCTUATION = frozenset(string.punctuation) | {"¡", "○", "¦", "–", "—", "”", "…", "’", "“"}


def backend_of(tokenizer: PreTrainedTokenizerBase) -> Tokenizer:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise CsekitError(f"a static table needs the teacher's fast (Rust) tokenizer; {type(tokenizer).__name__} "
                          "has none (a folder with tokenizer.json has one)")  # fmt: skip
    return backend


def static_tokenizer(tokenizer: PreTrainedTokenizerBase) -> Tokenizer:
    """The teacher's tokenizer with only its pad and unknown tokens left as special added tokens."""
    settings = json.loads(backend_of(tokenizer).to_str())
    keep = {tokenizer.pad_token, tokenizer.unk_token}
    settings["added_tokens"] = [token for token in settings.get("added_tokens", [])
                                if not token.get("special") or token["content"] in keep]  # fmt: skip
    settings.update(post_processor=None, padding=None, truncation=None)
    return Tokenizer.from_str(json.dumps(settings))


def vocabulary_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Every token by id (id i at index i); an id the vocabulary skips is an empty string."""
    vocabulary = backend_of(tokenizer).get_vocab(with_added_tokens=True)
    tokens = [""] * (max(vocabulary.values()) + 1)
    for token, index in vocabulary.items():
        tokens[index] = token
    return tokens


def pruned_specials(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Ids of the special tokens other than pad and unknown: no text tokenizes to them once pruned."""
    keep = {tokenizer.pad_token_id, tokenizer.unk_token_id}
    return {index for index in tokenizer.all_special_ids if index not in keep}


def model2vec_ids(tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """The ids model2vec distils, in id order (its Zipf rank order): all but ``[unused\\d+]`` and the pruned
    special tokens. (K,) int64."""
    pruned = pruned_specials(tokenizer)
    return np.array([index for index, token in enumerate(vocabulary_tokens(tokenizer))
                     if token and index not in pruned and not UNUSED_PATTERN.fullmatch(token)], dtype=np.int64)  # fmt: skip


def skipped_ids(tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """(V,) bool: the tokens Wada et al.'s sentence mean leaves out: punctuation, the unknown token, the special
    tokens, ``[unused\\d+]``. Their rows stay zero, which leaves them out of every cosine."""
    tokens = vocabulary_tokens(tokenizer)
    specials = set(tokenizer.all_special_ids)
    return np.array([not token or index in specials or token in PUNCTUATION or bool(UNUSED_PATTERN.fullmatch(token))
                     for index, token in enumerate(tokens)])  # fmt: skip
