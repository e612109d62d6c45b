"""Rewrite the file lists of ``MedAutoencoderLib/CMakeLists.txt`` from the files of the package.

Run from anywhere after adding, renaming or removing a library file or package data file:
``python scripts/update_library_cmakelists.py``. ``test_extension_packaging.py`` fails until the lists match.
"""
from __future__ import annotations

import re
from pathlib import Path

LIB = Path(__file__).resolve().parent.parent / "MedAutoencoderLib"
PACKAGE_DATA_DIRS = ("data", "models")


def library_scripts() -> list:
    """Every .py file of the package, subpackages' with their folder (WITH_SUBDIR keeps relative paths)."""
    return sorted(p.relative_to(LIB).as_posix() for p in LIB.rglob("*.py") if "__pycache__" not in p.parts)


def library_resources() -> list:
    return sorted(p.relative_to(LIB).as_posix() for folder in PACKAGE_DATA_DIRS if (LIB / folder).is_dir()
                  for p in (LIB / folder).rglob("*") if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts)


def replace_list(text: str, variable: str, entries: list) -> str:
    """Replace the body of ``set(<variable> ... )`` (one entry per line) with ``entries``."""
    body = "".join(f"  {entry}\n" for entry in entries)
    new_text, count = re.subn(r"(set\(%s\n).*?(  \))" % variable, lambda m: m.group(1) + body + m.group(2), text,
                              flags=re.S)
    if count != 1:
        raise SystemExit(f"set({variable} ...) not found in {LIB / 'CMakeLists.txt'}")
    return new_text


def main() -> int:
    path = LIB / "CMakeLists.txt"
    text = path.read_text(encoding="utf-8")
    text = replace_list(text, "MODULE_PYTHON_SCRIPTS", library_scripts())
    text = replace_list(text, "MODULE_PYTHON_RESOURCES", library_resources())
    path.write_text(text, encoding="utf-8")
    print(f"{path}: {len(library_scripts())} scripts, {len(library_resources())} resources")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
