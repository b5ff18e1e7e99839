"""Versioned Arrow schemas: tagging, validation on write and version checks on read."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

# Bump the major number when a reader of the old format can no longer read the new one.
STORE_FORMAT_VERSION = 1
SUPPORTED_STORE_FORMAT_VERSIONS = (1,)

META_NAME = b"wintok.schema"
META_VERSION = b"wintok.schema_version"


class SchemaError(ValueError):
    """A table or store does not match the schema this code writes or can read."""


@dataclass(frozen=True)
class TableSpec:
    """A named, versioned Arrow schema (the one definition of a table on disk)."""

    name: str
    version: int
    schema: pa.Schema

    def tagged(self) -> pa.Schema:
        """The Arrow schema with name and version in its metadata (what writers write)."""
        meta = dict(self.schema.metadata or {})
        meta[META_NAME] = self.name.encode()
        meta[META_VERSION] = str(self.version).encode()
        return self.schema.with_metadata(meta)


def _describe(field: pa.Field) -> str:
    return f"{field.name}: {field.type}{'' if field.nullable else ' not null'}"


def validate_table(table: pa.Table, spec: TableSpec) -> pa.Table:
    """Check names, types and nulls of `table` against `spec`; return it in spec order, tagged.

    Raises SchemaError naming each mismatch (missing/extra column, wrong type or width, nulls
    in a not-null column) so a writer never writes a table a reader cannot trust.
    """
    if not isinstance(table, pa.Table):
        raise SchemaError(f"{spec.name}: expected a pyarrow.Table, got {type(table).__name__}")
    problems = []
    expected = {f.name: f for f in spec.schema}
    have = set(table.column_names)
    for name in expected:
        if name not in have:
            problems.append(f"missing column {_describe(expected[name])}")
    for name in table.column_names:
        if name not in expected:
            problems.append(f"unexpected column {name!r} (accepted: {sorted(expected)})")
    for name, field in expected.items():
        if name not in have:
            continue
        col = table.column(name)
        if not col.type.equals(field.type):
            problems.append(f"column {name!r} has type {col.type}, expected {field.type}")
            continue
        if not field.nullable and col.null_count:
            problems.append(f"column {name!r} has {col.null_count} nulls but is not nullable")
        if pa.types.is_fixed_size_list(field.type) and col.num_chunks:
            inner_nulls = sum(chunk.values.null_count for chunk in col.chunks)
            if inner_nulls:
                problems.append(f"column {name!r} has {inner_nulls} null vector elements")
    if problems:
        raise SchemaError(f"table does not match schema {spec.name} v{spec.version}: " + "; ".join(problems))
    out = table.select([f.name for f in spec.schema])
    return out.cast(spec.tagged())


def check_schema_version(schema: pa.Schema, spec: TableSpec, *, where: str = "table") -> None:
    """Refuse a table written under another name or an incompatible version of `spec`."""
    meta = schema.metadata or {}
    name = meta.get(META_NAME, b"").decode() or None
    version_raw = meta.get(META_VERSION)
    if name != spec.name:
        raise SchemaError(f"{where}: expected a {spec.name!r} table, found schema tag {name!r}")
    try:
        version = int(version_raw) if version_raw is not None else None
    except ValueError:
        version = None
    if version is None:
        raise SchemaError(f"{where}: {spec.name} table has no readable schema version")
    if version > spec.version:
        raise SchemaError(
            f"{where}: {spec.name} table has schema version {version}, newer than the {spec.version} this "
            "code reads; upgrade wintok-pipeline to read it"
        )
    if version != spec.version:
        raise SchemaError(
            f"{where}: {spec.name} table has schema version {version}, this code reads only {spec.version}; "
            "re-run the stage that wrote it or use the release that wrote it"
        )


def check_store_format(version: object, *, where: str) -> None:
    """Refuse a store manifest written by an incompatible (usually newer) format version."""
    if not isinstance(version, int):
        raise SchemaError(f"{where}: manifest has no integer 'format_version' (got {version!r}); not a wintok store?")
    if version > STORE_FORMAT_VERSION:
        raise SchemaError(
            f"{where}: store format version {version} was written by a newer wintok-pipeline; this code "
            f"supports {list(SUPPORTED_STORE_FORMAT_VERSIONS)}. Upgrade wintok-pipeline to open it."
        )
    if version not in SUPPORTED_STORE_FORMAT_VERSIONS:
        raise SchemaError(
            f"{where}: store format version {version} is no longer supported (supported: "
            f"{list(SUPPORTED_STORE_FORMAT_VERSIONS)}); rebuild the store with this release."
        )
