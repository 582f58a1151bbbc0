"""``python -m lightning_wsg.features``: convert region features into the native store.

Usage::

    python -m lightning_wsg.features convert data/flickr30k_vg.tsv data/flickr30k_vg.native \\
        --vocabulary data/vg_objects_vocab.txt
    python -m lightning_wsg.features convert data/flickr30k_h5 data/flickr30k_h5.native

The conversion shows a progress bar, resumes where a killed run stopped, and checks every
shard against the source when it reads it back (:func:`lightning_wsg.detection.native.convert`).
Then ``--data.detections data/flickr30k_vg.native``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .detection.native import convert

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lightning_wsg.features", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="a TSV / HDF5 source with features -> a native store folder")
    conv.add_argument("source", type=Path, help="bottom-up-attention TSV, .h5 / .hdf5 file, or a folder of them")
    conv.add_argument("folder", type=Path, help="the native store to write (resumed when it exists)")
    conv.add_argument("--vocabulary", type=Path, default=None, help="names the TSV's objects_id (vg_objects_vocab.txt)")
    conv.add_argument("--shard-size", type=int, default=1024, help="images per shard")
    conv.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    if args.no_progress:
        convert(args.source, args.folder, args.vocabulary, args.shard_size)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("converting shards"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
            task = bar.add_task("convert", total=None)
            convert(
                args.source, args.folder, args.vocabulary, args.shard_size,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )  # fmt: skip
    print(f"{args.folder}: done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
