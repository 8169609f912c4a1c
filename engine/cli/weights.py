"""`spooky weights fetch|list|verify`: the published model files in the cache directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.models.clip_files import find_clip_files, hf_hub_cache
from engine.models.digests import DigestRecords
from engine.models.download import human_size
from engine.models.fetch import fetch
from engine.models.model_files import CONFIGURED, clip_copy, copies, engine_files
from engine.models.registry import REGISTRY, WeightsEntry, file_for, get_entry
from engine.models.verify import FileStatus, check_file, file_statuses
from spooky.config import ModelsConfig, Settings, load_settings
from spooky.errors import ConfigError, WeightsError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("weights", help="download, list and verify model weights")
    actions = parser.add_subparsers(dest="weights_action", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--cache-dir", type=Path, help="weights folder (default: models.cache_dir of the config)"
    )
    common.add_argument("--config", type=Path, help="config.toml to read models.cache_dir from")

    fetch = actions.add_parser(
        "fetch", parents=[common], help="download files (default: the ones the config uses)"
    )
    fetch.add_argument("names", nargs="*", metavar="NAME", help=f"one of: {', '.join(REGISTRY)}")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    fetch.set_defaults(func=_fetch)

    listing = actions.add_parser(
        "list", parents=[common], help="registry entries and whether they are present"
    )
    listing.set_defaults(func=_list)

    verify = actions.add_parser(
        "verify",
        parents=[common],
        help="check the sha256 of the files present, found elsewhere and named in [models]",
    )
    verify.add_argument("names", nargs="*", metavar="NAME", help="entries to check (default: all)")
    verify.add_argument(
        "--file", type=Path, help="check this file (downloaded by hand) against NAME's published digest"
    )
    verify.set_defaults(func=_verify)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config) if args.config else load_settings(None)


def _cache_dir(args: argparse.Namespace, settings: Settings) -> Path:
    return (args.cache_dir or settings.models.cache_dir).expanduser()


def _fetch(args: argparse.Namespace) -> int:
    settings = _settings(args)
    cache_dir = _cache_dir(args, settings)
    names = args.names or _default_names(settings, cache_dir)
    for name in names:
        get_entry(name)  # unknown names fail before anything is downloaded
    for name in names:
        print(f"{name}: {get_entry(name).description}")
        for path in fetch(name, cache_dir, progress=not args.no_progress):
            print(f"  {path} ({human_size(path.stat().st_size)})")
    return 0


def _default_names(settings: Settings, cache_dir: Path) -> list[str]:
    """What the config uses, less what it already has outside the cache (named in [models], or
    CLIP in another tool's cache): an operator with the files on disk downloads nothing."""
    models = settings.models
    names = []
    for name, have in (
        ("stylegan2_ffhq", models.stylegan2),
        (models.vqgan, models.vqgan_ckpt if models.vqgan_config else None),
        ("clip_vit_b_32", models.clip),
    ):
        if have is not None:
            print(f"{name}: not fetched, the config names {have}")
        else:
            names.append(name)
    found = [f for f in find_clip_files(cache_dir) if f.where not in ("SpookyGAN cache",)]
    if "clip_vit_b_32" in names and found:
        names.remove("clip_vit_b_32")
        print(f"clip_vit_b_32: not fetched, found {found[0].path} ({found[0].where})")
    return names


def _list(args: argparse.Namespace) -> int:
    settings = _settings(args)
    cache_dir = _cache_dir(args, settings)
    print(f"cache directory: {cache_dir}")
    rows = [("NAME", "PRESENT", "SIZE", "PATH")]
    for st in file_statuses(list(REGISTRY), cache_dir):
        wf = next(f for f in REGISTRY[st.entry].files if cache_dir / f.filename == st.path)
        if st.present:
            size = human_size(st.size)
        else:
            size = f"~{human_size(wf.approx_size)}" if wf.approx_size else "?"
        rows.append((st.entry, "yes" if st.present else "no", size, str(st.path)))
    _print_table(rows)
    found = find_clip_files(cache_dir)
    print("\nCLIP ViT-B/32 files found (the first one is used unless models.clip is set):")
    if found:
        rows = [("WHERE", "SIZE", "PATH")]
        rows += [(f.where, human_size(f.path.stat().st_size), str(f.path)) for f in found]
        _print_table(rows)
    else:
        hub = hf_hub_cache()
        print(f"  none (looked in {cache_dir}, {hub} and {Path.home() / '.cache' / 'clip'})")
    configured = _configured_files(settings)
    if configured:
        print("\nfiles named in the [models] section (used instead of the cache):")
        rows = [("SETTING", "PRESENT", "SIZE", "PATH")]
        for key, path in configured:
            present = path.is_file()
            size = human_size(path.stat().st_size) if present else "-"
            rows.append((f"models.{key}", "yes" if present else "no", size, str(path)))
        _print_table(rows)
    return 0


def _configured_files(settings: Settings) -> list[tuple[str, Path]]:
    """Model files the config points at directly (files already downloaded elsewhere)."""
    models = settings.models
    named = {"stylegan2": models.stylegan2, "vqgan_config": models.vqgan_config}
    named |= {"vqgan_ckpt": models.vqgan_ckpt, "clip": models.clip}
    return [(key, Path(path).expanduser()) for key, path in named.items() if path is not None]


def _verify(args: argparse.Namespace) -> int:
    settings = _settings(args)
    cache_dir = _cache_dir(args, settings)
    records = DigestRecords.in_cache(cache_dir)
    names = args.names or list(REGISTRY)
    entries = [get_entry(name) for name in names]
    if args.file is not None:
        if len(entries) != 1:
            raise WeightsError(
                "--file needs exactly one NAME",
                hint="e.g. spooky weights verify clip_vit_b_32_openai --file ViT-B-32.pt",
            )
        path = args.file.expanduser()
        reference = file_for(entries[0], path).sha256
        statuses = [check_file(entries[0].name, path, reference, records=records)]
    else:
        statuses = _statuses(settings.models.model_copy(update={"cache_dir": cache_dir}), entries, records)
    rows = [("NAME", "CHECK", "PATH", "DETAIL")]
    rows += [(st.entry, st.check, str(st.path), st.detail) for st in statuses]
    _print_table(rows)
    missing_counts = bool(args.names) or args.file is not None
    failed = [st for st in statuses if st.check == "mismatch" or (missing_counts and st.check == "missing")]
    return 1 if failed else 0


def _statuses(models: ModelsConfig, entries: list[WeightsEntry], records: DigestRecords) -> list[FileStatus]:
    """Each file of `entries` as the loader resolves it (every copy on disk, the one it loads
    first) against the digest the loader requires; then the other CLIP files found and the files
    [models] names. "missing" means no copy anywhere, not "missing from the cache"."""
    try:
        used = engine_files(models)
    except ConfigError:
        used = []  # `spooky config check` reports the setting; the files are still checked
    loaded = {f.path.resolve() for f in used if f.path.is_file()}
    groups = [group for entry in entries for group in copies(entry, models)]
    if any(entry.kind == "clip" for entry in entries):
        groups += [[clip_copy(f)] for f in find_clip_files(models.cache_dir)]
    groups += [[f] for f in used if f.where == CONFIGURED]
    out, seen = [], set()
    for f in (f for group in groups for f in group):
        key = f.path.resolve()
        if key in seen:
            continue
        seen.add(key)
        name = f"models.{f.role}" if f.where == CONFIGURED else f.entry
        where = f"{f.where}, loaded by the engine" if key in loaded else f.where
        reference = f.reference.sha256 if f.reference else None
        out.append(check_file(name, f.path, reference, what=where, records=records))
    return out


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)] + [row[-1]]
        print("  ".join(cells).rstrip())
