"""Plain-text and Markdown tables for the terminal summary and Prefect artifacts."""
from __future__ import annotations

from typing import Any, Sequence

from flows.stages import StageResult

STAGE_COLUMNS = ("stage", "status", "shards run", "skipped", "total", "samples run", "ok", "failed",
                 "seconds", "img/s")


def stage_rows(results: Sequence[StageResult]) -> list[dict[str, Any]]:
    """One row per stage result, with the STAGE_COLUMNS keys."""
    return [{"stage": r.stage, "status": r.status, "shards run": r.shards_run,
             "skipped": r.shards_skipped, "total": r.shards_total, "samples run": r.samples_run,
             "ok": r.ok, "failed": r.failed, "seconds": round(r.seconds, 1),
             "img/s": round(r.items_per_s, 1)} for r in results]


def text_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Aligned columns (numbers right-aligned) for a terminal."""
    if not rows:
        return "(none)"
    cols = list(columns or rows[0].keys())
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    numeric = [all(isinstance(r.get(c), (int, float)) for r in rows) for c in cols]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(vals, widths, numeric)).rstrip()

    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(c) for c in cells])


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table."""
    if not rows:
        return "_none_"
    cols = list(columns or rows[0].keys())
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(r.get(c, "")).replace("|", "\\|") for c in cols) + " |"
            for r in rows]
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.2f}".rstrip("0").rstrip(".") or "0"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else str(v)
