"""Data sets: folder and CSV import, the embedding cache, and the few-shot evaluation."""
