"""Where is the ink? Per-slice ink signal, surface depth, layer order and a slice window.

Reads bands of rows of every labelled train fragment of DATA (never a whole volume) and
writes OUT/probe.json and OUT/probe.png (signal against slice, per fragment). The window it
recommends is what `data.z_start: auto` / `data.z_end: auto` resolve to (`kit train` probes
the training rows of its own fold the same way). See kit/data/probe.py for the method.

probe.json records the identity of every fragment it read (kit/provenance.py); a rerun on the
same files keeps it (and says so), any changed, added or removed fragment probes again.
"""

from __future__ import annotations

import argparse

from kit.cli import add_progress_flag

HELP = "per-slice ink signal, surface depth, layer order and the slice window to train on"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset directory (with train/)")
    p.add_argument("--out", default="probe", help="output directory (default: ./probe)")
    add_progress_flag(p)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kit.data.fragment import Fragment
    from kit.data.layout import labelled_fragments
    from kit.data.probe import combine, describe, probe_fragment
    from kit.io import read_json, write_json
    from kit.pictures import probe_plot
    from kit.progress import progress_bar
    from kit.provenance import fragment_identity

    fragments = [Fragment(p) for p in labelled_fragments(args.data)]
    identity = {f.id: fragment_identity(f) for f in fragments}
    out = Path(args.out)
    if (out / "probe.json").is_file() and (out / "probe.png").is_file():
        old = read_json(out / "probe.json")
        if old.get("data") == identity:
            lo, hi = old["window"]
            flat = ", along the surface" if old.get("flatten") else ""
            print(f"{out / 'probe.json'}: same fragments, kept (ink window slices {lo}..{hi - 1}"
                  f"{flat})")  # fmt: skip
            return 0
    probes = []
    for f in progress_bar(fragments, desc="probe", unit="fragment", enabled=not args.no_progress):
        probes.append(probe_fragment(f, f.labels()))
    probe = combine(probes)
    # the picture first: a probe.json with its data identity stands for a finished probe
    probe_plot(probe, out / "probe.png")
    write_json(out / "probe.json", {**probe.to_dict(), "data": identity})
    for p in probes:
        s = p.surface
        print(f"fragment {p.id}: window {p.window[0]}..{p.window[1] - 1}, surface at slice "
              f"{s['median']:.1f} (5-95 %: {s['p5']:.1f}..{s['p95']:.1f}), "
              f"{'reversed' if p.reversed else 'scan order'}")  # fmt: skip
    print(describe(probe))
    print(f"wrote {out / 'probe.json'} and {out / 'probe.png'}")
    return 0
