"""FAISS-backed HDBSCAN (pHDBSCAN) for behaviour embeddings."""

from detectors.cluster.phdbscan import PHDBSCAN

__all__ = ["PHDBSCAN"]
