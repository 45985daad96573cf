"""Nearest-neighbour search over embedding files: FAISS indexes that know the model their vectors came from."""

from csekit.search.index import KINDS, SearchIndex, build_index, load_index

__all__ = ["KINDS", "SearchIndex", "build_index", "load_index"]
