"""``argus import``: a user's own CSV, JSON Lines or Parquet data, mapped into Argus events.

``mapping`` reads and checks the mapping file, ``convert`` turns one source row into a candidate
event, ``run`` reads, converts, validates, writes the lake or Kafka and dead-letters the rest.
"""

from argus.imports.mapping import Mapping, MappingError, load_mapping
from argus.imports.run import ImportDeadLetter, ImportSummary, SourceError, run_import

__all__ = [
    "ImportDeadLetter",
    "ImportSummary",
    "Mapping",
    "MappingError",
    "SourceError",
    "load_mapping",
    "run_import",
]
