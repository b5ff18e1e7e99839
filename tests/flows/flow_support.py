"""Helpers shared by the flow tests."""
from __future__ import annotations

import hashlib
from pathlib import Path


def data_files(store: Path, prefix: str) -> dict[str, str]:
    """sha256 of every data file under store/prefix (commit markers excluded)."""
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(store).glob(f"{prefix}/**/*"))
            if p.is_file() and "_commits" not in p.parts}


def commit_records(store: Path) -> dict[str, bytes]:
    """Every commit marker of a store, by path."""
    return {str(p.relative_to(store)): p.read_bytes()
            for p in sorted(Path(store).glob("**/_commits/*.json"))}
