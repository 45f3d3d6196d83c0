"""YAML files that must hold a mapping (training configs, codec configs): one reader, whose
errors say which file and what it should have been."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict


def read_yaml_mapping(path: str | os.PathLike, what: str) -> Dict[str, Any]:
    """The mapping in `path`; `what` names it in errors ("training config", ...)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    with open(path, encoding="utf-8") as f:
        conf = yaml.safe_load(f)
    if not isinstance(conf, dict):
        raise ValueError(f"{path} is not a {what} (a YAML mapping)")
    return conf
