"""The standalone verifier (python chain.py EXPORT MANIFEST) reports bad input as FAILED with exit code 1."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

CHAIN_SCRIPT = Path(__file__).resolve().parents[2] / "apps" / "audit" / "chain.py"
VALID_MANIFEST = {
    "manifest_version": 1, "tenant": "alpha", "format": "csv", "through_sequence": 1, "contiguous": True,
    "entry_count": 1, "file_sha256": "0" * 64, "first_entry": None, "last_entry": None, "chain_head": None,
}


def _run(export, manifest):
    # The script runs as an auditor would run it: without Django, in its own process.
    return subprocess.run(
        [sys.executable, str(CHAIN_SCRIPT), str(export), str(manifest)], capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(
    ("manifest_text", "reason"),
    [
        ("", "is not a JSON manifest"),
        ("{}", "is missing the keys manifest_version"),
        ("[]", "contains a JSON array"),
        ("null", "contains a JSON null"),
        (json.dumps({**VALID_MANIFEST, "entry_count": "1"}), "entry_count '1' is invalid; expected a JSON number"),
        (json.dumps({**VALID_MANIFEST, "through_sequence": True}), "through_sequence True is invalid"),
    ],
)
def test_bad_manifest_fails_cleanly(tmp_path, manifest_text, reason):
    export = tmp_path / "audit.csv"
    export.write_text("sequence\n")
    manifest = tmp_path / "audit.manifest.json"
    manifest.write_text(manifest_text)

    result = _run(export, manifest)

    assert result.returncode == 1
    assert result.stderr.startswith("FAILED: ")
    assert reason in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("missing", ["export", "manifest"])
def test_missing_file_fails_cleanly(tmp_path, missing):
    export = tmp_path / "audit.csv"
    manifest = tmp_path / "audit.manifest.json"
    if missing != "export":
        export.write_text("sequence\n")
    if missing != "manifest":
        manifest.write_text(json.dumps(VALID_MANIFEST))

    result = _run(export, manifest)

    assert result.returncode == 1
    assert result.stderr.startswith(f"FAILED: Cannot read the {missing} ")
    assert "No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr
