"""The headline ratios of a case (paired ratios vs torch.nn, option overheads) and the
packed-vs-padded per-token comparison; the numbers the report tables show."""

from __future__ import annotations

from .cases import MODES
from .impls import BASELINE, IMPLS
from .timing import paired_ratio


def summarize_case(case, raw):
    """Headline ratios of one case (>1 means fusedrnn is faster; overhead in %)."""
    def ratio(mode, num, den):
        times = raw.get(mode, {})
        return paired_ratio(times.get(num), times.get(den))

    out = {**case.fields(), "lengths": list(case.lengths) if case.packed else None}
    for mode in MODES:
        out[f"{mode}_vs_torchnn"] = ratio(mode, BASELINE, "fused")
    for mode in ("fwd", "bwd", "fwdbwd"):
        r = ratio(mode, "fused_clip", "fused")
        out[f"clip_overhead_{mode}_pct"] = (
            {"median": (r["median"] - 1) * 100, "iqr": r["iqr"] * 100} if r else None)
    for mode in ("bwd", "fwdbwd"):
        for tracked, plain in (("fused_track", "fused"), ("fused_clip_track", "fused_clip")):
            r = ratio(mode, tracked, plain)
            out[f"track_overhead_{plain}_{mode}_pct"] = (
                {"median": (r["median"] - 1) * 100, "iqr": r["iqr"] * 100} if r else None)
    out["fwdbwd_vs_reference"] = ratio("fwdbwd", "reference", "fused_clip")
    for mode in ("fwdbwd", "infer"):
        out[f"{mode}_vs_flashrnn"] = ratio(mode, "flashrnn", "fused")
    return out


# Fields that identify a configuration apart from its batch layout (padded / packed).
CONFIG_KEYS = ("cell", "T", "B", "I", "H", "layers", "directions", "dtype", "device")


def packed_vs_padded(summaries, rows):
    """Per-token comparison of every configuration that ran both padded and packed.

    For each mode and impl present in both: (median_padded / (T * B)) /
    (median_packed / sum(lengths)), > 1 when a real token costs less in the packed batch
    than a token of the padded one. The two cases ran one after the other, not interleaved,
    so this is a ratio of medians, not a paired ratio; the same ratio of the minimum times
    is given as a check ("min"). Also carries each case's paired train-step / infer ratios
    vs torch.nn."""
    def key(d):
        return tuple(d[k] for k in CONFIG_KEYS)

    by_case = {(key(s), s["packed"]): s for s in summaries}
    by_row = {(key(r), r["packed"], r["mode"], r["impl"]): r for r in rows}
    out = []
    for (k, packed), s_packed in by_case.items():
        s_padded = by_case.get((k, False))
        if not packed or s_padded is None:
            continue
        entry = {**{name: s_packed[name] for name in CONFIG_KEYS},
                 "tokens_padded": s_padded["tokens"], "tokens_packed": s_packed["tokens"],
                 "lengths": s_packed["lengths"], "per_token": {}}
        for mode in MODES:
            entry[f"{mode}_vs_torchnn_padded"] = s_padded[f"{mode}_vs_torchnn"]
            entry[f"{mode}_vs_torchnn_packed"] = s_packed[f"{mode}_vs_torchnn"]
            for impl in IMPLS:
                a = by_row.get((k, False, mode, impl))
                b = by_row.get((k, True, mode, impl))
                if a is None or b is None:
                    continue
                entry["per_token"].setdefault(mode, {})[impl] = {
                    stat: (a[f"{stat}_ms"] / a["tokens"]) / (b[f"{stat}_ms"] / b["tokens"])
                    for stat in ("median", "min")}
        out.append(entry)
    return out
