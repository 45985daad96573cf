"""A classifier over a pair's two sentence embeddings, saved with the model it was trained with.

Sentence-BERT's classification objective (Reimers & Gurevych 2019, Sec. 3, Eq. 1): ``o = softmax(W_t
(u, v, |u - v|))`` with ``W_t`` in R^{3n x k}. The features concatenated are a setting (``u``, ``v``,
``|u-v|``, ``u*v``; the paper's Table 6 compares them). The head is part of the trained model, not of
the loss: it is written into the model folder (``pair_classifier/``: ``config.json`` with the labels and
features, ``model.safetensors``) beside the encoder, so that the NLI classifier can be used and
evaluated after training. sentence-transformers ignores the folder; :func:`load_pair_classifier` reads it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from csekit.errors import CsekitError

#: The folder of a saved model that holds its pair classifier.
PAIR_CLASSIFIER = "pair_classifier"
#: Feature name -> how it is computed from (u, v).
PAIR_FEATURES = {
    "u": lambda u, v: u,
    "v": lambda u, v: v,
    "|u-v|": lambda u, v: (u - v).abs(),
    "u*v": lambda u, v: u * v,
}


def check_features(features: Sequence[str]) -> None:
    unknown = [name for name in features if name not in PAIR_FEATURES]
    if unknown or not features:
        raise CsekitError(f"pair features {', '.join(unknown) or '(none)'}: choose from {', '.join(PAIR_FEATURES)}")


class PairClassifier(nn.Module):
    """(u, v) -> (B, k) logits over ``labels``, a linear map of the concatenated ``features``."""

    def __init__(self, dim: int, labels: Sequence[str], *, features: Sequence[str] = ("u", "v", "|u-v|")):
        super().__init__()
        check_features(features)
        self.dim, self.labels, self.features = dim, tuple(labels), tuple(features)
        self.linear = nn.Linear(len(self.features) * dim, len(self.labels))

    def forward(self, first: Tensor, second: Tensor) -> Tensor:
        features = torch.cat([PAIR_FEATURES[name](first, second) for name in self.features], dim=-1)  # (B, F * H)
        return self.linear(features)  # (B, k)

    def save(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"dim": self.dim, "labels": list(self.labels), "features": list(self.features)}
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_file({key: value.detach().cpu().contiguous() for key, value in self.state_dict().items()},
                  folder / "model.safetensors")  # fmt: skip

    @classmethod
    def load(cls, folder: str | os.PathLike) -> PairClassifier:
        folder = Path(folder)
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            head = cls(int(config["dim"]), config["labels"], features=config["features"])
            head.load_state_dict(load_file(folder / "model.safetensors"))
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise CsekitError(f"cannot load the pair classifier in {folder}: {str(error).splitlines()[0]}") from None
        return head


def load_pair_classifier(model: str | os.PathLike) -> PairClassifier:
    """The pair classifier saved in the model folder ``model`` (a one-line error if it has none)."""
    folder = Path(model) / PAIR_CLASSIFIER
    if not folder.is_dir():
        raise CsekitError(f"{model} holds no pair classifier ({PAIR_CLASSIFIER}/): it was not trained with one")
    return PairClassifier.load(folder)
