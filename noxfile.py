"""Sessions: tests (the CI command), bench (writes bench/results/), lint (ruff)."""

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Install the package with its test extra and run the whole suite, on two workers (most
    tests wait on subprocesses; the cluster tests share one worker: tests/test_slurm*.py).
    pytest stays below 9: pytest-xdist 3.8 groups tests by setting Node._nodeid, which pytest 9
    no longer reads (every xdist_group would be spread over the workers)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-n", "2", "--dist", "loadgroup", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Run every benchmark in bench/; each writes its JSON into bench/results/."""
    session.install("-e", ".[bench]")
    session.run("python", "-m", "bench", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Static checks with ruff."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
