"""Read a user's YAML file (an SLO file, a load schedule) with errors that name the file.

Used by :mod:`experiments.slo` and :mod:`experiments.schedules`; each passes
its own error class, so the CLI reports the problem the way it reports that
kind of file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["read_yaml"]


def read_yaml(path: Path, error: type[ValueError], what: str) -> Any:
    """The parsed document at ``path``; ``error("<path>: ...")`` when it cannot be read or is not YAML."""
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise error(f"{path}: cannot read the {what}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{path}: the {what} is not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from exc
