"""The model store: versioned artefacts per detector and the one in use, reloadable while running.

Layout: ``ROOT/<detector>/<model_version>/`` (``Detector.save``) and ``ROOT/<detector>/CURRENT``,
a one-line file naming the version in use, replaced atomically when a newer model is published.
The nightly job publishes; a long-running scorer holds a `LiveModel`, which notices a new
``CURRENT`` on its next use and loads it, without a restart.

``ROOT`` is a local folder or a URI (``s3a://bucket/models``, ``gs://``, ``hdfs://``, ``file://``),
read and written through the lake's file systems (``argus.detectors.lake_tables``), with the same
layout, so a folder and its ``file://`` URI are the same store. Object stores have no rename, so a
publication there is ordered instead: the version's files go to a folder named by the model's hash,
which no other model ever writes (state first, ``model.json`` last: its presence marks the artefact
complete, and an existing one is never written again), and only then does ``CURRENT`` change, in one
put. A reader follows ``CURRENT``, so it sees the old model or the new one, never a part of one; a
publication that fails midway leaves ``CURRENT`` as it was.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from argus.detectors.base import Detector, ModelError
from argus.detectors.lake_tables import SUPPORTED_SCHEMES, is_uri, lake_filesystem
from argus.detectors.registry import detector_class

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

StoreRoot = Path | str  # a local folder, or a URI kept as the string the user gave
ARTEFACT_MARKER = "model.json"  # written last: a version folder holding it is a complete artefact
POINTER = "CURRENT"


def store_location(value: StoreRoot) -> StoreRoot:
    """``--model-store``: a local folder as a ``Path``; a URI (``s3a://bucket/models``) checked and kept a string."""
    if not is_uri(value):
        return Path(value).expanduser()
    scheme, _, rest = str(value).partition("://")
    if scheme.lower() not in SUPPORTED_SCHEMES:
        known = ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)
        raise ModelError(f"--model-store {value}: unknown scheme {scheme}://; use a folder or one of {known}")
    if not rest.strip("/"):
        raise ModelError(f"--model-store {value}: name a bucket or host and a folder, e.g. {scheme}://bucket/models")
    return f"{scheme}://{rest.rstrip('/')}"


def load_model(name: str, folder: StoreRoot) -> Detector:
    """The ``name`` model saved in ``folder`` (``Detector.save``'s layout), a local folder or a URI; a URI's
    files are copied to a temporary folder and loaded from there (a complete artefact is immutable)."""
    from pyarrow.fs import FileSelector, FileType

    folder = store_location(folder)
    if isinstance(folder, Path):
        return detector_class(name).load(folder)
    fs, base = lake_filesystem(folder)
    if fs.get_file_info(f"{base}/{ARTEFACT_MARKER}").type != FileType.File:
        raise ModelError(f"no model at {folder}: {ARTEFACT_MARKER} is missing")
    with tempfile.TemporaryDirectory(prefix="argus-model-") as local:
        for info in fs.get_file_info(FileSelector(base, recursive=True)):
            if info.type != FileType.File:
                continue
            target = Path(local) / info.path[len(base) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(info.path) as stream:
                target.write_bytes(stream.read())
        return detector_class(name).load(Path(local))


class ModelStore:
    def __init__(self, root: StoreRoot) -> None:
        self.root = store_location(root)
        self._filesystem: tuple[FileSystem, str] | None = None  # a URI store's file system, made on first use

    def publish(self, detector: Detector) -> StoreRoot:
        """Save ``detector`` under its version (kept if already there) and make it the current one."""
        folder = self.save(detector)
        self.make_current(detector.name, detector.model_version)
        return folder

    def save(self, detector: Detector) -> StoreRoot:
        """Save ``detector`` under its version (kept if already there) without making it current."""
        if isinstance(self.root, Path):
            folder = self.root / detector.name / detector.model_version
            if not (folder / ARTEFACT_MARKER).is_file():
                detector.save(folder)
            return folder
        relative = f"{detector.name}/{detector.model_version}"
        if not self._is_file(f"{relative}/{ARTEFACT_MARKER}"):
            with tempfile.TemporaryDirectory(prefix="argus-model-") as local:
                detector.save(Path(local))
                files = sorted(p for p in Path(local).rglob("*") if p.is_file())
                for path in sorted(files, key=lambda p: p.name == ARTEFACT_MARKER):  # the marker last
                    self._put(f"{relative}/{path.relative_to(local).as_posix()}", path.read_bytes())
        return f"{self.root}/{relative}"

    def make_current(self, name: str, version: str) -> None:
        """Point ``CURRENT`` at a saved version, atomically: a reader sees the old or the new one."""
        if not self._is_file(f"{name}/{version}/{ARTEFACT_MARKER}"):
            raise ModelError(f"no {name} model {version} in {self.root}; save it before making it current")
        data = (version + "\n").encode()
        if isinstance(self.root, Path):
            pointer = self.root / name / POINTER
            staging = pointer.with_name(f".{POINTER}.partial")
            staging.write_bytes(data)
            os.replace(staging, pointer)
            return
        from pyarrow.fs import LocalFileSystem

        fs, base = self._fs()
        if isinstance(fs, LocalFileSystem):  # a file:// URI: a local write is not atomic, a rename is
            partial = f"{base}/{name}/.{POINTER}.{uuid.uuid4().hex}.partial"
            with fs.open_output_stream(partial) as stream:
                stream.write(data)
            fs.move(partial, f"{base}/{name}/{POINTER}")
        else:  # object stores: one put replaces the object whole
            self._put(f"{name}/{POINTER}", data)

    def current_version(self, name: str) -> str | None:
        if isinstance(self.root, Path):
            pointer = self.root / name / POINTER
            return pointer.read_text().strip() if pointer.is_file() else None
        data = self._read(f"{name}/{POINTER}")
        return None if data is None else data.decode().strip() or None

    def versions(self, name: str) -> list[str]:
        if isinstance(self.root, Path):
            folder = self.root / name
            if not folder.is_dir():
                return []
            return sorted(p.name for p in folder.iterdir() if (p / ARTEFACT_MARKER).is_file())
        from pyarrow.fs import FileSelector, FileType

        fs, base = self._fs()
        folders = [
            info.base_name
            for info in fs.get_file_info(FileSelector(f"{base}/{name}", allow_not_found=True))
            if info.type == FileType.Directory
        ]
        markers = fs.get_file_info([f"{base}/{name}/{v}/{ARTEFACT_MARKER}" for v in folders])
        return sorted(v for v, marker in zip(folders, markers, strict=True) if marker.type == FileType.File)

    def load(self, name: str, version: str | None = None) -> Detector:
        """The current model of ``name`` (or the given version)."""
        version = version or self.current_version(name)
        if version is None:
            raise ModelError(f"no {name} model published in {self.root}; run `argus batch score --detector {name}`")
        if isinstance(self.root, Path):
            return detector_class(name).load(self.root / name / version)
        return self._load_uri(name, version)

    def _load_uri(self, name: str, version: str) -> Detector:
        if not self._is_file(f"{name}/{version}/{ARTEFACT_MARKER}"):
            raise ModelError(f"no {name} model {version} in {self.root}: {ARTEFACT_MARKER} is missing")
        return load_model(name, f"{self.root}/{name}/{version}")

    # --- a URI store's files -------------------------------------------------------------------

    def _fs(self) -> tuple[FileSystem, str]:
        if self._filesystem is None:
            self._filesystem = lake_filesystem(self.root)
        return self._filesystem

    def _is_file(self, relative: str) -> bool:
        if isinstance(self.root, Path):
            return (self.root / relative).is_file()
        from pyarrow.fs import FileType

        fs, base = self._fs()
        return bool(fs.get_file_info(f"{base}/{relative}").type == FileType.File)

    def _read(self, relative: str) -> bytes | None:
        from pyarrow.fs import FileType

        fs, base = self._fs()
        path = f"{base}/{relative}"
        if fs.get_file_info(path).type != FileType.File:
            return None
        with fs.open_input_stream(path) as stream:
            return bytes(stream.read())

    def _put(self, relative: str, data: bytes) -> None:
        """One object written whole (a single put); on a file:// URI its folder is made first."""
        from pyarrow.fs import LocalFileSystem

        fs, base = self._fs()
        path = f"{base}/{relative}"
        if isinstance(fs, LocalFileSystem):
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as stream:
            stream.write(data)


class LiveModel:
    """The current model of one detector, reloaded when the store publishes a new one."""

    def __init__(self, store: ModelStore, name: str) -> None:
        self.store, self.name = store, name
        self._detector: Detector | None = None
        self.version: str | None = None  # the store's name for the loaded version (a model saved before a change
        # to the version hash keeps its old name, so comparing with a recomputed hash would reload every call)
        self._model_version: str | None = None  # the loaded model's own hash, computed on first use

    def get(self) -> Detector:
        version = self.store.current_version(self.name)
        if self._detector is None or (version is not None and version != self.version):
            self._detector = self.store.load(self.name, version)
            self._model_version = None
            self.version = version if version is not None else self.model_version()
        return self._detector

    def model_version(self) -> str:
        """``Detector.model_version`` of the loaded model, hashed once per load (it hashes the whole model).

        It names the model in alerts; ``version`` is the store's name, which differs for a model saved before a
        change to the version hash.
        """
        detector = self._detector if self._detector is not None else self.get()
        if self._model_version is None:
            self._model_version = detector.model_version
        return self._model_version
