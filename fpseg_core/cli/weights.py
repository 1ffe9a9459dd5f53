"""`fpseg weights fetch NAME... [--dir DIR]` / `fpseg weights list`: published weights, fetched once.

The registry, the cache and the download live in fpseg_core/weights.py; this module adds the command line and
the step that names the prompts of a fetched FPSeg checkpoint as a bank (like `fpseg prompts extract`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..checkpoint import load_checkpoint
from ..weights import HOME_ENV, REGISTRY, Fetched, WeightsEntry, WeightsError, cache_dir, fetch, status

DIR_HELP = (f"cache folder (default: ${HOME_ENV}, else ~/.cache/fpseg); names are resolved from ${HOME_ENV}, so "
            f"set {HOME_ENV}=DIR to use files fetched elsewhere by name")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "weights", help="fetch published weights into the cache once; list the cache",
        description="Nothing is downloaded at run time: fetch the weights once, then pass their name wherever a "
                    "checkpoint path goes (--checkpoint fpseg-mobilesam, the node's checkpoint parameter, "
                    "FPSeg.from_pretrained).",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    fetch_parser = actions.add_parser(
        "fetch", help="download, verify and cache weights by name (resumes an interrupted download)",
        description="Names: " + "; ".join(f"{e.name}: {e.description}" for e in REGISTRY.values()) + ".",
    )
    fetch_parser.add_argument("names", nargs="+", metavar="NAME", choices=list(REGISTRY),
                              help=f"one or more of {', '.join(REGISTRY)}")
    fetch_parser.add_argument("--dir", type=Path, help=DIR_HELP)
    fetch_parser.set_defaults(func=run_fetch)
    list_parser = actions.add_parser("list", help="what the cache holds and whether it verifies")
    list_parser.add_argument("--dir", type=Path, help=DIR_HELP)
    list_parser.set_defaults(func=run_list)


def write_bank(entry: WeightsEntry, fetched: Fetched) -> Path | None:
    """Save the prompts of a fetched FPSeg checkpoint as `entry.bank_filename` next to it (when the checkpoint
    is new or the bank is missing); the bank's path, or None for entries without one."""
    if entry.bank_filename is None:
        return None
    bank_path = fetched.path.with_name(entry.bank_filename)
    if fetched.downloaded or not bank_path.is_file():
        loaded = load_checkpoint(fetched.path, encoder=entry.encoder)
        if loaded.bank is None:
            raise WeightsError(f"{fetched.path} ({entry.name}) carries no trained prompts, so no named bank can be "
                               f"written; check {entry.url} is the published FPSeg file")
        loaded.bank.save(bank_path)
    return bank_path


def run_fetch(args: argparse.Namespace) -> int:
    for name in dict.fromkeys(args.names):  # each name once, in the order given
        entry = REGISTRY[name]
        fetched = fetch(entry, args.dir, progress=sys.stderr.isatty())
        how = "downloaded" if fetched.downloaded else "already cached"
        print(f"{name}: {how} and verified: {fetched.path} (SHA-256 {fetched.record.sha256})")
        bank_path = write_bank(entry, fetched)
        if bank_path is not None:
            print(f"{name}: named prompt bank {bank_path}")
    if args.dir is not None and cache_dir(args.dir) != cache_dir():
        print(f"note: names are resolved from {cache_dir()}; export {HOME_ENV}={cache_dir(args.dir)} to use these "
              "by name")
    return 0


def run_list(args: argparse.Namespace) -> int:
    home = cache_dir(args.dir)
    print(f"cache: {home}")
    width = max(map(len, REGISTRY))
    for entry in REGISTRY.values():
        state = status(entry, home)
        bank = f"; bank {entry.bank_filename}" if entry.bank_filename and (home / entry.bank_filename).is_file() else ""
        print(f"  {entry.name:<{width}}  {state.state:<8}  {entry.filename}: {state.detail}{bank}")
    return 0
