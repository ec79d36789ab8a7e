"""Run the snippets of the README and the docs site as tests (sybil).

Every ```python block of README.md and docs/ is a test; the blocks of a page share one
namespace and run in order, so a page reads as one script. What a page's snippets assume (your
calibration trace, your model) is set up on small synthetic data in an
``<!-- invisible-code-block: python ... -->`` comment just before them, and the few snippets that
cannot run here (a Ray cluster, an MLflow store) are marked ``<!-- skip: next "why" -->``, which
pytest reports as a skip with that reason. Snippets run in a scratch directory per page.

The job configurations of docs/job.md (```toml blocks) are read with `load_config`, so a renamed
setting breaks a test too.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sybil import Example, Sybil
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# Only this repository's README and docs: the plugins' READMEs are their own distributions', and
# tests/data/*/README.md records how saved files were written once by an old version (its script
# imports names of that version and would overwrite the files it describes).
EXCLUDES = ["plugins/*/*.md", "plugins/*/*/*.md", "tests/*.md", "tests/*/*.md", "tests/*/*/*.md"]


@pytest.fixture(scope="module")
def snippet_workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A scratch working directory for one page's snippets (anything they write lands there)."""
    previous = Path.cwd()
    workdir = tmp_path_factory.mktemp("snippets")
    os.chdir(workdir)
    try:
        yield workdir
    finally:
        os.chdir(previous)


def check_job_config(example: Example) -> None:
    """Read a job configuration snippet as `adaptix run` would (without the data-size check)."""
    from adaptix.experiment import load_config

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "job.toml"
        path.write_text(example.parsed, encoding="utf-8")
        load_config(path, check_data=False)


snippets = Sybil(
    parsers=[PythonCodeBlockParser(), SkipParser()],
    patterns=["README.md", "docs/*.md", "docs/**/*.md"],
    excludes=EXCLUDES,
    fixtures=["snippet_workdir"],
)
job_configs = Sybil(
    parsers=[CodeBlockParser("toml", check_job_config)],
    patterns=["docs/job.md"],
    name="job-config",
)
pytest_collect_file = (snippets + job_configs).pytest()
