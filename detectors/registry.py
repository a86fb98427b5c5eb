"""Every detector by name; the CLI, the jobs and the contract tests find detectors here only."""

from __future__ import annotations

from importlib import import_module

from argus.detectors.base import Detector

# name -> "module:Class"; imported on first use so one detector's dependencies never slow another.
DETECTORS: dict[str, str] = {
    "trolls": "argus.detectors.trolls:TrollDetector",
    "evaders": "argus.detectors.evaders:EvaderDetector",
    "fraud": "argus.detectors.fraud:FraudDetector",
    "churn": "argus.detectors.churn:ChurnDetector",
}


def detector_class(name: str) -> type[Detector]:
    if name not in DETECTORS:
        raise KeyError(f"unknown detector {name!r}; known: {', '.join(sorted(DETECTORS))}")
    module, _, attr = DETECTORS[name].partition(":")
    cls: type[Detector] = getattr(import_module(module), attr)
    return cls
