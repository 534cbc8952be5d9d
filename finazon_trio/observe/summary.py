"""The end-of-run summary, printed whether or not the dashboard was shown."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def summary_table(snap: dict[str, Any]) -> Table:
    """The end-of-run summary: frames, rejects by reason, ticks, delivered, failed."""
    src, tr, pub = snap["source"], snap["transform"], snap["publisher"]
    table = Table(title="finazon-trio summary", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("count", justify="right")
    table.add_row("frames received", f"{src['frames']:,}")
    table.add_row("bars", f"{tr['bars']:,}")
    table.add_row("protocol messages", f"{tr['protocol_messages']:,}")
    for reason, count in sorted(tr["rejects"].items()):
        table.add_row(f"rejected: {reason}", f"[yellow]{count:,}[/]")
    if src.get("corrupt_lines"):
        table.add_row("corrupt recording lines", f"[yellow]{src['corrupt_lines']:,}[/]")
    table.add_row("price ticks", f"{tr['ticks']:,}")
    table.add_row("volume messages", f"{tr['volume_messages']:,}")
    if tr["dead_letters"]:
        table.add_row("dead letters", f"{tr['dead_letters']:,}")
    if tr.get("backfills"):
        table.add_row("backfilled minutes", f"{tr['backfilled_bars']:,}")
        gaps = f"{tr['gaps']:,} ({tr['gap_minutes']:,} minutes)"
        table.add_row("gap records", f"[yellow]{gaps}[/]" if tr["gaps"] else gaps)
    table.add_row("produced", f"{pub['produced']:,}")
    table.add_row("delivered", f"[green]{pub['delivered']:,}[/]")
    failed_style = "red" if pub["failed"] else "green"
    table.add_row("failed", f"[{failed_style}]{pub['failed']:,}[/]")
    return table
