"""SentEval transfer tasks: readers, folds, the probe, and the protocols against a SentEval-style reference."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_encoder
from torch import nn

from csekit import CsekitError
from csekit.data.senteval import manifest
from csekit.evaluation.transfer import (
    EXPECTED_EXAMPLES,
    L2_GRID,
    MODES,
    TASK_FILES,
    TRANSFER_TASKS,
    LinearProbes,
    ProbeConfig,
    ProbeFactory,
    TransferEvaluator,
    binary_f1,
    inner_kfold_accuracy,
    kfold_accuracy,
    load_transfer_task,
    parse_transfer_tasks,
    read_mrpc,
    read_sentences,
    read_sst,
    read_trec,
    senteval_order,
    split_accuracy,
    stratified_folds,
    torch_threads,
)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Probes train single-threaded in the evaluator; the reference copies here should too (on a busy
    # 2-core machine a threaded pass is many times slower).
    with torch_threads(1):
        yield


def _write(path: Path, lines: list[str], *, encoding: str = "utf-8", newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(newline.join(lines).encode(encoding) + newline.encode())
    return path


# =========================================================================================== readers
def test_sentence_files_are_latin1_and_keep_blank_lines(tmp_path):
    # SentEval's binary.py: latin-1, f.read().splitlines(), line.split(); CR and MPQA have blank lines.
    path = _write(tmp_path / "custrev.pos", ["a  good\tphone ", "", "caf\xe9 ok"], encoding="latin-1")
    assert read_sentences(path) == ["a good phone", "", "caf\xe9 ok"]


def test_sst_reader(tmp_path):
    path = _write(tmp_path / "sentiment-dev", ["a  fine film \t1", "dull\t0"], newline="\r\n")
    assert read_sst(path) == (["a fine film", "dull"], [1, 0])


@pytest.mark.parametrize(
    ("line", "message"),
    [("no label here", "expected 'sentence<TAB>label', found 1"), ("a\t1\textra", "expected .*found 3"),
     ("a\t2", "label '2' is not one of"), ("a\tpos", "label 'pos'")],
)  # fmt: skip
def test_sst_malformed_line_names_file_and_line(tmp_path, line, message):
    path = _write(tmp_path / "sentiment-dev", ["fine\t1", line])
    with pytest.raises(CsekitError, match=rf"{path}:2: {message}"):
        read_sst(path)


def test_sst_non_utf8_line_names_file_and_line(tmp_path):
    path = tmp_path / "sentiment-dev"
    path.write_bytes(b"fine\t1\ncaf\xe9\t0\n")
    with pytest.raises(CsekitError, match=rf"{path}:2: not UTF-8"):
        read_sst(path)


def test_trec_reader_keeps_the_coarse_class_and_reads_latin1(tmp_path):
    # train_5500.label has one latin-1 byte (0xf0, "sister\xf0city"): SentEval reads TREC as latin-1.
    path = _write(tmp_path / "TREC_10.label", ["NUM:dist How  far ?", "LOC:city Which sister\xf0city ?"],
                  encoding="latin-1")  # fmt: skip
    assert read_trec(path) == (["How far ?", "Which sister\xf0city ?"], [5, 4])


@pytest.mark.parametrize(
    ("line", "message"),
    [("NUM dist How far ?", "expected 'COARSE:fine question'"), ("NUM:dist", "expected 'COARSE:fine question'"),
     ("XYZ:dist How far ?", "unknown class 'XYZ'")],
)  # fmt: skip
def test_trec_malformed_line_names_file_and_line(tmp_path, line, message):
    path = _write(tmp_path / "TREC_10.label", ["HUM:desc Who was Galileo ?", line])
    with pytest.raises(CsekitError, match=rf"{path}:2: {message}"):
        read_trec(path)


MRPC_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"


def test_mrpc_reader_skips_the_header(tmp_path):
    path = _write(tmp_path / "msr_paraphrase_test.txt", [MRPC_HEADER, "1\t1\t2\tA  cat .\tThe cat .", "0\t3\t4\tx\ty"])
    assert read_mrpc(path) == (["A cat .", "x"], ["The cat .", "y"], [1, 0])


def test_mrpc_row_with_too_few_fields_names_file_and_line(tmp_path):
    path = _write(tmp_path / "msr_paraphrase_test.txt", [MRPC_HEADER, "1\t1\t2\ta\tb", "1\t1\t2\tonly one"])
    with pytest.raises(CsekitError, match=rf"{path}:3: expected 5 tab-separated fields, found 4"):
        read_mrpc(path)


def test_mrpc_non_utf8_line_names_file_and_line(tmp_path):
    path = tmp_path / "msr_paraphrase_test.txt"
    path.write_bytes(MRPC_HEADER.encode() + b"\n1\t1\t2\ta\tb\n0\t1\t2\tcaf\xe9\tb\n")
    with pytest.raises(CsekitError, match=rf"{path}:3: not UTF-8"):
        read_mrpc(path)


def test_examples_are_in_senteval_order():
    # sorted(zip(X, y), key=lambda z: (len(z[0]), z[1])): by word count, then label, else file order.
    examples = senteval_order(["b c", "a", "d e", "f", "g h i"], [1, 1, 0, 0, 1])
    assert examples.texts == ["f", "a", "d e", "b c", "g h i"]
    assert examples.labels.tolist() == [0, 1, 0, 1, 1]
    pairs = senteval_order(["a b", "a b", "c"], [1, 0, 1], ["x y z", "x", "y"])  # MRPC: (len A, len B, y)
    assert (pairs.texts, pairs.second, pairs.labels.tolist()) == (["c", "a b", "a b"], ["y", "x", "x y z"], [1, 0, 1])


def test_real_data_has_senteval_counts_and_classes(data_dir):
    # Counts from SentEval's paper / logs (CR and MPQA include their blank lines, as SentEval does).
    for task in TRANSFER_TASKS:
        splits = load_transfer_task(data_dir, task)
        assert {name: len(s.labels) for name, s in splits.items()} == EXPECTED_EXAMPLES[task]
    subj = load_transfer_task(data_dir, "subj")["all"]
    assert np.bincount(subj.labels).tolist() == [5000, 5000]  # objective is class 1
    trec = load_transfer_task(data_dir, "trec")
    assert set(trec["train"].labels.tolist()) == set(range(6))
    assert set(TASK_FILES.values()) and all(f in manifest() for files in TASK_FILES.values() for f in files)


def test_altered_data_is_refused_before_reading(data_dir, tmp_path):
    copy_dir = tmp_path / "downstream"
    for relative in TASK_FILES["trec"]:
        (copy_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_dir / relative, copy_dir / relative)
    TransferEvaluator("trec", data_dir=copy_dir)  # the intact copy loads
    target = copy_dir / "TREC/TREC_10.label"
    target.write_bytes(target.read_bytes().replace(b"NUM:dist", b"LOC:dist", 1))  # same size, new label
    with pytest.raises(CsekitError, match="altered or truncated"):
        TransferEvaluator("trec", data_dir=copy_dir)


def test_parse_transfer_tasks():
    assert parse_transfer_tasks("transfer") == list(TRANSFER_TASKS)
    assert parse_transfer_tasks("TREC, mr,trec") == ["trec", "mr"]
    with pytest.raises(CsekitError, match="'sst5'"):
        parse_transfer_tasks("mr,sst5")


def test_settings_are_simcse_and_senteval():
    # SimCSE evaluation.py: fasttest/dev = kfold 5 + rmsprop/128/3/2; test = kfold 10 + adam/64/5/4.
    assert MODES["fasttest"] == ProbeConfig(kfold=5, optim="rmsprop", batch_size=128, tenacity=3, epoch_size=2)
    assert MODES["test"] == ProbeConfig(kfold=10, optim="adam", batch_size=64, tenacity=5, epoch_size=4)
    assert L2_GRID == (1e-5, 1e-4, 1e-3, 1e-2)  # validation.py with usepytorch: [10**t for t in range(-5, -1)]


# ============================================================================================= folds
@pytest.mark.parametrize(("n", "classes", "k"), [(103, 2, 5), (240, 6, 10), (50, 3, 3)])
def test_folds_equal_scikit_learn(n, classes, k):
    sklearn = pytest.importorskip("sklearn.model_selection")
    labels = np.random.default_rng(n).integers(0, classes, n) * 7 + 3  # arbitrary label values
    ours = stratified_folds(labels, k, seed=1111)
    theirs = list(sklearn.StratifiedKFold(n_splits=k, shuffle=True, random_state=1111).split(np.zeros(n), labels))
    for (train, test), (sk_train, sk_test) in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(train, sk_train)
        np.testing.assert_array_equal(test, sk_test)


def test_folds_are_stratified_deterministic_and_partition_the_data():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    folds = stratified_folds(labels, 5, seed=3)
    assert [test.tolist() for _, test in folds] == [test.tolist() for _, test in stratified_folds(labels, 5, seed=3)]
    assert [t.tolist() for _, t in folds] != [t.tolist() for _, t in stratified_folds(labels, 5, seed=4)]
    assert sorted(np.concatenate([test for _, test in folds]).tolist()) == list(range(100))
    for train, test in folds:
        assert np.bincount(labels[test]).tolist() == [10, 6, 4]  # each class split evenly
        assert set(train.tolist()) == set(range(100)) - set(test.tolist())
    with pytest.raises(CsekitError, match="folds"):
        stratified_folds(np.array([0, 1, 1]), 5, seed=0)


# ============================================================================================= probe
def _blobs(n: int, dim: int = 8, *, seed: int = 0, margin: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    features = rng.standard_normal((n, dim)).astype(np.float32)
    features[:, 0] += np.where(labels == 1, margin, -margin)  # separable along the first axis
    return features, labels


def test_probe_learns_a_linearly_separable_problem():
    x, y = _blobs(400)
    test_x, test_y = _blobs(200, seed=1)
    probe = ProbeFactory(8, 2, MODES["fasttest"], 1111)([1e-5])
    assert probe.fit(x, y, validation_split=0.05)[0] > 0.95
    assert probe.score(test_x, test_y)[0] > 0.97
    assert probe.predict(test_x).shape == (1, 200)


def test_probe_is_deterministic_and_leaves_global_random_state_alone():
    x, y = _blobs(300, seed=2, margin=0.5)
    torch.manual_seed(123)
    np.random.seed(123)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    weights = []
    for _ in range(2):
        probe = LinearProbes(8, 2, l2s=[1e-3], config=MODES["test"], seed=1111)
        probe.fit(x, y, validation_split=0.05)
        weights.append(probe.weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), torch_state)
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state)


@pytest.mark.parametrize(("optim", "seed"), [("adam", 6), ("rmsprop", 8)])
def test_probes_trained_together_equal_probes_trained_one_by_one(optim, seed):
    # The L2 grid shares one Linear; each probe must train exactly as it would alone, early stopping
    # included: on these data one probe's dev accuracy would still rise after it has stopped.
    x, y = _blobs(300, dim=6, seed=seed, margin=0.4)
    dev = _blobs(80, dim=6, seed=seed + 1, margin=0.4)
    config = ProbeConfig(kfold=3, optim=optim, batch_size=32, tenacity=2, epoch_size=1, max_epoch=60)
    l2s = (1e-5, 1e-2, 3e-1, 1.0)
    together = LinearProbes(6, 2, l2s=l2s, config=config, seed=1111)
    accuracies = together.fit(x, y, validation=dev)
    for m, l2 in enumerate(l2s):
        alone = LinearProbes(6, 2, l2s=[l2], config=config, seed=1111)
        assert alone.fit(x, y, validation=dev) == [accuracies[m]]
        torch.testing.assert_close(together.weight[0, 2 * m : 2 * m + 2], alone.weight[0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(together.bias[0, 2 * m : 2 * m + 2], alone.bias[0], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(together.predict(dev[0])[m], alone.predict(dev[0])[0])


@pytest.mark.parametrize("optim", ["adam", "rmsprop"])
def test_training_sets_trained_together_equal_each_trained_alone(optim):
    # Cross-validation folds share one batched layer: each set keeps its own batch order (its own
    # RandomState), its own validation set and, where the last batches differ in size, its own mean.
    config = ProbeConfig(kfold=3, optim=optim, batch_size=32, tenacity=2, epoch_size=1, max_epoch=40)
    l2s = (1e-5, 1e-1)
    data = []
    for seed, size in ((11, 300), (12, 290), (13, 301)):  # last batches of 12, 2 and 13 examples
        x, y = _blobs(size, dim=6, seed=seed, margin=0.5)
        data.append((x, y, *_blobs(60 + seed, dim=6, seed=seed + 100, margin=0.5)))
    together = LinearProbes(6, 2, l2s=l2s, config=config, seed=1111, sets=3)
    accuracies = together.fit_sets(data)
    for s, (x, y, dev_x, dev_y) in enumerate(data):
        alone = LinearProbes(6, 2, l2s=l2s, config=config, seed=1111)
        assert alone.fit(x, y, validation=(dev_x, dev_y)) == accuracies[s]
        torch.testing.assert_close(together.weight[s], alone.weight[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(together.bias[s], alone.bias[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="same number of batches"):
        LinearProbes(6, 2, l2s=l2s, config=config, seed=1111, sets=2).fit_sets([data[0], (*_blobs(200), *data[0][2:])])


def test_binary_f1_equals_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(5):
        labels, predictions = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
        assert binary_f1(labels, predictions) == pytest.approx(metrics.f1_score(labels, predictions), abs=1e-12)
    assert binary_f1(np.zeros(4, int), np.zeros(4, int)) == 0.0


# ================================================================= protocols vs a SentEval-style copy
class _SentEvalMLP:
    """SentEval's PyTorchClassifier + MLP(nhid=0) (tools/classifier.py), on CPU, global RNGs and all."""

    def __init__(self, config: ProbeConfig, inputdim: int, nclasses: int, l2reg: float, seed: int = 1111):
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.config = config
        self.model = nn.Sequential(nn.Linear(inputdim, nclasses))
        self.loss_fn = nn.CrossEntropyLoss()
        optim = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}[config.optim]
        self.optimizer = optim(self.model.parameters())
        self.optimizer.param_groups[0]["weight_decay"] = l2reg

    def fit(self, X, y, validation_data=None, validation_split=None):
        if validation_data is not None:
            trainX, trainy, (devX, devy) = X, y, validation_data
        else:
            permutation = np.random.permutation(len(X))
            trainidx = permutation[int(validation_split * len(X)) :]
            devidx = permutation[0 : int(validation_split * len(X))]
            trainX, trainy, devX, devy = X[trainidx], y[trainidx], X[devidx], y[devidx]
        trainX, trainy = torch.from_numpy(trainX).float(), torch.from_numpy(trainy).long()
        self.nepoch, bestaccuracy, stop_train, early_stop_count = 0, -1, False, 0
        while not stop_train and self.nepoch <= self.config.max_epoch:
            self.model.train()
            for _ in range(self.nepoch, self.nepoch + self.config.epoch_size):
                permutation = np.random.permutation(len(trainX))
                for i in range(0, len(trainX), self.config.batch_size):
                    idx = torch.from_numpy(permutation[i : i + self.config.batch_size]).long()
                    loss = self.loss_fn(self.model(trainX[idx]), trainy[idx])
                    self.optimizer.zero_grad()
                    loss.backward()
                    self.optimizer.step()
            self.nepoch += self.config.epoch_size
            accuracy = self.score(devX, devy)
            if accuracy > bestaccuracy:
                bestaccuracy, bestmodel = accuracy, copy.deepcopy(self.model)
            else:
                if early_stop_count >= self.config.tenacity:
                    stop_train = True
                early_stop_count += 1
        self.model = bestmodel
        return bestaccuracy

    def score(self, devX, devy):
        self.model.eval()
        devX, devy = torch.as_tensor(devX).float(), torch.as_tensor(devy).long()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(devX), self.config.batch_size):
                pred = self.model(devX[i : i + self.config.batch_size]).max(1)[1]
                correct += pred.eq(devy[i : i + self.config.batch_size]).sum().item()
        return 1.0 * correct / len(devX)


def _senteval_kfold(X, y, config, nclasses, seed=1111):
    """SentEval's KFoldClassifier.run up to the test accuracy (tools/validation.py)."""
    from sklearn.model_selection import StratifiedKFold

    skf = StratifiedKFold(n_splits=config.kfold, shuffle=True, random_state=seed)
    scores = []
    for reg in L2_GRID:
        scanscores = []
        for train_idx, test_idx in skf.split(X, y):
            clf = _SentEvalMLP(config, X.shape[1], nclasses, reg, seed)
            clf.fit(X[train_idx], y[train_idx], validation_data=(X[test_idx], y[test_idx]))
            scanscores.append(clf.score(X[test_idx], y[test_idx]))
        scores.append(round(100 * np.mean(scanscores), 2))
    return L2_GRID[int(np.argmax(scores))], np.max(scores)


def _senteval_inner_kfold(X, y, config, nclasses, seed=1111):
    """SentEval's InnerKFoldClassifier.run (tools/validation.py)."""
    from sklearn.model_selection import StratifiedKFold

    skf = StratifiedKFold(n_splits=config.kfold, shuffle=True, random_state=1111)
    devresults, testresults = [], []
    for train_idx, test_idx in skf.split(X, y):
        X_train, y_train = X[train_idx], y[train_idx]
        optreg, dev = _senteval_kfold(X_train, y_train, config, nclasses, seed)
        devresults.append(dev)
        clf = _SentEvalMLP(config, X.shape[1], nclasses, optreg, seed)
        clf.fit(X_train, y_train, validation_split=0.05)
        testresults.append(round(100 * clf.score(X[test_idx], y[test_idx]), 2))
    return round(np.mean(devresults), 2), round(np.mean(testresults), 2)


SMALL = ProbeConfig(kfold=3, optim="adam", batch_size=16, tenacity=2, epoch_size=2)


@pytest.fixture
def _restore_global_rng():
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    yield
    torch.set_rng_state(torch_state)
    np.random.set_state(numpy_state)


@pytest.mark.usefixtures("_restore_global_rng")
def test_inner_kfold_equals_senteval_reference():
    pytest.importorskip("sklearn")
    x, y = _blobs(90, dim=6, seed=5, margin=0.6)
    make = ProbeFactory(6, 2, SMALL, 1111)
    assert inner_kfold_accuracy(make, x, y) == _senteval_inner_kfold(x, y, SMALL, 2)


@pytest.mark.usefixtures("_restore_global_rng")
@pytest.mark.parametrize("config", [SMALL, MODES["fasttest"]])
def test_kfold_and_split_equal_senteval_reference(config):
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 150)
    x = (rng.standard_normal((150, 6)) + np.eye(6)[y] * 1.5).astype(np.float32)  # three noisy classes
    make = ProbeFactory(6, 3, config, 1111)
    train, test = (x[:100], y[:100]), (x[100:], y[100:])
    dev, accuracy, predictions = kfold_accuracy(make, train, test)
    optreg, reference_dev = _senteval_kfold(*train, config, 3)
    clf = _SentEvalMLP(config, 6, 3, optreg)
    clf.fit(*train, validation_split=0.05)
    assert (dev, accuracy) == (reference_dev, round(100 * clf.score(*test), 2))
    assert predictions.shape == (50,)
    # SplitClassifier: L2 chosen on dev (the refit from the same seed is the same model).
    dev_split, train_split = (x[100:125], y[100:125]), (x[:100], y[:100])
    scores, probes = [], []
    for reg in L2_GRID:
        clf = _SentEvalMLP(config, 6, 3, reg)
        clf.fit(*train_split, validation_data=dev_split)
        scores.append(round(100 * clf.score(*dev_split), 2))
        probes.append(clf)
    best = int(np.argmax(scores))
    expected = (scores[best], round(100 * probes[best].score(x[125:], y[125:]), 2))
    assert split_accuracy(make, train_split, dev_split, (x[125:], y[125:])) == expected


# ========================================================================================= evaluator
def test_tiny_encoder_on_subsampled_real_tasks(data_dir):
    evaluator = TransferEvaluator("mr,mrpc", mode="fasttest", data_dir=data_dir, limit=120)
    assert {name: len(s.labels) for name, s in evaluator.data["mrpc"].items()} == {"train": 120, "test": 120}
    metrics = evaluator.evaluate(make_tiny_encoder("mean"))
    assert set(metrics) == {"mr", "mr/dev", "mrpc", "mrpc/dev", "mrpc/f1", "avg"}
    assert all(0 <= value <= 100 for value in metrics.values())
    assert metrics["avg"] == pytest.approx((metrics["mr"] + metrics["mrpc"]) / 2)
    assert evaluator.primary_metric == "avg"


def test_each_distinct_sentence_is_encoded_once(data_dir):
    evaluator = TransferEvaluator("trec,mrpc", mode="fasttest", data_dir=data_dir, limit=60)
    seen: list[list[str]] = []

    class Recorder:
        def encode(self, texts, *, batch_size=64):
            seen.append(list(texts))
            return np.random.default_rng(0).standard_normal((len(texts), 4)).astype(np.float32)

    first = evaluator.evaluate(Recorder())
    assert len(seen) == 1 and len(seen[0]) == len(set(seen[0]))
    sides = {t for splits in evaluator.data.values() for s in splits.values() for t in (*s.texts, *(s.second or ()))}
    assert set(seen[0]) == sides
    assert evaluator.evaluate(Recorder()) == first  # seeded: the same numbers twice


def test_torch_threads_are_restored():
    before = torch.get_num_threads()
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_unknown_mode_is_refused(data_dir):
    with pytest.raises(CsekitError, match="fasttest"):
        TransferEvaluator("mr", mode="dev", data_dir=data_dir)
