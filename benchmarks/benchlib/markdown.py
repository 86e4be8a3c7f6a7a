"""Markdown tables for the benchmark reports (bench.py, bench_gpu.py, bench_cpu_engine.py)
and the README block (make_readme_table.py): one implementation, standard library only."""

EMPTY = "–"


def table(columns, items, n_fixed: int) -> str:
    """Markdown table of (header, align, cell function) columns. Of the columns after the
    first n_fixed, one that is empty (EMPTY) for every item (a mode or implementation that
    was not run) is left out."""
    cells = [[fn(item) for _, _, fn in columns] for item in items]
    keep = [j for j in range(len(columns))
            if j < n_fixed or any(row[j] != EMPTY for row in cells)]
    lines = ["| " + " | ".join(columns[j][0] for j in keep) + " |",
             "|" + "|".join(columns[j][1] for j in keep) + "|"]
    lines += ["| " + " | ".join(row[j] for j in keep) + " |" for row in cells]
    return "\n".join(lines)


# The leading configuration columns of a table whose rows have cell, T, B, I and H.
CELL_SHAPE_COLUMNS = [
    ("cell", "---", lambda r: r["cell"]),
    ("T", "--:", lambda r: str(r["T"])),
    ("B", "--:", lambda r: str(r["B"])),
    ("I", "--:", lambda r: str(r["I"])),
    ("H", "--:", lambda r: str(r["H"])),
]


def per_token_column(mode: str, impl: str, fmt):
    """A cell function for a packed-vs-padded comparison (summary.packed_vs_padded): the
    per-real-token ratio of `impl` in `mode`, formatted by fmt(ratio dict), or EMPTY."""
    def cell(c):
        r = c["per_token"].get(mode, {}).get(impl)
        return EMPTY if r is None else fmt(r)
    return cell
