"""Seeded views of sentences used by the objectives: on token ids, on embeddings, or on words (text.py)."""
