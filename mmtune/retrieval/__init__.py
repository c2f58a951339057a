"""Retrieval: embedders, FAISS/BM25 indexes, budgeted selection and its baselines."""
