"""Generates the Python client from proto/ before the tests import it.

The generated code is never committed, so it can never be stale: every test
run writes it afresh into build/generated (git-ignored) with the command
docs/clients.md shows, run from the repository root, and puts that folder on
sys.path.
"""

import pathlib
import shutil
import subprocess
import sys

REPOSITORY_ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
GENERATED_DIR = REPOSITORY_ROOT / "clients" / "python" / "build" / "generated"


def generate_client() -> None:
    """Runs grpc_tools.protoc over every .proto of the contract."""
    shutil.rmtree(GENERATED_DIR, ignore_errors=True)
    GENERATED_DIR.mkdir(parents=True)
    generated = GENERATED_DIR.relative_to(REPOSITORY_ROOT)
    proto_files = sorted(
        str(path.relative_to(REPOSITORY_ROOT))
        for path in (REPOSITORY_ROOT / "proto").rglob("*.proto")
    )
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I",
        "proto",
        f"--python_out={generated}",
        f"--pyi_out={generated}",
        f"--grpc_python_out={generated}",
        *proto_files,
    ]
    subprocess.run(command, cwd=REPOSITORY_ROOT, check=True)


def pytest_configure(config) -> None:
    del config  # pytest passes it; generation needs nothing from it.
    generate_client()
    sys.path.insert(0, str(GENERATED_DIR))
