"""Under CI=true a missing Chromium fails the run; elsewhere the browser tests skip with the reason.

Runs pytest on tests/test_webchat_browser.py in a subprocess with ``GATEWAY_TEST_CHROMIUM`` pointing
at a path that does not exist, so the check holds whether or not this machine has Chromium.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BROWSER_TESTS = "tests/test_webchat_browser.py"


def _run_browser_tests(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["GATEWAY_TEST_CHROMIUM"] = str(tmp_path / "no-such-chromium")
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", BROWSER_TESTS, "-q", "-rs", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_missing_chromium_fails_the_run_under_ci(tmp_path: Path) -> None:
    result = _run_browser_tests(tmp_path, "true")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "CI=true but Chromium is not installed at" in output, output
    assert "no-such-chromium" in output
    assert " passed" not in output and " skipped" not in output, output


def test_missing_chromium_skips_with_the_reason_outside_ci(tmp_path: Path) -> None:
    result = _run_browser_tests(tmp_path, None)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "skipped" in output and "Chromium is not installed at" in output, output
    assert "failed" not in output and "error" not in output.lower(), output
