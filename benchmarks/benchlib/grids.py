"""bench.py's shape grids and presets, named by what they measure. Standard library only
(make_readme_table.py reads the names too).

Shapes are (T, B, I, H). The headline shape is the one from the originating issue."""

HEADLINE = (128, 32, 64, 256)
FASTRNNS = (100, 64, 512, 512)  # PyTorch benchmarks/fastrnns default
GRIDS = {
    "headline": [HEADLINE],
    "full": [HEADLINE, FASTRNNS] + [(HEADLINE[0], b, HEADLINE[2], HEADLINE[3]) for b in (1, 8, 16)],
    "packed": [HEADLINE],
    "track_overhead": [HEADLINE],
}

# Presets that fix more than the shapes. Their settings apply even when --T/--B/--I/--H
# replace the shapes; --layers, --modes and --impls given explicitly override them.
#   packed: 2-layer bidirectional LSTM/GRU, (a) padded equal-length batch vs (b) packed
#   batch with lengths uniform in [T/4, T]; training step and inference. fused_clip is
#   timed in fwdbwd as the like-for-like partner of the (clipping, truncating) reference
#   loop; infer leaves out the reference (it only restates the forward loop) and fused_clip
#   (its forward is fused's).
PRESETS = {
    "packed": {
        "layers": 2,
        "bidirectional": True,
        "packed": (False, True),
        "modes": ("fwdbwd", "infer"),
        "impls": {"fwdbwd": ("fused", "fused_clip", "torchnn", "reference"),
                  "infer": ("fused", "torchnn")},
    },
    #   track_overhead: the cost of track_grad_norms=True: backward and training step, with
    #   and without clipping, each against the same kernels without recording.
    "track_overhead": {
        "modes": ("bwd", "fwdbwd"),
        "impls": {m: ("fused", "fused_track", "fused_clip", "fused_clip_track", "torchnn")
                  for m in ("bwd", "fwdbwd")},
    },
}

# The grids' former names (the issues that asked for them), still accepted by --grid and
# found in recorded results (config.grid): deprecated, mapped to the new names.
OLD_NAMES = {"issue3": "packed", "issue7": "track_overhead"}


def grid_name(name: str) -> str:
    """The current name of a grid, given its current or former name."""
    return OLD_NAMES.get(name, name)
