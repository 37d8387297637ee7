"""Normalizers: what turns scores into weights (softmax, sigmoid, linear)."""
from __future__ import annotations

from dataclasses import dataclass

from . import _check as C


class Normalizer:
    """Base class of normalizers."""


@dataclass(frozen=True)
class Softmax(Normalizer):
    def __repr__(self):
        return "softmax()"


def softmax():
    """Softmax over the unmasked keys, flash-style; a row with no unmasked key gives 0."""
    return Softmax()


@dataclass(frozen=True)
class Sigmoid(Normalizer):
    bias: float | None = None

    def __repr__(self):
        return f"sigmoid(bias={self.bias})"


def sigmoid(bias=None):
    """Sigmoid attention: w_ij = sigmoid(s_ij + bias), no normalization over keys;
    bias=None means -log(M), M the key sequence length."""
    if bias is not None:
        bias = C.number("bias", bias, what="sigmoid: ")
    return Sigmoid(bias)


FEATURE_MAPS = ("elu1", "relu", "focused", "identity")


@dataclass(frozen=True)
class Linear(Normalizer):
    feature_map: str = "elu1"
    eps: float = 1e-6

    def __repr__(self):
        return f"linear(feature_map={self.feature_map!r}, eps={self.eps})"


def linear(feature_map="elu1", eps=1e-6):
    """Linear attention: phi(q)^T S / (phi(q)^T z + eps), S = sum_j phi(k_j) v_j^T,
    z = sum_j phi(k_j); phi in elu1 | relu | focused | identity; no score scale."""
    w = "linear: "
    C.choice("feature_map", feature_map, FEATURE_MAPS, what=w)
    eps = C.number("eps", eps, what=w)
    if not eps > 0:
        raise ValueError(f"linear: eps must be > 0, got {eps}")
    return Linear(feature_map, eps)
