"""Helpers the loaders, publish and export share: stage lookup, layouts, captions, id layouts."""
from __future__ import annotations

import numpy as np

from pipelines.store import Store, open_store
from wintok.tokenizer import TokenLayout

ID_LAYOUTS = ("streams", "concat", "interleaved")


def as_store(store_root: str | Store, storage_options: dict | None = None) -> Store:
    """A Store from a root URL (or the Store itself)."""
    return store_root if isinstance(store_root, Store) else open_store(store_root,
                                                                       storage_options=storage_options)


def resolve_stage(store: Store, stage: str, kind: str) -> str:
    """'<kind>/<lineage>' from either that or a bare lineage name; it must exist in the manifest."""
    if not isinstance(stage, str) or not stage:
        raise ValueError(f"{kind} stage must be a non-empty string like '{kind}/<lineage>', got {stage!r}")
    full = stage if stage.startswith(kind + "/") else f"{kind}/{stage}"
    stages = store.manifest().get("stages", {})
    if full not in stages:
        known = sorted(s for s in stages if s.startswith(kind + "/"))
        raise ValueError(f"{full!r} is not a stage of {store.root_url}; known {kind} stages: {known}")
    return full


def lineage_of(store: Store, stage: str) -> dict:
    """The lineage description featurize recorded for a stage."""
    lineage = store.manifest()["stages"][stage].get("lineage")
    if not lineage:
        raise ValueError(f"stage {stage!r} has no lineage in the manifest; was it written by featurize?")
    return lineage


def token_layout_of(store: Store, token_stage: str) -> TokenLayout:
    """The TokenLayout of a token stage."""
    return TokenLayout.from_dict(lineage_of(store, token_stage)["layout"])


def stored_captions(store: Store) -> dict[str, str]:
    """key -> caption of every stored sample that has one (from the ingest status tables)."""
    from pipelines.ingest import read_status

    table = read_status(store)
    keys = table.column("key").to_pylist()
    caps = table.column("caption").to_pylist()
    status = table.column("status").to_pylist()
    return {k: c for k, c, s in zip(keys, caps, status) if s == "stored" and c is not None}


ID_DTYPES = ("int64", "int32", "int16")


def check_ids_dtype(dtype: str) -> str:
    """Validate the dtype batches carry ids in. int16 holds every id here (< 32768) and moves
    4x fewer bytes than int64 between loader workers; call `.long()` on the device."""
    if dtype not in ID_DTYPES:
        raise ValueError(f"ids_dtype {dtype!r} not one of {ID_DTYPES}")
    return dtype


def check_id_layout(layout: str) -> str:
    """Validate an id layout name."""
    if layout not in ID_LAYOUTS:
        raise ValueError(f"id layout {layout!r} not one of {ID_LAYOUTS}")
    return layout


def arrange_ids(ids: np.ndarray, layout: str) -> np.ndarray:
    """(B, streams, positions) -> 'streams' as is, 'concat' (B, S*P) stream-major,
    'interleaved' (B, P*S) position-major (the S ids of position 0, then of position 1, ...)."""
    if layout == "streams":
        return ids
    if layout == "concat":
        return ids.reshape(ids.shape[0], -1)
    return np.ascontiguousarray(ids.transpose(0, 2, 1)).reshape(ids.shape[0], -1)
