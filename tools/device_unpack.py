"""Put what a device run brought back into the repository: results/ and BENCHMARKS.md's GPU section.

    python tools/device_unpack.py FOLDER [--root REPO]

FOLDER is where the device tool left the files of `tools/device_check.sh`'s $OUT (its files_at).
results.tar.gz replaces results/<device-slug>/ whole for each device in it; the GPU sections of
FOLDER/BENCHMARKS.md replace those sections of BENCHMARKS.md, and every other section stays.
Then re-execute the lessons that show committed results (results/README.md) and commit.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))


def _safe_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Plain files and folders with relative paths inside the archive's root, nothing else."""
    members = []
    for member in tar.getmembers():
        parts = PurePosixPath(member.name).parts
        if PurePosixPath(member.name).is_absolute() or ".." in parts:
            raise SystemExit(f"error: {member.name!r} in the archive points outside it")
        if not (member.isfile() or member.isdir()):
            raise SystemExit(f"error: {member.name!r} in the archive is neither a file nor a folder")
        members.append(member)
    return members


def unpack_results(archive: Path, results: Path) -> list[str]:
    """Extract ``archive`` into ``results``, replacing each device folder it holds; return the slugs."""
    with tarfile.open(archive) as tar:
        members = _safe_members(tar)
        # a device's folder: the first part of every path below it (a loose top-level file is none)
        names = (PurePosixPath(m.name.removeprefix("./")).parts for m in members)
        slugs = sorted({parts[0] for parts in names if len(parts) > 1 and parts[0] != "."})
        for slug in slugs:
            if (results / slug).exists():
                shutil.rmtree(results / slug)
        results.mkdir(parents=True, exist_ok=True)
        tar.extractall(results, members=members)
    return slugs


def merge_sections(returned: Path, benchmarks: Path) -> list[str]:
    """Copy the GPU sections of ``returned`` into ``benchmarks``; return their labels."""
    import notebooks

    theirs = {m["label"]: m[0] for m in notebooks.SECTION.finditer(returned.read_text(encoding="utf-8"))}
    gpu = {label: text for label, text in theirs.items() if label.startswith("gpu-")}
    ours = benchmarks.read_text(encoding="utf-8") if benchmarks.exists() else ""
    sections = {m["label"]: m[0] for m in notebooks.SECTION.finditer(ours)} | gpu
    benchmarks.write_text(notebooks.benchmarks_markdown(sections), encoding="utf-8")
    return sorted(gpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the folder holding results.tar.gz, BENCHMARKS.md, summary.txt")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    folder, root = args.folder, args.root
    if not (folder / "results.tar.gz").is_file():
        raise SystemExit(f"error: no results.tar.gz in {folder}")
    slugs = unpack_results(folder / "results.tar.gz", root / "results")
    print(f"results/: {', '.join(slugs) or 'nothing'} unpacked")
    if (folder / "BENCHMARKS.md").is_file():
        labels = merge_sections(folder / "BENCHMARKS.md", root / "BENCHMARKS.md")
        print(f"BENCHMARKS.md: section {', '.join(labels) or '(no GPU section came back)'} merged")
    if (folder / "summary.txt").is_file():
        print((folder / "summary.txt").read_text(encoding="utf-8"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
