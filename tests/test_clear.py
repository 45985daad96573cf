"""CLEAR: the four augmentations (seeded, never empty, at their rates), the WordNet reader on a fixture
database (and on the real one when installed), the views made from BERT and RoBERTa token ids, and the
NT-Xent loss against a naive reference."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_encoder, tiny_roberta

from csekit.augment.text import (
    SentenceAugmenter,
    reordering,
    span_deletion,
    synonym_substitution,
    word_deletion,
)
from csekit.augment.wordnet import WordNet
from csekit.data.collate import pad_batch
from csekit.errors import CsekitError
from csekit.losses import nt_xent
from csekit.models import SentenceEncoder
from csekit.objectives import RunContext, build_objective
from csekit.training.config import TrainConfig
from csekit.training.trainer import build_model

WORDS = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9".split()  # distinct, so moved and kept words can be told apart
DELETIONS = [word_deletion, span_deletion]
ORDER_ONLY = [word_deletion, span_deletion, reordering]

# ----------------------------------------------------------------------------- a WordNet fixture
#: (part of speech, lemmas) per synset, in the data files' order; "guitar" has no other lemma.
SYNSETS = [
    ("noun", ["car", "auto", "automobile"]),
    ("noun", ["car", "railway_car"]),
    ("noun", ["dog", "domestic_dog", "Canis_familiaris"]),
    ("noun", ["guitar"]),
    ("noun", ["mask", "disguise"]),
    ("verb", ["run", "go"]),
    ("verb", ["car", "drive"]),  # not real WordNet: a word with senses in two parts of speech
    ("adj", ["big(a)", "large(a)"]),
]


def write_wordnet(folder: Path) -> dict[tuple[str, int], int]:
    """WordNet-format index.POS/data.POS files (wndb(5)); returns {(pos, synset number): byte offset}."""
    folder.mkdir(parents=True, exist_ok=True)
    offsets, senses = {}, {}
    for pos in ("noun", "verb", "adj"):
        data = b"  1 This is a licence line of the fixture database.  \n  2 So is this one.  \n"
        for number, (part, lemmas) in enumerate(SYNSETS):
            if part != pos:
                continue
            offsets[pos, number] = len(data)
            words = " ".join(f"{lemma} 0" for lemma in lemmas)
            line = f"{len(data):08d} 05 {pos[0]} {len(lemmas):02x} {words} 000 | a gloss  \n"
            data += line.encode()
            for lemma in lemmas:
                key = lemma.lower().removesuffix("(a)")
                senses.setdefault((pos, key), []).append(offsets[pos, number])
        (folder / f"data.{pos}").write_bytes(data)
        lines = ["  1 licence line of the index  \n"]
        for (part, lemma), found in sorted(senses.items()):
            if part == pos:  # lemma pos synset_cnt p_cnt [ptr]*p_cnt sense_cnt tagsense_cnt offsets
                lines.append(f"{lemma} {pos[0]} {len(found)} 1 @ {len(found)} 0 {' '.join(f'{o:08d}' for o in found)}  \n")
        (folder / f"index.{pos}").write_text("".join(lines))
    return offsets


@pytest.fixture
def wordnet_dir(tmp_path) -> Path:
    write_wordnet(tmp_path / "wordnet")
    return tmp_path / "wordnet"


def test_wordnet_reader_on_the_fixture(wordnet_dir):
    offsets = write_wordnet(wordnet_dir)
    wordnet = WordNet(wordnet_dir)
    assert wordnet.offsets("car", "noun") == (offsets["noun", 0], offsets["noun", 1])  # two senses, index order
    assert wordnet.offsets("Domestic Dog", "noun") == (offsets["noun", 2],)  # case and spaces normalised
    assert wordnet.offsets("car", "adv") == () and wordnet.offsets("nothing", "noun") == ()
    assert wordnet.synset("noun", offsets["noun", 2]) == ("dog", "domestic dog", "Canis familiaris")
    assert wordnet.synset("adj", offsets["adj", 7]) == ("big", "large")  # adjective marker dropped
    # every sense of every part of speech, the word itself left out, first spelling kept
    assert wordnet.synonyms("car") == ("auto", "automobile", "railway car", "drive")
    assert wordnet.synonyms("CAR") == wordnet.synonyms("car")
    assert wordnet.synonyms("domestic dog") == ("dog", "Canis familiaris")
    assert wordnet.synonyms("big") == ("large",)
    assert wordnet.synonyms("guitar") == () and wordnet.synonyms("unknown") == ()


def test_wordnet_location_comes_from_the_argument_or_the_environment(wordnet_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORDNET_DIR", str(wordnet_dir))
    assert WordNet().synonyms("big") == ("large",)
    for missing in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(CsekitError, match=r"apt-get install wordnet-base.*WORDNET_DIR"):
            WordNet(missing)
    (wordnet_dir / "data.verb").unlink()
    with pytest.raises(CsekitError, match="index.verb but no data.verb"):
        WordNet(wordnet_dir)


def test_a_wordnet_index_that_does_not_match_its_data_is_an_error(wordnet_dir):
    (wordnet_dir / "data.noun").write_bytes(b"  1 licence\n" + (wordnet_dir / "data.noun").read_bytes())
    with pytest.raises(CsekitError, match="no synset at byte offset"):
        WordNet(wordnet_dir).synonyms("car")


@pytest.mark.skipif(not Path("/usr/share/wordnet/index.noun").is_file(),
                    reason="WordNet is not installed at /usr/share/wordnet: apt-get install wordnet-base")  # fmt: skip
def test_real_wordnet_database():
    wordnet = WordNet("/usr/share/wordnet")
    assert {"auto", "automobile", "railway car"} <= set(wordnet.synonyms("car"))
    assert {"glad", "felicitous"} <= set(wordnet.synonyms("happy"))
    assert "Canis familiaris" in wordnet.synonyms("dog") and wordnet.synonyms("guitar") == ()


# ----------------------------------------------------------------------------- the augmentations
def fixture_synonyms(word: str) -> tuple[str, ...]:
    return {"car": ("auto", "automobile"), "dog": ("hound",), "run": ("go", "sprint")}.get(word, ())


ALL = [
    lambda words, rng: word_deletion(words, rng=rng),
    lambda words, rng: word_deletion(words, placeholder="[DEL]", rng=rng),
    lambda words, rng: span_deletion(words, rng=rng),
    lambda words, rng: span_deletion(words, placeholder="[DEL]", rng=rng),
    lambda words, rng: reordering(words, rng=rng),
    lambda words, rng: synonym_substitution(words, synonyms=fixture_synonyms, rng=rng),
]
SENTENCE = "the car and the dog run past a red guitar near my old house today".split()


@pytest.mark.parametrize("augment", ALL)
def test_augmentations_are_deterministic_for_a_seed_and_vary_across_seeds(augment):
    assert augment(SENTENCE, random.Random(3)) == augment(SENTENCE, random.Random(3))
    assert augment(SENTENCE, torch.Generator().manual_seed(3)) == augment(SENTENCE, torch.Generator().manual_seed(3))
    torch.manual_seed(3)
    first = augment(SENTENCE, None)  # drawn from torch's global generator, which the trainer seeds
    torch.manual_seed(3)
    assert augment(SENTENCE, None) == first
    assert len({tuple(augment(SENTENCE, random.Random(seed))) for seed in range(8)}) > 1
    assert augment(SENTENCE, random.Random(0)) != SENTENCE


@pytest.mark.parametrize("augment", ALL)
@pytest.mark.parametrize("words", [["one"], ["one", "two"], []])
def test_augmentations_never_empty_a_sentence(augment, words):
    for seed in range(20):
        out = augment(words, random.Random(seed))
        assert len(out) >= min(1, len(words))
        assert not words or set(out) & set(words)  # an original word always survives


@pytest.mark.parametrize("placeholder", [None, "[DEL]"])
def test_word_deletion_deletes_its_share_of_words_and_keeps_the_rest_in_order(placeholder):
    for seed in range(10):
        out = word_deletion(WORDS, ratio=0.7, placeholder=placeholder, rng=random.Random(seed))
        kept = [word for word in out if word != "[DEL]"]
        assert len(kept) == 3 and kept == [word for word in WORDS if word in kept]  # round(0.7 * 10) deleted
        if placeholder:  # each deleted word leaves its own placeholder in its place
            assert len(out) == 10 and all(o in (w, "[DEL]") for o, w in zip(out, WORDS))
    assert word_deletion(WORDS, ratio=0.0, rng=random.Random(0)) == WORDS
    assert len(word_deletion(WORDS, ratio=1.0, rng=random.Random(0))) == 1  # never all of them
    assert len(word_deletion(WORDS[:3], ratio=0.7, rng=random.Random(0))) == 1  # round(2.1) = 2 deleted


@pytest.mark.parametrize("placeholder", [None, "[DEL]"])
def test_span_deletion_cuts_one_span_of_its_share_of_words(placeholder):
    starts = set()
    for seed in range(30):
        out = span_deletion(WORDS, ratio=0.7, placeholder=placeholder, rng=random.Random(seed))
        start = next(i for i, (o, w) in enumerate(zip([*out, None], WORDS)) if o != w)
        middle = [placeholder] if placeholder else []
        assert out == WORDS[:start] + middle + WORDS[start + 7 :]
        starts.add(start)
    assert starts == {0, 1, 2, 3}  # every position a 7-word span can start at


@pytest.mark.parametrize(("size", "ratio", "moved"), [(10, 0.3, 4), (20, 0.3, 6), (7, 0.3, 2), (2, 0.3, 2),
                                                      (9, 0.5, 6), (10, 0.0, 0)])  # fmt: skip
def test_reordering_swaps_spans_pairwise_and_leaves_every_other_word_in_place(size, ratio, moved):
    words = [f"w{i}" for i in range(size)]
    for seed in range(20):
        out = reordering(words, ratio=ratio, rng=random.Random(seed))
        assert Counter(out) == Counter(words)
        changed = [i for i, (o, w) in enumerate(zip(out, words)) if o != w]
        assert len(changed) == moved  # round(ratio * n) words, one more when that is odd


def test_substitution_replaces_only_words_with_synonyms_using_the_source():
    sentence = "The car and a dog run past the Guitar , Car.".split()
    seen = Counter()
    for seed in range(40):
        out = synonym_substitution(sentence, synonyms=fixture_synonyms, ratio=0.2, rng=random.Random(seed))
        changed = [i for i, (o, w) in enumerate(zip(out, sentence)) if o != w]
        assert len(changed) == 2  # round(0.2 * 11) of the 4 words that have synonyms
        assert set(changed) <= {1, 4, 5, 10}
        for i in changed:
            seen[out[i]] += 1
        assert out[10] in ("Car.", "Auto.", "Automobile.")  # capital and punctuation kept
        assert out[1] in ("car", "auto", "automobile") and out[4] in ("dog", "hound")
        assert out[5] in ("run", "go", "sprint")
    assert set(seen) == {"auto", "automobile", "hound", "go", "sprint", "Auto.", "Automobile."}
    everything = synonym_substitution(sentence, synonyms=fixture_synonyms, ratio=1.0, rng=random.Random(0))
    assert sum(o != w for o, w in zip(everything, sentence)) == 4  # all candidates, no more


def test_substitution_uses_the_wordnet_fixture_and_never_touches_a_placeholder(wordnet_dir):
    # "mask" has a synonym in the fixture: a substituted placeholder would read "[disguise]"
    augment = SentenceAugmenter(("word_deletion", "substitution"), deletion_ratio=0.5, substitution_ratio=1.0,
                                placeholder="[MASK]", synonyms=WordNet(wordnet_dir))  # fmt: skip
    words = ["big", "mask", "guitar", "run"]
    expected = ["large", "disguise", "guitar", "go"]  # the fixture's only synonyms; guitar has none
    for seed in range(20):
        out = augment(" ".join(words), random.Random(seed)).split()
        assert out.count("[MASK]") == 2
        assert all(o in ("[MASK]", e) for o, e in zip(out, expected))


def test_augmenter_checks_its_settings(wordnet_dir):
    with pytest.raises(CsekitError, match="unknown augmentation"):
        SentenceAugmenter(("crop",))
    with pytest.raises(CsekitError, match="deletion_ratio must be between 0 and 1"):
        SentenceAugmenter(("word_deletion",), deletion_ratio=1.5)
    with pytest.raises(CsekitError, match="needs a synonym source"):
        SentenceAugmenter(("substitution",))
    assert SentenceAugmenter(("reordering",), reorder_ratio=0.0)("a  b c ") == "a b c"


# ----------------------------------------------------------------------------- the objective
SENTENCES = ["a man plays the guitar .", "two dogs run in a field .", "the stock market fell today .",
             "she slices an onion , slowly !"]  # fmt: skip


def tokens(encoder, texts):
    ids = encoder.tokenize(texts)
    return pad_batch([{k: ids[k][i] for k in ids} for i in range(len(texts))], encoder.tokenizer.pad_token_id)


def tiny_roberta_encoder(folder: Path) -> SentenceEncoder:
    return tiny_roberta(folder, SENTENCES)


@pytest.fixture(params=["bert", "roberta"])
def encoder(request, tmp_path):
    return make_tiny_encoder() if request.param == "bert" else tiny_roberta_encoder(tmp_path)


def test_views_without_change_give_back_the_token_ids(encoder):
    """Decoding and tokenizing again is lossless, so the views differ from the input only by the augmentation."""
    objective = build_objective("clear", encoder, options={"augmentations": ["reordering"], "reorder_ratio": 0.0})
    batch = tokens(encoder, SENTENCES)
    views = objective.augmented_views(encoder, batch)
    assert torch.equal(views["input_ids"], torch.cat([batch["input_ids"], batch["input_ids"]]))
    assert torch.equal(views["attention_mask"], torch.cat([batch["attention_mask"], batch["attention_mask"]]))


def test_deletion_views_hold_the_mask_token_and_the_tokenizer_own_special_tokens(encoder):
    objective = build_objective("clear", encoder, context=RunContext(max_length=8),
                                options={"augmentations": ["word_deletion"], "deletion_ratio": 0.5})  # fmt: skip
    tokenizer = encoder.tokenizer
    torch.manual_seed(0)
    views = objective.augmented_views(encoder, tokens(encoder, SENTENCES))
    lengths = views["attention_mask"].sum(dim=1)
    assert views["input_ids"].shape[0] == 2 * len(SENTENCES) and lengths.max() <= 8
    for row, length in zip(views["input_ids"].tolist(), lengths.tolist()):
        pieces = tokenizer.convert_ids_to_tokens(row[:length])
        assert pieces[0] == tokenizer.cls_token and pieces[-1] == tokenizer.sep_token
        assert tokenizer.mask_token in pieces and "Ġ" not in pieces  # no stray space before <mask>
        assert any(token_id not in tokenizer.all_special_ids for token_id in row[:length])  # never empty


def test_views_are_seeded_by_the_global_generator_and_differ_between_the_two_views(tiny_encoder):
    objective = build_objective("clear", tiny_encoder, options={"augmentations": ["span_deletion"]})
    batch = tokens(tiny_encoder, SENTENCES)
    torch.manual_seed(5)
    first = objective.augmented_views(tiny_encoder, batch)
    torch.manual_seed(5)
    assert torch.equal(objective.augmented_views(tiny_encoder, batch)["input_ids"], first["input_ids"])
    assert not torch.equal(objective.augmented_views(tiny_encoder, batch)["input_ids"], first["input_ids"])
    size = len(SENTENCES)
    assert not torch.equal(first["input_ids"][:size], first["input_ids"][size:])


def test_substitution_through_the_objective_uses_wordnet_dir(tiny_encoder, wordnet_dir, tmp_path):
    options = {"augmentations": ["substitution"], "substitution_ratio": 1.0, "wordnet_dir": str(wordnet_dir)}
    objective = build_objective("clear", tiny_encoder, options=options)
    views = objective.augmented_views(tiny_encoder, tokens(tiny_encoder, ["the dog and the car", "a guitar"]))
    texts = tiny_encoder.tokenizer.batch_decode(views["input_ids"], skip_special_tokens=True)
    assert texts[1] == texts[3] == "a guitar"  # no synonym: left as it is
    for text in (texts[0], texts[2]):
        assert text.split(" and the ")[0] in ("the domestic dog", "the canis familiaris")
        assert text.split(" and the ")[1] in ("auto", "automobile", "railway car", "drive")
    with pytest.raises(CsekitError, match="apt-get install wordnet-base"):
        build_objective("clear", tiny_encoder, options={"wordnet_dir": str(tmp_path / "missing")})
    with pytest.raises(CsekitError, match="deletion_placeholder"):
        build_objective("clear", tiny_encoder, options={"deletion_placeholder": "[DEL]", "augmentations": ["reordering"]})


def naive_nt_xent(first, second, temperature):
    """SimCLR's NT-Xent with loops in float64: l(i, j) over the 2N views, mean over the 2N anchors."""
    views = torch.cat([first, second]).double()
    size, total = first.shape[0], 0.0
    for i in range(2 * size):
        positive = (i + size) % (2 * size)
        logits = {k: torch.dot(views[i], views[k]) / (views[i].norm() * views[k].norm()) / temperature
                  for k in range(2 * size) if k != i}  # fmt: skip
        total += -(logits[positive] - torch.logsumexp(torch.stack(list(logits.values())), 0))
    return total / (2 * size)


@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_loss_matches_the_naive_reference(temperature):
    encoder = make_tiny_encoder(hidden_dropout_prob=0.1).train()
    objective = build_objective("clear", encoder, options={"temperature": temperature, "augmentations": ["reordering"]})
    torch.manual_seed(3)
    embeddings = objective.embed(encoder, {"sent0": tokens(encoder, SENTENCES)})
    loss = objective.loss(embeddings, {})["contrastive"]
    expected = naive_nt_xent(embeddings["view1"], embeddings["view2"], temperature)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(5, 8, generator=generator), torch.randn(5, 8, generator=generator)
    expected = naive_nt_xent(first, second, temperature)  # random vectors: a large loss, so a relative tolerance
    assert nt_xent(first, second, temperature, reduction="mean").item() == pytest.approx(expected.item(), rel=1e-6)


def test_mlm_term_joins_the_contrastive_term(bert_mini):
    """CLEAR's L = L_MLM + L_CL, with its own copy of the checkpoint's MLM head (the mlm wrapper)."""
    config = TrainConfig(model=str(bert_mini), objective="clear", wrappers={"mlm": {"weight": 1.0}}, mlp_only_train=True,
                         options={"augmentations": ["span_deletion"]})  # fmt: skip
    encoder, objective = build_model(config)
    torch.manual_seed(0)
    terms = objective(encoder, {"sent0": tokens(encoder, SENTENCES)})
    assert set(terms) == {"contrastive", "mlm"} and all(torch.isfinite(value) for value in terms.values())
    terms["mlm"].backward()
    assert encoder.backbone.get_input_embeddings().weight.grad is not None
