"""The repository is a Slicer extension whose package contains every file the module needs.

Slicer's build installs only the files listed in the CMakeLists: a library file that is not listed works from
a source checkout and is missing for every user of the Extensions Manager. These tests catch that, and the
extension metadata the Extensions Index needs, without a Slicer build.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "MedAutoencoderLib"
MODULE = ROOT / "MedAutoencoder"
RAW_URL = "https://raw.githubusercontent.com/medautoencoder/MedAutoencoder/main/"
PACKAGE_DATA_DIRS = ("data", "models")
IGNORED_PARTS = {"__pycache__"}


def cmake_text(path: Path) -> str:
    """CMake source without comments."""
    return re.sub(r"#[^\n]*", "", path.read_text(encoding="utf-8"))


def cmake_tokens(path: Path) -> set:
    """Every bare word in a CMake file: enough to tell whether a relative file path is listed."""
    return set(re.findall(r"[^\s()\"]+", cmake_text(path)))


def cmake_set(path: Path, name: str) -> str:
    """The value of ``set(name ...)`` in a CMake file (one line)."""
    match = re.search(r"set\(\s*%s\s+\"([^\"]*)\"" % re.escape(name), cmake_text(path))
    assert match, f"{path.name} has no set({name} \"...\")"
    return match.group(1)


def library_files() -> list:
    """Files of the library that must be installed: its .py files and its package data."""
    files = [p for p in LIB.rglob("*.py")]
    for folder in PACKAGE_DATA_DIRS:
        files += [p for p in (LIB / folder).rglob("*") if p.is_file()] if (LIB / folder).is_dir() else []
    return sorted(p.relative_to(LIB).as_posix() for p in files if not IGNORED_PARTS & set(p.parts))


def listed_paths(path: Path) -> list:
    """Tokens of a CMake file that name files (with an extension), not variables or keywords."""
    return [t for t in cmake_tokens(path) if "${" not in t and re.search(r"\.[A-Za-z0-9]+$", t)
            and not t.startswith(("http", "Slicer_"))]


def test_every_library_file_is_listed_in_its_cmakelists():
    tokens = cmake_tokens(LIB / "CMakeLists.txt")
    missing = [f for f in library_files() if f not in tokens]
    assert not missing, ("not installed with the extension (run scripts/update_library_cmakelists.py): "
                         + ", ".join(missing))


def test_every_file_listed_for_the_library_exists():
    missing = [f for f in listed_paths(LIB / "CMakeLists.txt") if not (LIB / f).is_file()]
    assert not missing, (f"listed in MedAutoencoderLib/CMakeLists.txt but absent, which breaks the build "
                         f"(run scripts/update_library_cmakelists.py): {missing}")


def test_library_is_built_as_a_package_subdirectory():
    text = cmake_text(LIB / "CMakeLists.txt")
    assert "slicerMacroBuildScriptedModule" in text
    assert re.search(r"set\(MODULE_NAME MedAutoencoderLib\)", text)
    assert "WITH_SUBDIR" in text
    assert "../" not in text


def test_module_cmakelists_lists_script_ui_icon_and_requirements():
    tokens = cmake_tokens(MODULE / "CMakeLists.txt")
    text = cmake_text(MODULE / "CMakeLists.txt")
    assert "set(MODULE_NAME MedAutoencoder)" in text
    for resource in ("Resources/Icons/${MODULE_NAME}.png", "Resources/UI/${MODULE_NAME}.ui",
                     "Resources/requirements.txt", "${MODULE_NAME}.py"):
        assert resource in tokens
        assert (MODULE / resource.replace("${MODULE_NAME}", "MedAutoencoder")).is_file()
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", text)
    assert "../" not in text


def test_module_folder_has_a_single_python_file():
    """Slicer loads every .py directly in a module folder as a module of its own."""
    assert [p.name for p in MODULE.glob("*.py")] == ["MedAutoencoder.py"]


def test_top_level_cmakelists_is_an_extension():
    path = ROOT / "CMakeLists.txt"
    text = cmake_text(path)
    assert re.search(r"project\(MedAutoencoder\)", text)
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION"):
        assert cmake_set(path, key).strip(), key
    assert cmake_set(path, "EXTENSION_DEPENDS") == "PyTorch"
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                 "add_subdirectory(MedAutoencoderLib)", "add_subdirectory(MedAutoencoder)",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text, line


@pytest.mark.parametrize("key", ["EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"])
def test_image_urls_point_at_png_files_of_this_repository(key):
    for url in cmake_set(ROOT / "CMakeLists.txt", key).split():
        assert url.startswith(RAW_URL) and url.endswith(".png"), url
        assert (ROOT / url[len(RAW_URL):]).is_file(), f"{url} names a file missing from the repository"


def test_extension_icon_is_128_pixels_square():
    for icon in (ROOT / "Resources/Icons/MedAutoencoder.png", MODULE / "Resources/Icons/MedAutoencoder.png"):
        header = icon.read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n", icon
        assert (int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")) == (128, 128), icon


def test_extension_index_entry():
    entry = json.loads((ROOT / "MedAutoencoder.json").read_text(encoding="utf-8"))
    assert entry["build_dependencies"] == ["PyTorch"]
    assert entry["category"] == cmake_set(ROOT / "CMakeLists.txt", "EXTENSION_CATEGORY")
    assert entry["scm_url"].startswith("https://github.com/")
    assert entry["scm_revision"]
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/")


def test_extension_name_is_valid_for_the_index():
    assert not "MedAutoencoder".startswith("Slicer")
    assert (ROOT / "MedAutoencoder.json").stem == re.search(r"project\((\w+)\)",
                                                            cmake_text(ROOT / "CMakeLists.txt")).group(1)


def test_license_is_apache_2():
    assert "Apache License" in (ROOT / "LICENSE").read_text(encoding="utf-8")[:200]
    assert "Version 2.0" in (ROOT / "LICENSE").read_text(encoding="utf-8")[:200]


def test_module_requirements_never_replace_slicer_packages():
    requirements = (MODULE / "Resources/requirements.txt").read_text(encoding="utf-8")
    names = [re.split(r"[<>=!~ ;\[]", line.strip())[0].lower() for line in requirements.splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert "monai" in names
    assert not {"torch", "simpleitk", "requests", "numpy"} & set(names)


def test_module_fallback_installer_covers_every_requirement():
    """Slicer before 5.12 installs missing packages one by one from PIP_INSTALL_ARGUMENTS: it must name each
    package of requirements.txt (the module itself cannot be imported without Slicer, so its source is read)."""
    requirements = (MODULE / "Resources/requirements.txt").read_text(encoding="utf-8")
    names = {re.split(r"[<>=!~ ;\[]", line.strip())[0].lower() for line in requirements.splitlines()
             if line.strip() and not line.lstrip().startswith("#")}
    tree = ast.parse((MODULE / "MedAutoencoder.py").read_text(encoding="utf-8"))
    (arguments,) = [ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                    and any(getattr(t, "id", None) == "PIP_INSTALL_ARGUMENTS" for t in node.targets)]
    assert set(arguments) == names
    assert arguments["monai"].startswith("--no-deps")  # never replaces the PyTorch extension's torch
