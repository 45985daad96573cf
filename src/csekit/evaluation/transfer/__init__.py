"""SentEval's transfer tasks: a logistic regression trained on frozen sentence embeddings.

Protocol (SentEval, Conneau & Kiela 2018, as SimCSE's ``evaluation.py`` runs it for Gao et al. 2021's
transfer table, Appendix E). Each choice below is SentEval's code, function by function:

- Readers (``binary.py``, ``sst.py``, ``trec.py``, ``mrpc.py``): MR/CR/SUBJ/MPQA are one sentence a
  line (latin-1; the positive file is class 1, for SUBJ the *objective* file is), blank lines kept as
  empty sentences; SST-2 ``sentence<TAB>label`` (UTF-8); TREC ``COARSE:fine question`` (latin-1, six
  coarse classes); MRPC ``label, id, id, s1, s2`` (UTF-8, header skipped). Sentences are split on
  whitespace and re-joined with single spaces (SimCSE's batcher).
- Order: every split is sorted by (words, label) -- MRPC by (words of s1, words of s2, label) --
  before anything else. The order is not cosmetic: it fixes the stratified folds and the batches.
- Classifier (``tools/classifier.py``, ``MLP`` with ``nhid=0``): ``nn.Linear`` built after
  ``torch.manual_seed(seed)``, cross-entropy (mean over the batch), Adam or RMSprop at torch's default
  learning rate with ``weight_decay`` = the L2 penalty; ``epoch_size`` shuffled passes, then the
  validation accuracy; the best weights are kept and training stops once the accuracy has failed to
  improve ``tenacity`` + 1 times (or after 200 epochs).
- Model selection (``tools/validation.py``, ``usepytorch=True``): L2 in ``[10**t for t in
  range(-5, -1)]``. MR/CR/SUBJ/MPQA: ``InnerKFoldClassifier`` -- stratified k folds; in each, the L2
  is chosen by an inner stratified k-fold on the training part (each inner model early-stops on its
  own inner test fold), then refit with 5% held out for early stopping and tested on the outer fold;
  accuracy is the mean over folds. SST-2: ``SplitClassifier`` -- select on dev, report test. TREC
  and MRPC: ``KFoldClassifier`` -- k-fold L2 selection on train, refit (5% held out), test on test.
  MRPC's features are ``np.c_[|u - v|, u * v]`` and it also reports F1 of class 1.
- Settings (SimCSE's ``evaluation.py``): ``test`` = 10 folds, Adam, batch 64, tenacity 5, epoch size
  4; ``fasttest`` = 5 folds, RMSprop, batch 128, tenacity 3, epoch size 2. Seed 1111.
- Numbers are accuracies x100 rounded to 2 decimals at the same steps as SentEval; ``avg`` is their
  plain mean, as in SimCSE's transfer table.

Reproducing SentEval's random streams: each classifier reseeds numpy and torch in its constructor,
so here each probe owns a ``RandomState(seed)`` and builds its layer under a seeded, forked torch
generator; the folds are scikit-learn's ``StratifiedKFold(shuffle=True)`` assignment, re-implemented
(see :func:`stratified_folds`). One difference: SentEval hard-codes ``random_state=1111`` for the
MR/CR/SUBJ/MPQA folds; here ``seed`` drives those too (identical at the default seed).
"""

from csekit.evaluation.transfer.data import (
    CLASSES,
    EXPECTED_EXAMPLES,
    TASK_FILES,
    TITLES,
    TRANSFER_TASKS,
    TREC_CLASSES,
    Examples,
    load_transfer_task,
    parse_transfer_tasks,
    read_mrpc,
    read_sentences,
    read_sst,
    read_trec,
    senteval_order,
)
from csekit.evaluation.transfer.evaluator import TransferEvaluator
from csekit.evaluation.transfer.folds import stratified_folds
from csekit.evaluation.transfer.probes import (
    L2_GRID,
    MODES,
    OPTIMIZERS,
    LinearProbes,
    ProbeConfig,
    ProbeFactory,
    batches_per_pass,
    torch_threads,
)
from csekit.evaluation.transfer.protocols import (
    binary_f1,
    inner_kfold_accuracy,
    kfold_accuracy,
    run_task,
    split_accuracy,
)

__all__ = [
    "CLASSES", "EXPECTED_EXAMPLES", "L2_GRID", "MODES", "OPTIMIZERS", "TASK_FILES", "TITLES", "TRANSFER_TASKS",
    "TREC_CLASSES", "Examples", "LinearProbes", "ProbeConfig", "ProbeFactory", "TransferEvaluator",
    "batches_per_pass", "binary_f1", "inner_kfold_accuracy", "kfold_accuracy", "load_transfer_task",
    "parse_transfer_tasks", "read_mrpc", "read_sentences", "read_sst", "read_trec", "run_task", "senteval_order", "split_accuracy",
    "stratified_folds", "torch_threads",
]  # fmt: skip
