"""Wheels for the GPU machine in fewer bytes: a wheel is a zip of deflated files, so an xz tarball of the
wheels' unpacked contents is far smaller (the load-test client's wheels and numpy 1.26: 35 MB as wheels,
21 MB packed), which keeps a device call under its 64 MiB carry limit. Unpacking zips each folder back
into its wheel; the wheel's RECORD lists its files' hashes, not the zip's, so the rebuilt wheel installs
as the original did.

    python3 -m tools.wheel_pack pack .carry/wheels.tar.xz .carry numpy-1.26.4-*.whl wheels/*.whl   # here
    python3 -m tools.wheel_pack unpack .carry/wheels.tar.xz .carry                                   # there
"""
from __future__ import annotations

import argparse
import lzma
import tarfile
import tempfile
import zipfile
from pathlib import Path


def pack(out: Path, root: Path, patterns: list[str]) -> list[str]:
    """Each wheel under root matching a pattern, unpacked into a folder of the wheel's own relative path."""
    wheels = sorted({p for pattern in patterns for p in root.glob(pattern)})
    with tempfile.TemporaryDirectory() as tmp:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as z:
                z.extractall(Path(tmp) / wheel.relative_to(root))
        with lzma.open(out, "wb", preset=9 | lzma.PRESET_EXTREME) as f, tarfile.open(fileobj=f, mode="w") as tar:
            for wheel in wheels:
                tar.add(Path(tmp) / wheel.relative_to(root), arcname=str(wheel.relative_to(root)))
    return [str(w.relative_to(root)) for w in wheels]


def unpack(archive: Path, dest: Path) -> list[str]:
    """The wheels again, at their relative paths under dest."""
    made = []
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(archive, "r:xz") as tar:
            tar.extractall(tmp, filter="data")
        for folder in sorted(Path(tmp).rglob("*.whl")):
            if not folder.is_dir():
                continue
            wheel = dest / folder.relative_to(tmp)
            wheel.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
                for path in sorted(folder.rglob("*")):
                    if path.is_file():
                        z.write(path, path.relative_to(folder))
            made.append(str(wheel))
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("out", type=Path)
    p.add_argument("root", type=Path)
    p.add_argument("patterns", nargs="+", help="wheel paths relative to root (globs)")
    u = sub.add_parser("unpack")
    u.add_argument("archive", type=Path)
    u.add_argument("dest", type=Path)
    args = ap.parse_args()
    made = pack(args.out, args.root, args.patterns) if args.cmd == "pack" else unpack(args.archive, args.dest)
    print(f"{args.cmd}: {len(made)} wheels")


if __name__ == "__main__":
    main()
