"""Check the built sdist and wheel: what they hold, and the wheel's metadata.

Usage: python .ci/check_dist.py DIST_DIR   (run from the repository root by .ci/wheel)

The wheel must hold every module and py.typed of the checkout's three packages and nothing else
(a subpackage missing from pyproject's package list fails here); the sdist ships the source, the
README, LICENSE, CHANGELOG and examples, and no tests, test support (testkit), benchmarks or
SciFact data; the metadata carries the SPDX license, classifiers, project URLs and authors, and no
exact torch pin.
"""

from __future__ import annotations

import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from packaging.metadata import Metadata
from packaging.requirements import Requirement

PACKAGES = {"llmrerank": Path("core/llmrerank"), "langchain_llmrerank": Path("langchain_llmrerank")}
PACKAGES["llamaindex_llmrerank"] = Path("llamaindex_llmrerank")
SDIST_NEEDS = {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "PKG-INFO"}
SDIST_NEVER = ("tests", "testkit", "benchmarks", ".ci", ".venv", "reports", "dev")


def one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        sys.exit(f"check_dist: expected one {pattern} in {folder}, found {[p.name for p in found]}")
    return found[0]


def checkout_files() -> set[str]:
    """The package files of the checkout, as wheel paths (``llmrerank/x.py``)."""
    files = set()
    for name, source in PACKAGES.items():
        for path in source.rglob("*"):
            if path.suffix == ".py" or path.name == "py.typed":
                files.add(str(PurePosixPath(name, *path.relative_to(source).parts)))
    return files


def check_wheel(wheel: Path, problems: list[str]) -> Metadata:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Metadata.from_email(zf.read(f"{info}/METADATA"), validate=True)
    shipped = {n for n in names if not n.startswith(info + "/")}
    expected = checkout_files()
    if missing := sorted(expected - shipped):
        problems.append(f"wheel lacks {missing} (add the subpackage to [tool.setuptools] packages)")
    if extra := sorted(shipped - expected):
        problems.append(f"wheel holds files outside the three packages: {extra}")
    if f"{info}/licenses/LICENSE" not in names:
        problems.append("wheel has no dist-info/licenses/LICENSE")
    return metadata


def check_metadata(meta: Metadata, problems: list[str]) -> None:
    if meta.license_expression != "Apache-2.0":
        problems.append(f"License-Expression is {meta.license_expression!r}, not 'Apache-2.0'")
    if meta.license:
        problems.append("a legacy License field beside License-Expression")
    classifiers = meta.classifiers or []
    for needed in ("Typing :: Typed", "Programming Language :: Python :: 3 :: Only"):
        if needed not in classifiers:
            problems.append(f"classifier {needed!r} missing")
    if any(c.startswith("License ::") for c in classifiers):
        problems.append("a License :: classifier beside License-Expression")
    if not meta.project_urls or not meta.author:
        problems.append("project URLs or author missing")
    if meta.description_content_type != "text/markdown" or not meta.description:
        problems.append("the README is not the markdown long description")
    for req in meta.requires_dist or []:
        if isinstance(req, str):
            req = Requirement(req)
        if req.name == "torch" and any(s.operator in ("==", "===") for s in req.specifier):
            problems.append(f"exact torch pin in the package: {req} (pin it in the dev script only)")


def check_sdist(sdist: Path, problems: list[str]) -> list[str]:
    with tarfile.open(sdist) as tf:
        members = [m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name and m.isfile()]
    top = {m.split("/")[0] for m in members}
    if missing := sorted(SDIST_NEEDS - top):
        problems.append(f"sdist lacks {missing}")
    if shipped := sorted(top & set(SDIST_NEVER)):
        problems.append(f"sdist ships {shipped}")
    if bad := [m for m in members if "__pycache__" in m or m.endswith((".pyc", ".pyo"))]:
        problems.append(f"sdist ships caches: {bad[:5]}")
    examples = sorted(m for m in members if m.startswith("examples/"))
    if [Path(m).name for m in examples] != sorted(p.name for p in Path("examples").glob("*.py")):
        problems.append(f"sdist examples {examples} differ from the checkout's")
    return members


def main() -> int:
    dist = Path(sys.argv[1])
    problems: list[str] = []
    wheel, sdist = one(dist, "*.whl"), one(dist, "*.tar.gz")
    check_metadata(check_wheel(wheel, problems), problems)
    members = check_sdist(sdist, problems)
    for problem in problems:
        print(f"check_dist: {problem}", file=sys.stderr)
    if not problems:
        files = len(checkout_files())
        print(f"check_dist: {wheel.name} ({files} package files) and {sdist.name} ({len(members)} files) ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
