"""The one interface every detector implements, and the versioned artefact it saves.

A detector turns events into per-user ``features`` (pandas, one row per user), learns a model
from them in ``fit`` and returns one row per user from ``score``: a score in 0..1, a ``flagged``
decision at the detector's operating threshold, ``reasons`` that compare the user's values with
the context's norm, and a ``status`` that says how much evidence the score rests on (``scored``,
or ``low evidence: ...``). The score is NaN, with ``status`` saying why, only for a user with no
event of the detector's kind or with features that cannot be used (NaN from broken data).
The Spark jobs, the Beam pipelines and the CLI all call these three methods and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd

from argus.detectors.events import Events

ARTEFACT_FORMAT = 1
# Top-level packages of releases before argus.* (an artefact pickled then names detectors.x.Cls).
_MOVED_PACKAGES = frozenset({"detectors", "jobs", "schemas", "infra", "world", "pipelines"})
SCORE_COLUMNS = ["user_id", "score", "flagged", "status", "reasons"]
# Per-item scores (one row per chat message or payment), for detectors that score items.
ITEM_COLUMNS = ["event_id", "user_id", "ts", "context", "score", "flagged", "reasons"]
SCORED = "scored"
# Status prefix of users scored on less evidence than the model was fitted on (same model, same threshold).
LOW_EVIDENCE = "low evidence"


class ModelError(ValueError):
    """An artefact that cannot be used (missing, another detector's, another format); one line for the user."""


@dataclass(frozen=True)
class Reason:
    """Why a user scored high: one feature, its value and the context's norm (Alert.reasons)."""

    feature: str
    value: float
    norm: float | None
    text: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Detector(ABC):
    """Base class: subclasses set ``name`` and ``alert_kind`` and implement the three methods.

    ``fit`` stores everything it learns in ``self.state`` (picklable) and ``self.metrics``;
    ``save``/``load`` round-trip both together with the constructor parameters.
    """

    name: ClassVar[str]
    alert_kind: ClassVar[str]
    # What ``score_items`` scores ("message", "payment"); None for detectors that score users only.
    item_kind: ClassVar[str | None] = None

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = params
        self.state: dict[str, Any] | None = None
        self.metrics: dict[str, Any] = {}
        self.fitted_at: str | None = None

    @abstractmethod
    def features(self, events: Events) -> pd.DataFrame:
        """Per-user features from events, indexed by ``user_id`` (sorted)."""

    @abstractmethod
    def fit(self, features: pd.DataFrame, labels: pd.Series | None = None) -> Self:
        """Learn the model; ``labels`` (indexed by user_id) only for detectors that are supervised."""

    @abstractmethod
    def score(self, features: pd.DataFrame) -> pd.DataFrame:
        """One row per input user, columns ``SCORE_COLUMNS``, in the input's order."""

    def score_items(self, events: Events, features: pd.DataFrame) -> pd.DataFrame:
        """One row per item of ``events`` (``ITEM_COLUMNS``), consistent with ``score(features)`` (a user's
        score summarises their items' scores); only detectors whose ``item_kind`` is set implement it."""
        raise NotImplementedError(f"the {self.name} detector scores users only")

    # --- shared machinery -------------------------------------------------------------
    def _fitted(self, state: dict[str, Any], metrics: dict[str, Any] | None = None) -> Self:
        self.state = state
        self.metrics = metrics or {}
        self.fitted_at = datetime.now(UTC).isoformat(timespec="seconds")
        return self

    def require_fitted(self) -> dict[str, Any]:
        if self.state is None:
            raise ModelError(f"the {self.name} detector is not fitted: call fit() or load a model first")
        return self.state

    @property
    def model_version(self) -> str:
        """``name-<hash of the parameters and the learned state>``: equal models give equal versions.

        The state is hashed by value (``state_digest``), not as pickled bytes: those also depend on
        which equal objects are shared and on array memory layout, so the same model fitted in one
        process or from blocks of features in another would get different versions.
        """
        params = json.dumps(self.params, sort_keys=True, default=_json_default).encode()
        digest = hashlib.sha256(params)
        state_digest(self.state, digest)
        return f"{self.name}-{digest.hexdigest()[:12]}"

    def save(self, path: Path) -> Path:
        """Write ``path/model.json`` (readable metadata) and ``path/state.pkl``; returns ``path``."""
        self.require_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "detector": self.name,
            "format": ARTEFACT_FORMAT,
            "model_version": self.model_version,
            "fitted_at": self.fitted_at,
            "params": self.params,
            "metrics": self.metrics,
        }
        (path / "state.pkl").write_bytes(pickle.dumps(self.state, protocol=5))
        (path / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=_json_default))
        return path

    @classmethod
    def load(cls, path: Path) -> Self:
        path = Path(path)
        meta_path = path / "model.json"
        if not meta_path.is_file():
            raise ModelError(
                f"no model at {path}: expected {meta_path} (save one with `argus detect ... --save-model`)"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("detector") != cls.name:
            raise ModelError(f"{path} holds a {meta.get('detector')!r} model, not a {cls.name!r} one")
        if meta.get("format") != ARTEFACT_FORMAT:
            raise ModelError(f"{path} has artefact format {meta.get('format')}; this version reads {ARTEFACT_FORMAT}")
        detector = cls(**meta["params"])
        with (path / "state.pkl").open("rb") as state:
            detector.state = _ArtefactUnpickler(state).load()
        detector.metrics = meta.get("metrics", {})
        detector.fitted_at = meta.get("fitted_at")
        return detector


class _ArtefactUnpickler(pickle.Unpickler):
    """Unpickles a model state, mapping classes of the old top-level packages to ``argus.*``."""

    def find_class(self, module: str, name: str) -> Any:
        if module.partition(".")[0] in _MOVED_PACKAGES:
            module = f"argus.{module}"
        return super().find_class(module, name)


def score_frame(
    user_ids: pd.Index | list[str],
    scores: np.ndarray,
    flagged: np.ndarray,
    status: np.ndarray | list[str],
    reasons: list[list[Reason]],
) -> pd.DataFrame:
    """Assemble ``score``'s output; scores of users that could not be scored are NaN and never flagged."""
    scores = np.asarray(scores, dtype=float)
    return pd.DataFrame(
        {
            "user_id": pd.Index(user_ids).astype(str),
            "score": np.clip(scores, 0.0, 1.0),
            "flagged": np.asarray(flagged, dtype=bool) & ~np.isnan(scores),
            "status": np.asarray(status, dtype=object),
            "reasons": reasons,
        },
        columns=SCORE_COLUMNS,
    )


def norm_reasons(
    values: pd.DataFrame,
    norms: pd.Series,
    deviation: pd.DataFrame,
    labels: dict[str, str],
    top: int = 3,
) -> list[list[Reason]]:
    """Per row, the ``top`` features with the largest positive ``deviation``, worded against the norm."""
    cols = list(deviation.columns)
    dev = deviation.to_numpy(dtype=float)
    vals = values[cols].to_numpy(dtype=float)
    order = np.argsort(-np.nan_to_num(dev, nan=-np.inf), axis=1)[:, :top]
    norm_of = [float(norms[c]) for c in cols]  # looked up once, not per row (a Series lookup costs microseconds)
    out: list[list[Reason]] = []
    for i in range(len(values)):
        row: list[Reason] = []
        for j in order[i]:
            if not dev[i, j] > 0:
                continue
            feature, value, norm = cols[j], float(vals[i, j]), norm_of[j]
            row.append(Reason(feature, value, norm, f"{labels.get(feature, feature)} {value:.3g} (norm {norm:.3g})"))
        out.append(row)
    return out


def reasons_text(reasons: list[Reason]) -> str:
    return "; ".join(r.text for r in reasons)


def state_digest(value: object, digest: Any) -> None:
    """Feed ``value`` to ``digest`` (a hashlib object) by value: dicts by sorted key, arrays by dtype, shape
    and contents, objects by class and attributes (their pickled state when they have no ``__dict__``)."""
    update = digest.update
    if value is None or isinstance(value, (bool, int, str)):
        update(f"{type(value).__name__}:{value!r};".encode())
    elif isinstance(value, float):
        update(f"float:{value!r};".encode())
    elif isinstance(value, np.generic):
        state_digest(value.item(), digest)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        update(f"bytes:{len(data)}:".encode() + data)
    elif isinstance(value, np.ndarray):
        update(f"ndarray:{value.dtype.str}:{value.dtype.descr!r}:{value.shape};".encode())
        if value.dtype.hasobject:
            for item in value.ravel(order="C"):
                state_digest(item, digest)
        else:
            update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, (pd.Series, pd.DataFrame)):
        update(f"{type(value).__name__}:".encode())
        state_digest(value.to_dict(), digest)
    elif isinstance(value, pd.Index):
        state_digest(("Index", list(value)), digest)
    elif isinstance(value, dict):
        update(f"dict:{len(value)};".encode())
        for key in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
            state_digest(key, digest)
            state_digest(value[key], digest)
    elif isinstance(value, (list, tuple)):
        update(f"{type(value).__name__}:{len(value)};".encode())
        for item in value:
            state_digest(item, digest)
    elif isinstance(value, (set, frozenset)):
        items = sorted(_item_digest(item) for item in value)
        update(f"{type(value).__name__}:{len(items)};".encode() + b"".join(items))
    else:
        kind = type(value)
        update(f"object:{kind.__module__}.{kind.__qualname__};".encode())
        attributes = getattr(value, "__dict__", None)
        state = attributes if attributes is not None else value.__getstate__()
        if state is None or state is value:
            # No inspectable state (a numpy Generator, say): its pickle, after a round trip so that
            # shared objects inside it are memoised the same way every time.
            update(pickle.dumps(pickle.loads(pickle.dumps(value, protocol=5)), protocol=5))
        else:
            state_digest(state, digest)


def _item_digest(value: object) -> bytes:
    digest = hashlib.sha256()
    state_digest(value, digest)
    return digest.digest()


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def status_group(status: object) -> str:
    """A status without its numbers: the text before the first ``:`` (``low evidence: 3 chat messages``)."""
    return str(status).split(":", 1)[0].strip()


def status_counts(statuses: Iterable[object]) -> dict[str, int]:
    """Users per status group, largest first."""
    counts = Counter(status_group(s) for s in statuses)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
