"""Coverage-guided fuzzing (atheris/libFuzzer) of the stream parsers and usage meters.

Run by `make fuzz` (FUZZ_SECONDS bounds it). Each input picks a format, route and content type,
and a way to cut the bytes (see parsers_target.py); the target checks that nothing raises and
that the cut never changes the result. The seed corpus reaches every meter, which
tests/providers/test_fuzz_seeds.py checks without atheris. A finding is written as
crash-<hash> in the working directory; replay it with
`python tests/fuzz/fuzz_parsers.py crash-<hash>`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["steward"]):
    from parsers_target import check, seed  # a sibling: this file is run as a script


def test_one_input(raw: bytes) -> None:
    check(raw)


def main() -> None:
    args = sys.argv[1:]
    corpus = [a for a in args if not a.startswith("-")]
    if not corpus:  # default: a corpus directory kept between runs (git-ignored)
        corpus_dir = Path(".fuzz-corpus")
        seed(corpus_dir)
        args.append(str(corpus_dir))
    atheris.Setup([sys.argv[0], *args], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
