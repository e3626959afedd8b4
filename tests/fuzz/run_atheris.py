"""Run one fuzz target under atheris (coverage-guided, libFuzzer), or replay inputs through it.

    python tests/fuzz/run_atheris.py TARGET [libFuzzer flags] [CORPUS_DIR ...]
    python tests/fuzz/run_atheris.py TARGET --replay FILE_OR_DIR ...

The package is instrumented for coverage (only orderflow_ingest, not the stdlib). libFuzzer
writes new inputs into the FIRST corpus directory, so callers pass a scratch directory first
and the seed corpus (tests/fuzz/corpus/TARGET) second: the checked-in seeds stay as they are.
A crash leaves `crash-<sha1>` under -artifact_prefix; replay it with --replay to debug it.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _replay(target: object, paths: list[str]) -> int:
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        files += sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for file in files:
        print(f"replay {file}", flush=True)
        target(file.read_bytes())  # type: ignore[operator]
    print(f"replayed {len(files)} input(s): all invariants hold")
    return 0


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    name = sys.argv[1]
    sys.path.insert(0, str(HERE))
    import atheris

    with atheris.instrument_imports(include=["orderflow_ingest", "fuzz_targets"]):
        import fuzz_targets
    if name not in fuzz_targets.TARGETS:
        print(f"unknown target {name!r}; known: {', '.join(fuzz_targets.TARGETS)}", file=sys.stderr)
        return 2
    target = fuzz_targets.TARGETS[name]
    if len(sys.argv) > 2 and sys.argv[2] == "--replay":
        return _replay(target, sys.argv[3:])
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()  # libFuzzer exits the process itself
    return 0


if __name__ == "__main__":
    sys.exit(main())
