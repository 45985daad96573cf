"""Using a trained model: corpora encoded to files (``csekit encode``), batches cut by a token budget."""
