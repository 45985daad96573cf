"""Losses: pure functions of embeddings (never of the model), so wrappers compose around them."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from csekit.distributed import all_gather_with_grad, get_rank, get_world_size


def cosine_similarity_matrix(a: Tensor, b: Tensor) -> Tensor:
    """(N, H), (M, H) -> (N, M) cosine similarities."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T  # (N, M)


def info_nce(
    anchors: Tensor,
    candidates: Tensor,
    temperature: float | Tensor = 0.05,
    *,
    weights: Tensor | None = None,
    gather: bool = True,
    shared_negatives: Tensor | None = None,
) -> Tensor:
    """InfoNCE over cosine similarities, mean over anchors (a scalar).

    SimCSE (Gao, Yao & Chen 2021), Eq. 1 (unsupervised, Eq. 4 with dropout views) and Eq. 5
    (supervised, hard negatives): ``-log exp(s_ii / t) / sum_j exp(s_ij / t)``.

    anchors: (B, H). candidates: (N, H), N >= B; ``candidates[i]`` is the positive of ``anchors[i]``
    and every other row is a negative (the other positives, then any hard negatives).

    weights: (B, N) nonnegative multipliers of each ``exp`` term of this rank's candidates (the
    positive's included), applied as ``+ log(weight)`` on the logit. A weight of 0 masks a candidate
    out (the positive's weight must stay > 0). SimCSE's ``hard_negative_weight`` w, which it adds to
    the logit, is ``weights = exp(w)`` at the anchor's own hard negative (:func:`hard_negative_weights`).

    gather: with several processes, candidates of all ranks are gathered (with gradient, see
    :func:`csekit.distributed.all_gather_with_grad`) so each anchor sees W * N candidates. This rank's
    candidates sit at columns ``rank * N ... rank * N + N - 1``: the labels shift by ``rank * N`` and
    ``weights`` are placed there; other ranks' columns get weight 1. An objective whose weights look at
    every negative (DCLR's false-negative screen) gives ``weights`` of shape (B, W * N) instead,
    built from features it gathered itself, in rank order.

    shared_negatives: (M, H) further negatives that every rank already holds alike (ESimCSE's
    momentum queue) or draws for itself (DCLR's noise negatives): appended after the (gathered)
    candidates, never gathered, no gradient needed, weight 1.
    """
    batch_size, num_candidates = anchors.shape[0], candidates.shape[0]
    if num_candidates < batch_size:
        raise ValueError(f"each anchor needs a positive: {batch_size} anchors, {num_candidates} candidates")
    world_size = get_world_size() if gather else 1
    allowed = {(batch_size, num_candidates), (batch_size, world_size * num_candidates)}
    if weights is not None and tuple(weights.shape) not in allowed:
        raise ValueError(f"weights must be (B, N) = {batch_size, num_candidates} or (B, W * N), "
                         f"not {tuple(weights.shape)}")  # fmt: skip
    offset = 0
    if world_size > 1:
        offset = get_rank() * num_candidates
        candidates = all_gather_with_grad(candidates)  # (W * N, H), rank order
    if shared_negatives is not None:
        candidates = torch.cat([candidates, shared_negatives.to(candidates.dtype)])  # (W * N + M, H)
    logits = cosine_similarity_matrix(anchors, candidates) / temperature  # (B, W * N + M)
    if weights is not None:
        # log(1) = 0 pads the other ranks' columns (unless the weights cover them) and the shared
        # negatives: their exp terms count as they are.
        before = 0 if weights.shape[1] == world_size * num_candidates else offset
        after = logits.shape[1] - before - weights.shape[1]
        logits = logits + F.pad(_log_weights(weights), (before, after))  # (B, W * N + M)
    labels = torch.arange(batch_size, device=anchors.device) + offset  # (B,)
    return F.cross_entropy(logits, labels)


def hard_negative_weights(
    batch_size: int,
    num_candidates: int,
    weight: float,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """(B, N) weights adding SimCSE's ``hard_negative_weight`` to each anchor's own hard negatives.

    Candidates laid out as SimCSE does: B positives, then blocks of B hard negatives, row i of each
    block belonging to anchor i. SimCSE adds ``weight`` to those logits (reference code
    ``simcse/models.py::cl_forward``); as a multiplier of the ``exp`` term that is ``exp(weight)``.
    """
    weights = torch.ones(batch_size, num_candidates, device=device, dtype=dtype)  # (B, N)
    rows = torch.arange(batch_size, device=device)
    for start in range(batch_size, num_candidates - batch_size + 1, batch_size):
        weights[rows, start + rows] = math.exp(weight)
    return weights


#: How nt_xent reduces its 2B per-anchor losses.
NT_XENT_REDUCTIONS = ("mean", "sum_of_directions")


def nt_xent(view1: Tensor, view2: Tensor, temperature: float | Tensor, *, reduction: str,
            gather: bool = True) -> Tensor:  # fmt: skip
    """NT-Xent over the 2B views of B sentences (SimCLR's loss): a scalar.

    Every view is an anchor; its positive is the same sentence's other view and its negatives are the
    other 2B - 2 views, those of *both* views (its own copy excluded):
    ``l(i) = -log exp(s(z_i, z_i') / t) / sum_{k != i} exp(s(z_i, z_k) / t)`` over cosine similarities.

    ``reduction`` says how the 2B losses combine, as each method's reference does:

    - ``"mean"``: their mean (SimCLR; CLEAR, Wu et al. 2020, Sec. 3.1);
    - ``"sum_of_directions"``: the mean over view-1 anchors plus the mean over view-2 anchors, i.e. twice
      the mean (ConSERT's reference, ``AdvCLSoftmaxLoss._contrastive_loss_forward`` with ``nt_xent``).

    view1, view2: (B, H), row i of each the same sentence. gather: with several processes, both views of
    every rank are candidates (see :func:`info_nce`).
    """
    if reduction not in NT_XENT_REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(NT_XENT_REDUCTIONS)}, not {reduction!r}")
    size = view1.shape[0]
    anchors = torch.cat([view1, view2])  # (2B, H)
    candidates = torch.cat([view2, view1])  # (2B, H): candidates[i] is the positive of anchors[i]
    not_self = torch.ones(2 * size, 2 * size, device=view1.device, dtype=view1.dtype)  # (2B, 2B)
    rows = torch.arange(size, device=view1.device)
    not_self[rows, size + rows] = 0.0  # anchor i (view 1) meets itself at candidates[B + i]
    not_self[size + rows, rows] = 0.0  # anchor B + i (view 2) meets itself at candidates[i]
    loss = info_nce(anchors, candidates, temperature, weights=not_self, gather=gather)  # mean over 2B anchors
    return loss if reduction == "mean" else 2 * loss


def _log_weights(weights: Tensor) -> Tensor:
    """log(weights) with log(0) = -inf and a zero (never NaN) gradient for the masked entries."""
    masked = weights <= 0
    # torch.where backpropagates 0 * d(log w) into the unchosen branch, which is NaN at w = 0, so the
    # log is taken of a safe value there.
    return torch.where(masked, -math.inf, torch.where(masked, 1.0, weights).log())


def similarity_kl(student: Tensor, teacher: Tensor, *, temperature: float = 0.05) -> Tensor:
    """KL divergence from the teacher's in-batch similarity distribution to the student's, mean over rows.

    Each sentence i spreads ``P(i, j) = softmax_j(cos(e_i, e_j) / t)`` over the *other* sentences of the
    batch (the diagonal is masked: a sentence's similarity to itself says nothing); the loss is
    ``mean_i sum_{j != i} P_teacher(i, j) log(P_teacher(i, j) / P_student(i, j))``. Only similarities are
    compared, so the two widths may differ. The teacher's side carries no gradient, whatever was passed.

    student: (B, Hs). teacher: (B, Ht). temperature: 0.05 by default.
    """
    size = student.shape[0]
    self_pairs = torch.eye(size, dtype=torch.bool, device=student.device)  # (B, B)
    student_logits = (cosine_similarity_matrix(student, student) / temperature).masked_fill(self_pairs, -math.inf)
    teacher_logits = (cosine_similarity_matrix(teacher, teacher).detach() / temperature).masked_fill(self_pairs, -math.inf)
    teacher_log_p = F.log_softmax(teacher_logits, dim=-1)  # (B, B), -inf on the diagonal (autocast: fp32)
    student_log_p = F.log_softmax(student_logits, dim=-1)
    terms = teacher_log_p.exp() * (teacher_log_p - student_log_p)  # (B, B)
    return terms.masked_fill(self_pairs, 0.0).sum(dim=-1).mean()


def feature_kl(student: Tensor, teacher: Tensor, *, temperature: float = 1.0) -> Tensor:
    """KL divergence from the teacher's softmax over each embedding's features to the student's, mean over rows.

    ``mean_i KL(softmax(teacher_i / t) || softmax(student_i / t))`` (PyTorch's ``kl_div`` with "batchmean"),
    the self-distillation term of 2D Matryoshka and Starbucks training (a shallow layer's embedding against
    the last layer's). The teacher's side carries no gradient, whatever was passed.

    student, teacher: (B, H), one width.
    """
    student_log_p = F.log_softmax(student / temperature, dim=-1)  # (B, H)
    teacher_p = F.softmax(teacher.detach() / temperature, dim=-1)  # (B, H)
    return F.kl_div(student_log_p, teacher_p, reduction="batchmean")


# ------------------------------------------------------------------ labelled pairs
def cosine_regression(first: Tensor, second: Tensor, scores: Tensor) -> Tensor:
    """Sentence-BERT's regression objective (Reimers & Gurevych 2019, Sec. 3): the mean squared error of
    ``cos(u, v)`` against the gold score on [0, 1] (sentence-transformers' ``CosineSimilarityLoss``).

    first, second: (B, H), row i of each one pair. scores: (B,) on [0, 1].
    """
    return F.mse_loss(F.cosine_similarity(first, second, dim=-1), scores.to(first.dtype))


def rank_pairs(similarities: Tensor, scores: Tensor, scale: float) -> Tensor:
    """``log(1 + sum_{s_i > s_j} exp(scale * (sim_j - sim_i)))``: every pair scored above another should be
    the more similar one (CoSENT's form; AnglE ranks its angle similarity the same way).

    similarities, scores: (B,), one per pair. Pairs with equal scores are not compared. A scalar; not a
    mean, so it grows with the batch (as in both references).
    """
    above = scores[:, None] > scores[None, :]  # (B, B): pair i is scored above pair j
    gaps = scale * (similarities[None, :] - similarities[:, None])  # (B, B): [i, j] = scale * (sim_j - sim_i)
    terms = gaps.masked_fill(~above, -math.inf).flatten()  # (B * B,)
    return torch.logsumexp(torch.cat([terms.new_zeros(1), terms]), dim=0)  # the 1 in log(1 + ...)


def cosent(first: Tensor, second: Tensor, scores: Tensor, *, scale: float = 20.0) -> Tensor:
    """CoSENT (Su 2022, "CoSENT: a more efficient sentence vector scheme than Sentence-BERT"):
    ``log(1 + sum_{s_i > s_j} exp(scale * (cos_j - cos_i)))`` over the pairs of the batch, scale (λ) 20.

    first, second: (B, H), row i of each one pair. scores: (B,) gold scores (only their order counts).
    """
    return rank_pairs(F.cosine_similarity(first, second, dim=-1), scores, scale)


def angle_similarity(first: Tensor, second: Tensor) -> Tensor:
    """AnglE's similarity of a pair in complex space (Li & Li 2023, Sec. 3.4; reference ``angle_loss``).

    Each embedding is split in halves, real part then imaginary part: ``u = a + bi``, ``v = c + di``. The
    quotient ``u / v`` is taken element-wise with the norms of the whole vectors,
    ``((ac + bd) + i(bc - ad)) / (|u| |v|)``, and its real and imaginary parts summed over all dimensions:
    ``|sum(ac + bd) + sum(bc - ad)| / (|u| |v|)``. ``u == v`` gives 1. Returns (B,).
    """
    if first.shape[-1] % 2:
        raise ValueError(f"AnglE splits embeddings into real and imaginary halves: width {first.shape[-1]} is odd")
    a, b = first.chunk(2, dim=-1)  # (B, H/2) each: real, imaginary
    c, d = second.chunk(2, dim=-1)
    norms = first.norm(dim=-1) * second.norm(dim=-1)  # (B,)
    real, imaginary = (a * c + b * d).sum(dim=-1), (b * c - a * d).sum(dim=-1)  # (B,) each
    return (real + imaginary).abs() / norms


def angle_ranking(first: Tensor, second: Tensor, scores: Tensor, *, scale: float = 1.0) -> Tensor:
    """AnglE's angle objective: :func:`rank_pairs` over :func:`angle_similarity` (reference ``angle_loss``).

    The reference's term for pairs ``s_i < s_j`` is ``exp(scale * (z_i - z_j))``: the pair with the higher
    gold score must have the larger ``z``. (The paper's Eq. writes the same ranking over an angle
    *difference*, where the higher-scored pair has the smaller one; the code's ``z`` is similarity-like.)
    """
    return rank_pairs(angle_similarity(first, second), scores, scale)


def paired_in_batch_negatives(first: Tensor, second: Tensor, positive: Tensor, *, scale: float = 20.0,
                              duplicates: Tensor | None = None) -> Tensor:  # fmt: skip
    """AnglE's in-batch negative objective (Li & Li 2023, Sec. 3.3; reference ``in_batch_negative_loss``).

    The 2B sentences of the batch are all anchors; each one's candidates are the 2B - 1 others (both
    sides), and for a positive pair the target is its partner: ``-log softmax_k(scale * cos)[partner]``.
    ``duplicates`` (2B, 2B) bool marks further targets of each row, whatever its pair's label: the other
    rows that hold the same text (the reference's ``similar_matrix``; rows ordered as
    ``cat([first, second])``). Targets add up (a partner that is also a duplicate counts twice, as there).
    The mean runs over all 2B rows; a row with no target adds 0 (it still serves as a negative).

    first, second: (B, H). positive: (B,) bool, which pairs are positives.
    """
    size = first.shape[0]
    sentences = torch.cat([first, second])  # (2B, H): row i and row B + i are one pair
    logits = scale * cosine_similarity_matrix(sentences, sentences)  # (2B, 2B)
    itself = torch.eye(2 * size, dtype=torch.bool, device=first.device)
    log_p = F.log_softmax(logits.masked_fill(itself, -math.inf), dim=-1)  # (2B, 2B)
    rows = torch.arange(2 * size, device=first.device)
    targets = torch.zeros_like(log_p)  # (2B, 2B)
    targets[rows, (rows + size) % (2 * size)] = positive.repeat(2).to(log_p.dtype)
    if duplicates is not None:
        targets = targets + (duplicates & ~itself).to(log_p.dtype)
    # -inf on the diagonal times a zero target must not make NaN: the diagonal never is a target.
    return -(targets * log_p.masked_fill(itself, 0.0)).sum() / (2 * size)


def improved_contrastive(queries: Tensor, documents: Tensor, temperature: float = 0.01, *,
                         gather: bool = True) -> Tensor:  # fmt: skip
    """GTE's improved contrastive loss (Li et al. 2023, "Towards General Text Embeddings with Multi-stage
    Contrastive Learning", Sec. 3.3): ``-mean_i log exp(s(q_i, d_i) / t) / Z_i`` with one partition

        Z_i = sum_j exp(s(q_i, d_j) / t) + sum_{j != i} exp(s(q_i, q_j) / t)
            + sum_j exp(s(q_j, d_i) / t) + sum_{j != i} exp(s(d_j, d_i) / t)

    over cosine similarities: query to every document, query to the other queries, every query to the
    document, the other documents to the document. The same-side sums leave out the sentence itself;
    the two cross sums run over all j, as the paper writes them, so the positive's term is in Z twice
    (as in sentence-transformers' ``MultipleNegativesRankingLoss`` with all four directions, ``joint``).

    queries, documents: (B, H), row i of each one pair. gather: with several processes, every sum runs
    over the queries and documents of all ranks (see :func:`info_nce`).
    """
    size = queries.shape[0]
    all_queries, all_documents, offset = queries, documents, 0
    if gather and get_world_size() > 1:
        offset = get_rank() * size
        # Both sides in one gather: one collective forward and one backward, not two of each.
        gathered = all_gather_with_grad(torch.cat([queries, documents]))  # (W * 2B, H): q, d of rank 0, of rank 1...
        by_rank = gathered.view(get_world_size(), 2, size, -1)  # (W, 2, B, H)
        all_queries, all_documents = by_rank[:, 0].flatten(0, 1), by_rank[:, 1].flatten(0, 1)  # (W * B, H) each
    own = torch.arange(size, device=queries.device) + offset  # (B,): each row's own column
    itself = F.one_hot(own, all_queries.shape[0]).bool()  # (B, W * B)
    query_documents = cosine_similarity_matrix(queries, all_documents)  # (B, W * B): s(q_i, d_j)
    query_queries = cosine_similarity_matrix(queries, all_queries).masked_fill(itself, -math.inf)  # s(q_i, q_j)
    document_queries = cosine_similarity_matrix(documents, all_queries)  # (B, W * B): s(q_j, d_i)
    document_documents = cosine_similarity_matrix(documents, all_documents).masked_fill(itself, -math.inf)
    logits = torch.cat([query_documents, query_queries, document_queries, document_documents], dim=1) / temperature
    return F.cross_entropy(logits, own)  # (B, 4 * W * B); the positive s(q_i, d_i) is column ``own`` of the first block


def energy_hinge(anchors: Tensor, positives: Tensor, negatives: Tensor, *, margin: float = 0.2,
                 gather: bool = True) -> Tensor:  # fmt: skip
    """PromCSE's energy-based hinge loss (Jiang, Zhang & Wang 2022), mean over anchors (a scalar):
    ``max(0, margin - cos(h_i, h_i+) + max(max_{j != i} cos(h_i, h_j+), max_j cos(h_i, h_j-)))``, the positive
    held ``margin`` above the hardest of the other positives and all hard negatives (reference
    ``promcse/models.py::cl_forward``, ``MarginRankingLoss`` on the cosines).

    anchors, positives, negatives: (B, H). With several processes the positives and negatives of all ranks
    are the candidates (gathered with gradient, as :func:`info_nce` does); anchor i's own positive is this
    rank's column ``rank * B + i``.
    """
    batch_size = anchors.shape[0]
    offset = 0
    if gather and get_world_size() > 1:
        offset = get_rank() * batch_size
        positives, negatives = all_gather_with_grad(positives), all_gather_with_grad(negatives)  # (W * B, H) each
    rows = torch.arange(batch_size, device=anchors.device)  # (B,)
    to_positives = cosine_similarity_matrix(anchors, positives)  # (B, W * B)
    own = to_positives[rows, rows + offset]  # (B,)
    others = to_positives.index_put((rows, rows + offset), torch.tensor(-math.inf, dtype=own.dtype, device=own.device))
    hardest = torch.cat([others, cosine_similarity_matrix(anchors, negatives)], dim=1).max(dim=1).values  # (B,)
    return F.relu(margin - own + hardest).mean()


# ------------------------------------------------------------------ neighbouring sentences
def quick_thoughts(first: Tensor, second: Tensor, *, context_size: int = 1) -> Tensor:
    """Quick-Thoughts' classification of neighbours (Logeswaran & Lee 2018, Eq. 1-2), mean over the batch.

    first, second: (B, H), row i the sentence at position i of B *consecutive* sentences, encoded by f and
    by g. Scores are inner products ``f(s_i) . g(s_j)`` with the diagonal set to 0 (the reference's
    ``matrix_set_diag(scores, 0)``: the sentence itself stays a candidate with score 0); the target
    distribution of row i is uniform over the rows within ``context_size`` of it (the previous and next
    sentences; the first and last rows have one neighbour); the loss is the softmax cross-entropy.
    """
    size = first.shape[0]
    scores = first @ second.T  # (B, B): [i, j] = f(s_i) . g(s_j)
    scores = scores * (1 - torch.eye(size, dtype=scores.dtype, device=scores.device))  # diagonal := 0
    offsets = torch.arange(size, device=first.device)
    distance = (offsets[:, None] - offsets[None, :]).abs()  # (B, B)
    targets = ((distance >= 1) & (distance <= context_size)).to(scores.dtype)  # (B, B)
    targets = targets / targets.sum(dim=1, keepdim=True)
    return -(targets * F.log_softmax(scores, dim=-1)).sum(dim=-1).mean()


# ------------------------------------------------------------------ clusters and rankings
def bidirectional_margin(similarities: Tensor, positives: Tensor, false_negatives: Tensor, *, alpha: float,
                         beta: float) -> Tensor:  # fmt: skip
    """ClusterNS's bidirectional margin loss on in-batch false negatives (Deng et al. 2023, Sec. 3.4; reference
    ``kmeans_cluster.false_negative_loss``): a false negative j of anchor i should sit between the hard negatives
    and the positive, ``-beta <= s_ij - s_ii <= -alpha``. With ``d_ij = (s_ij - s_ii) * m_ij``,
    ``mean_ij relu(d_ij + alpha) + relu(-d_ij - beta)``: the mean runs over every entry, the unmasked ones
    (``d = 0``) adding the constant ``relu(alpha) + relu(-beta)``, as the reference's does.

    similarities: (B, N) cosine similarities of the anchors to the candidates. positives: (B,) each anchor's
    similarity to its positive. false_negatives: (B, N) 1 where candidate j is a false negative of anchor i.
    """
    delta = (similarities - positives[:, None]) * false_negatives.to(similarities.dtype)  # (B, N)
    return (F.relu(delta + alpha) + F.relu(-delta - beta)).mean()


def jensen_shannon(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """``mean_i JS(softmax(logits_p[i]) || softmax(logits_q[i]))`` in nats: RankCSE's ranking consistency (Liu
    et al. 2023, Sec. 3.2) between the similarity lists of two dropout views. logits: (B, N) each."""
    log_p, log_q = F.log_softmax(logits_p, dim=-1), F.log_softmax(logits_q, dim=-1)  # (B, N)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)  # log of the mixture (P + Q) / 2
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(dim=-1)  # (B,)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(dim=-1)
    return (0.5 * (kl_pm + kl_qm)).mean()


def listnet(student_logits: Tensor, teacher_logits: Tensor, *, exclude: Tensor | None = None) -> Tensor:
    """ListNet's top-one cross entropy (Cao et al. 2007): ``mean_i -sum_j softmax(t_i)_j log softmax(s_i)_j``,
    the teacher's list as the target of the student's (RankCSE's ranking distillation, reference ``ListNet``).

    student_logits, teacher_logits: (B, N) similarity lists already divided by their temperatures; the teacher's
    carries no gradient. exclude: (B, N) bool entries left out of both lists (a sentence's own similarity).
    """
    teacher_logits = teacher_logits.detach()
    if exclude is not None:
        student_logits = student_logits.masked_fill(exclude, -math.inf)
        teacher_logits = teacher_logits.masked_fill(exclude, -math.inf)
    target = F.softmax(teacher_logits, dim=-1)  # (B, N), 0 where excluded
    log_p = F.log_softmax(student_logits, dim=-1)
    terms = target * log_p.masked_fill(target == 0, 0.0)  # 0 * -inf must not make NaN
    return -terms.sum(dim=-1).mean()


def listmle(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """ListMLE (Xia et al. 2008): the negative log-likelihood of the teacher's ranking under the student's
    Plackett-Luce model, ``mean_i sum_k [log sum_{l >= k} exp(s_i,pi(l)) - s_i,pi(k)]`` with ``pi`` the teacher's
    order of row i, highest first (RankCSE's ranking distillation, reference ``ListMLE``). Ties in the teacher's
    list keep their column order (a stable sort; the reference shuffles before sorting).

    student_logits, teacher_logits: (B, N); only the teacher's order matters, and it carries no gradient.
    """
    order = teacher_logits.detach().argsort(dim=-1, descending=True, stable=True)  # (B, N)
    ranked = student_logits.gather(1, order)  # (B, N): the student's scores in the teacher's order
    # log sum over each suffix of the ranking: a reversed cumulative logsumexp
    suffix = torch.logcumsumexp(ranked.flip(dims=[1]), dim=1).flip(dims=[1])  # (B, N)
    return (suffix - ranked).sum(dim=-1).mean()
