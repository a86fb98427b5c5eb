"""The model store: versioned artefacts per detector and the one in use, reloadable while running.

Layout: ``ROOT/<detector>/<model_version>/`` (``Detector.save``) and ``ROOT/<detector>/CURRENT``,
a one-line file naming the version in use, replaced atomically when a newer model is published.
The nightly job publishes; a long-running scorer holds a `LiveModel`, which notices a new
``CURRENT`` on its next use and loads it, without a restart.
"""

from __future__ import annotations

import os
from pathlib import Path

from argus.detectors.base import Detector, ModelError
from argus.detectors.registry import detector_class


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def publish(self, detector: Detector) -> Path:
        """Save ``detector`` under its version (kept if already there) and make it the current one."""
        folder = self.save(detector)
        self.make_current(detector.name, detector.model_version)
        return folder

    def save(self, detector: Detector) -> Path:
        """Save ``detector`` under its version (kept if already there) without making it current."""
        folder = self.root / detector.name / detector.model_version
        if not (folder / "model.json").is_file():
            detector.save(folder)
        return folder

    def make_current(self, name: str, version: str) -> None:
        """Point ``CURRENT`` at a saved version, atomically: a reader sees the old or the new one."""
        if not (self.root / name / version / "model.json").is_file():
            raise ModelError(f"no {name} model {version} in {self.root}; save it before making it current")
        pointer = self.root / name / "CURRENT"
        staging = pointer.with_name(".CURRENT.partial")
        staging.write_text(version + "\n")
        os.replace(staging, pointer)

    def current_version(self, name: str) -> str | None:
        pointer = self.root / name / "CURRENT"
        return pointer.read_text().strip() if pointer.is_file() else None

    def versions(self, name: str) -> list[str]:
        folder = self.root / name
        return sorted(p.name for p in folder.iterdir() if (p / "model.json").is_file()) if folder.is_dir() else []

    def load(self, name: str, version: str | None = None) -> Detector:
        """The current model of ``name`` (or the given version)."""
        version = version or self.current_version(name)
        if version is None:
            raise ModelError(f"no {name} model published in {self.root}; run `argus batch score --detector {name}`")
        return detector_class(name).load(self.root / name / version)


class LiveModel:
    """The current model of one detector, reloaded when the store publishes a new one."""

    def __init__(self, store: ModelStore, name: str) -> None:
        self.store, self.name = store, name
        self._detector: Detector | None = None
        self.version: str | None = None  # the store's name for the loaded version (a model saved before a change
        # to the version hash keeps its old name, so comparing with a recomputed hash would reload every call)

    def get(self) -> Detector:
        version = self.store.current_version(self.name)
        if self._detector is None or (version is not None and version != self.version):
            self._detector = self.store.load(self.name, version)
            self.version = version if version is not None else self._detector.model_version
        return self._detector
