"""Static word embeddings from contextual ones (Wada et al. 2025, "Static Word Embeddings for Sentence Semantic
Representation", EMNLP; reference code https://github.com/twadada/swe4semantics).

1. **Contextual averages**, the paper's E(w) = (1/N) sum_i ST(w, z_i) (``extract_embs.py``): a token's
   vector is the teacher's last-layer state at the token's position, averaged over the first N = 100
   corpus sentences that contain it (its first occurrence in each: ``identify_word_indices`` stops at
   the first match), each sentence encoded whole with its special tokens.
2. **Sentence-level PCA** (All-but-the-Top over sentence vectors, ``apply_pca.py``): up to M = 100k
   sentences are embedded as the mean of their tokens' vectors, punctuation left out; PCA over those
   sentence vectors; every token vector is centred by the sentence mean and projected on principal
   components d+1 ... d+k (``-d_remove 7 -embd 256``): the top d carry what all sentences share (a
   common direction that inflates every cosine), and go.
3. **Knowledge distillation** (``train.py``): the table is fine-tuned so that each batch's in-batch
   cosine distribution (temperature 0.05, the diagonal left out) matches the teacher's
   (:func:`csekit.losses.similarity_kl`), see :mod:`csekit.static.finetune`.

Departures, because a ``StaticEmbedding`` table is over the teacher's own tokenizer:

- the vocabulary is the teacher's WordPiece tokens, not 150k whole words: a word split into pieces is
  the mean of its pieces' vectors, and there is no longest-prefix fallback (every piece has a row);
- a token that no corpus sentence contains (the reference has no vector for it) gets its state in the
  one-token sentence ``[CLS] token [SEP]``: the corpus here is 200k sentences, not CC-100, and a rare
  piece seen nowhere would otherwise drop out of the sentences that have it;
- punctuation, the unknown token and the special tokens keep zero rows, which leaves them out of every
  cosine as the reference leaves them out of its sums;
- sentences are cut at the teacher's maximum input length instead of skipped at 500 tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from csekit.errors import CsekitError
from csekit.models import SentenceEncoder
from csekit.models.static import StaticEncoder
from csekit.static.model2vec import special_wrapping, wrapped_token_states
from csekit.static.vocabulary import skipped_ids, static_tokenizer

PER_TOKEN = 100  # -nsent 100: sentences averaged per token
REMOVE = 7  # -d_remove 7: top principal components removed
DIM = 256  # -embd 256: components kept after them
PCA_SENTENCES = 100_000  # apply_pca.py fits on at most 100k sentences


def choose_occurrences(rows: Sequence[Sequence[int]], skipped: np.ndarray, *, per_token: int = PER_TOKEN) -> list[list[int]]:
    """For each sentence, in corpus order, the positions it contributes: a token's first position in it,
    while the token has fewer than ``per_token`` sentences. Skipped tokens contribute nothing."""
    counts = np.zeros(len(skipped), dtype=np.int64)
    chosen = []
    for row in rows:
        seen: set[int] = set()
        positions = []
        for position, token in enumerate(row):
            if skipped[token] or token in seen:
                continue
            seen.add(token)
            if counts[token] < per_token:
                counts[token] += 1
                positions.append(position)
        chosen.append(positions)
    return chosen


@torch.inference_mode()
def contextual_sums(teacher: SentenceEncoder, rows: Sequence[dict[str, list[int]]], chosen: Sequence[list[int]], *,
                    vocabulary: int, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Sum and count of the last-layer states at the ``chosen`` positions of each row, per token: (V, H) float64
    and (V,); with the teacher's (N, Ht) sentence embeddings of the same rows, from the same forward pass."""
    captured: list[torch.Tensor] = []
    hook = teacher.backbone.register_forward_hook(lambda module, args, output: captured.append(output[0]))
    sums = torch.zeros(vocabulary, teacher.backbone.config.hidden_size, dtype=torch.float64)
    counts = torch.zeros(vocabulary, dtype=torch.int64)
    embeddings = np.zeros((len(rows), teacher.embedding_dim), dtype=np.float32)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))  # little padding per batch
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            captured.clear()
            embeddings[batch] = teacher.embed_tokens([rows[i] for i in batch], normalize=False)  # (B, Ht)
            states = captured[-1].double().cpu()  # (B, T, H), right-padded: positions as in each row
            where = [(b, p) for b, i in enumerate(batch) for p in chosen[i]]
            if not where:
                continue
            lines, positions = torch.tensor(where).T  # (M,), (M,)
            tokens = torch.tensor([rows[batch[b]]["input_ids"][p] for b, p in where])  # (M,)
            sums.index_add_(0, tokens, states[lines, positions])  # (M, H) into (V, H)
            counts.index_add_(0, tokens, torch.ones_like(tokens))
    finally:
        hook.remove()
    return sums.numpy(), counts.numpy(), embeddings


def sentence_means(table: np.ndarray, rows: Sequence[Sequence[int]], skipped: np.ndarray) -> np.ndarray:
    """(S', H) mean of each sentence's non-skipped token rows; sentences with none are left out."""
    means = [table[kept].mean(axis=0) for row in rows if len(kept := [t for t in row if not skipped[t]])]
    return np.stack(means)


def remove_top_components(table: np.ndarray, sentences: np.ndarray, skipped: np.ndarray, *, remove: int = REMOVE,
                          dim: int = DIM) -> np.ndarray:  # fmt: skip
    """(V, H) token rows -> (V, dim): centred by the (S, H) sentence vectors' mean and projected on their
    principal components ``remove`` ... ``remove + dim - 1`` (from 0, largest variance first). Skipped rows stay 0."""
    if remove + dim > table.shape[1]:
        raise CsekitError(f"removing {remove} components and keeping {dim} needs {remove + dim} dimensions; the "
                          f"teacher has {table.shape[1]}: lower --dim or --remove")  # fmt: skip
    mean = sentences.mean(axis=0)
    _, _, components = np.linalg.svd(sentences - mean, full_matrices=False)  # (H, H), rows by decreasing variance
    projected = (table - mean) @ components[remove : remove + dim].T  # (V, dim)
    projected[skipped] = 0.0
    return projected


def contextual_table(teacher: SentenceEncoder, sentences: Sequence[str], *, per_token: int = PER_TOKEN,
                     batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, list[list[int]], list[int], np.ndarray]:  # fmt: skip
    """Step 1: the (V, H) table of contextual averages (isolated-token states where the corpus has none,
    zero rows for skipped tokens), the per-token sentence counts (V,), the teacher's token rows of every
    sentence, the indices of the sentences that contributed, and the teacher's embeddings of those."""
    rows = teacher.inference_tokens(list(sentences))
    ids = [row["input_ids"] for row in rows]
    skipped = skipped_ids(teacher.tokenizer)
    chosen = choose_occurrences(ids, skipped, per_token=per_token)
    used = [i for i, positions in enumerate(chosen) if positions]
    sums, counts, embeddings = contextual_sums(teacher, [rows[i] for i in used], [chosen[i] for i in used],
                                               vocabulary=len(skipped), batch_size=batch_size)  # fmt: skip
    table = sums / np.maximum(counts, 1)[:, None]
    unseen = np.flatnonzero((counts == 0) & ~skipped)
    if len(unseen):
        table[unseen] = wrapped_token_states(teacher, unseen)[:, len(special_wrapping(teacher)[0])].numpy()
    table[skipped] = 0.0
    return table, counts, ids, used, embeddings


def distill_contextual(teacher: SentenceEncoder, sentences: Sequence[str], *, dim: int = DIM, remove: int = REMOVE,
                       per_token: int = PER_TOKEN, pca_sentences: int = PCA_SENTENCES, seed: int = 0,
                       batch_size: int = 64) -> tuple[StaticEncoder, np.ndarray, np.ndarray, dict]:  # fmt: skip
    """Steps 1 and 2 (fine-tuning is :func:`csekit.static.finetune.fine_tune`): the normalising
    :class:`StaticEncoder`, the contributing sentences' indices and teacher embeddings, and a report."""
    if not sentences:
        raise CsekitError("the contextual method needs corpus sentences: give --corpus FILE ..., one sentence a line")
    table, counts, ids, used, embeddings = contextual_table(teacher, sentences, per_token=per_token, batch_size=batch_size)
    skipped = skipped_ids(teacher.tokenizer)
    sample = np.random.default_rng(seed).permutation(len(used))[:pca_sentences]
    means = sentence_means(table, [ids[used[i]] for i in sample], skipped)
    reduced = remove_top_components(table, means, skipped, remove=remove, dim=dim).astype(np.float32)
    provenance = {"method": "contextual", "dim": dim, "remove": remove, "per_token": per_token,
                  "sentences": len(sentences), "pca_sentences": len(means)}  # fmt: skip
    report = {**provenance, "contributing_sentences": len(used), "tokens_in_context": int((counts > 0).sum()),
              "tokens_alone": int(((counts == 0) & ~skipped).sum()), "tokens_skipped": int(skipped.sum())}  # fmt: skip
    student = StaticEncoder(static_tokenizer(teacher.tokenizer), torch.from_numpy(reduced), provenance=provenance)
    return student, np.array(used), embeddings, report
