import os

import pytest

# Two cores shared by everything: keep torch from oversubscribing them in tests.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def cli(capfd):
    """Run the lwdeploy CLI in-process; returns (exit_code, stdout, stderr)."""
    from lwdeploy.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out, err = capfd.readouterr()
        return code, out, err

    return run
