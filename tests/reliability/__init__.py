"""The reliability suite's harnesses: writers killed mid-write (``crash``), concurrent mixed load
(``loadtest``) and malformed input (``fuzz`` for files, ``fuzz_api`` for HTTP and the command line).

tests/test_reliability_*.py and tests/test_fuzz_*.py run each briefly and fail on the first problem. The
long runs behind the published figures are the same code from the command line, at the repository root:

    python -m tests.reliability.crash --cycles 200 --export EXPORT_DIR
    python -m tests.reliability.loadtest --export EXPORT_DIR --corpus C.jsonl --queries Q.jsonl --seconds 60
    python -m tests.reliability.fuzz --cases 10000 --export EXPORT_DIR
    python -m tests.reliability.fuzz_api --export EXPORT_DIR

Each writes its own section of benchmarks/results/reliability.json through
``benchmarks.harness.provenance.write_result``.
"""
