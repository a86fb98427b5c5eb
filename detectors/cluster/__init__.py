"""FAISS-backed HDBSCAN (pHDBSCAN) for behaviour embeddings."""

from argus.detectors.cluster.phdbscan import PHDBSCAN

__all__ = ["PHDBSCAN"]
