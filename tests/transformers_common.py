"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`), importable for the installed version.

transformers publishes `tests/test_modeling_common.py` and `tests/test_configuration_common.py` only in its source
distribution, and they must match the installed library. `python tests/transformers_common.py fetch` downloads that
sdist with pip for exactly the installed version and extracts its top-level `tests/*.py` into
`<repo>/.cache/transformers-tests/<version>/transformers_common_tests/` (a package name that cannot clash with this
repo's `tests/` folder), with stand-ins for the modules the sdist leaves out (see `STAND_INS`). Nothing of it is
committed: `.cache/` is git-ignored. `HIVE_TRANSFORMERS_TESTS` replaces `<repo>/.cache/transformers-tests`; each
version still gets its own sub-folder, so one folder serves several environments.

Example:
    $ python tests/transformers_common.py fetch            # once per transformers version
    $ python tests/transformers_common.py fetch --sdist transformers-5.25.0.tar.gz   # from a downloaded sdist

    >>> from transformers_common import require_common_tests
    >>> modeling, configuration = require_common_tests()   # skips (or fails) the calling test module if absent
    >>> modeling.ModelTesterMixin, configuration.ConfigTester
"""

import argparse
import importlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path

import transformers


REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "transformers_common_tests"
FETCH_COMMAND = "python tests/transformers_common.py fetch"
COMPLETE_MARKER = "FETCHED"  # names the version and LAYOUT; a copy without it (or with another) is fetched again
LAYOUT = 1  # raise when STAND_INS or the layout change, so existing copies are rebuilt

# Modules that test_modeling_common.py / test_configuration_common.py import but the sdist does not ship. Each stand-in
# holds only the name imported, and no test: the generation and export suites do not run here.
STAND_INS = {
    "generation/test_utils.py": (
        '"""Stand-in: the sdist lacks tests/generation/; `generate` is not tested through this suite."""\n\n\n'
        "class GenerationTesterMixin:\n    pass\n"
    ),
    "exporters/test_export.py": (
        '"""Stand-in: the sdist lacks tests/exporters/; no torch.export test runs through this suite."""\n\n\n'
        "class ExportTesterMixin:\n    pass\n"
    ),
    "utils/test_configuration_utils.py": (
        '"""Stand-in: the sdist lacks tests/utils/. ConfigTester reads `config_common_kwargs` only for configs without\n'
        'sub-configs (`check_config_arguments_init` returns early for composite ones such as HiveConfig)."""\n\n'
        "config_common_kwargs = {}\n"
    ),
}


def cache_root() -> Path:
    """The folder that holds one extracted copy per transformers version."""
    return Path(os.environ.get("HIVE_TRANSFORMERS_TESTS") or REPO_ROOT / ".cache" / "transformers-tests")


def copy_dir(version: str = transformers.__version__) -> Path:
    """Where the copy for `version` lives (it is importable once `<copy_dir>/transformers_common_tests/FETCHED` exists)."""
    return cache_root() / version


def marker_header(version: str) -> str:
    return f"transformers {version}, layout {LAYOUT}\n"


def is_fetched(version: str = transformers.__version__) -> bool:
    marker = copy_dir(version) / PACKAGE / COMPLETE_MARKER
    return marker.is_file() and marker.read_text().startswith(marker_header(version))


def download_sdist(version: str, directory: Path) -> Path:
    """Downloads transformers' source distribution for `version` into `directory` with pip; returns the archive."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", f"transformers=={version}", "-d", str(directory)]
    subprocess.run(command, check=True)
    archives = sorted(directory.glob(f"transformers-{version}.tar.gz"))
    if not archives:
        raise RuntimeError(f"pip download left no transformers-{version}.tar.gz in {directory}.")
    return archives[0]


def extract_tests(sdist: Path, version: str, package_dir: Path) -> list[str]:
    """Writes the sdist's top-level tests/*.py into `package_dir`; returns their names. Nothing else leaves the archive."""
    pattern = re.compile(rf"^transformers-{re.escape(version)}/tests/([A-Za-z0-9_]+\.py)$")
    names = []
    with tarfile.open(sdist, "r:gz") as archive:
        for member in archive.getmembers():
            match = pattern.match(member.name)
            if match and member.isfile():
                (package_dir / match.group(1)).write_bytes(archive.extractfile(member).read())
                names.append(match.group(1))
    if "test_modeling_common.py" not in names:
        raise RuntimeError(f"{sdist} has no transformers-{version}/tests/test_modeling_common.py; is it transformers {version}?")
    return sorted(names)


def fetch(version: str = transformers.__version__, sdist: Path | None = None) -> Path:
    """Builds the importable copy for `version` (from `sdist`, else downloaded with pip); returns its folder.

    The copy is assembled in a temporary folder next to its destination and renamed into place, so an interrupted fetch
    leaves nothing that looks complete.
    """
    destination = copy_dir(version)
    if is_fetched(version):
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=destination.parent))
    try:
        if sdist is None:
            sdist = download_sdist(version, staging / "download")
        package_dir = staging / "copy" / PACKAGE
        package_dir.mkdir(parents=True)
        names = extract_tests(Path(sdist), version, package_dir)
        (package_dir / "__init__.py").write_text(f'"""transformers {version} tests/*.py, extracted by tests/transformers_common.py."""\n')
        for relative_path, text in STAND_INS.items():
            path = package_dir / relative_path
            path.parent.mkdir(exist_ok=True)
            (path.parent / "__init__.py").touch()
            path.write_text(text)
        (package_dir / COMPLETE_MARKER).write_text(
            f"{marker_header(version)}from the sdist: {' '.join(names)}\nstand-ins: {' '.join(STAND_INS)}\n"
        )
        if destination.exists():  # a copy of an older layout, or one someone cut short: replaced whole
            shutil.rmtree(destination)
        try:
            os.rename(staging / "copy", destination)
        except OSError:
            if not is_fetched(version):  # another process finished first: its copy is as good as ours
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def missing_message(version: str = transformers.__version__) -> str:
    return (
        f"transformers' common model tests for transformers {version} are not in {copy_dir(version)}; "
        f"run `{FETCH_COMMAND}` (downloads the transformers {version} sdist from PyPI with pip)."
    )


def import_common_tests(version: str = transformers.__version__):
    """Imports the fetched copy: returns the modules `test_modeling_common` and `test_configuration_common`."""
    if not is_fetched(version):
        raise ModuleNotFoundError(missing_message(version))
    path = str(copy_dir(version))
    if path not in sys.path:
        sys.path.insert(0, path)
    modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
    configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
    return modeling, configuration


def require_common_tests():
    """`import_common_tests()` for a test module: without a copy it skips that module, or fails it when
    `HIVE_REQUIRE_COMMON_TESTS=1` (CI), in both cases naming the fetch command."""
    import pytest

    if not is_fetched():
        if os.environ.get("HIVE_REQUIRE_COMMON_TESTS") == "1":
            pytest.fail(missing_message(), pytrace=False)
        pytest.skip(missing_message(), allow_module_level=True)
    with warnings.catch_warnings():
        # Marks such as `torch_compile_test` are registered by transformers' own conftest, which is not copied.
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        return import_common_tests()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_parser = commands.add_parser("fetch", help="download and extract the tests for the installed transformers")
    fetch_parser.add_argument("--sdist", type=Path, help="use this transformers-<version>.tar.gz instead of downloading it")
    commands.add_parser("where", help="print the folder of the copy for the installed transformers")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        print(fetch(sdist=args.sdist))
    else:
        print(copy_dir(), "(fetched)" if is_fetched() else "(missing)")


if __name__ == "__main__":
    main()
