"""`helpdesk` command line: what reaches the benchmarks."""

import pytest

from libs.cli.main import bench_arguments, build_parser


def bench_argv(*words: str) -> list[str]:
    return bench_arguments(build_parser().parse_args(["bench", *words]))


@pytest.mark.parametrize(
    ("words", "seconds", "concurrency"),
    [
        ((), "20.0", "32"),
        (("--seconds", "8", "--concurrency", "1"), "8", "1"),  # after the scenario name
    ],
)
def test_tickets_api_gets_the_options_given(words, seconds, concurrency):
    argv = bench_argv("tickets-api", *words)
    # The last occurrence of an option is the one the benchmark's own parser keeps.
    assert argv[len(argv) - 1 - argv[::-1].index("--seconds") + 1] == seconds
    assert argv[len(argv) - 1 - argv[::-1].index("--concurrency") + 1] == concurrency


def test_tickets_scale_gets_its_options_and_the_extra_ones():
    argv = bench_argv("tickets-scale", "--tickets", "5000", "--phases", "read")
    assert argv[-4:] == ["--tickets", "5000", "--phases", "read"]
