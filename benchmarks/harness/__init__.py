"""The harness every study shares, one module per concern:

    paths       where results, plots, shared data and the studies' cache live; ``--out`` names to files
    provenance  the stamp (machine, versions, commit, date) and ``write_result``, the one result writer
    cli         the options every study has (``--out``, ``--quick``), logging, the CLIs of this environment
    timing      interleaved timing of several systems, percentiles, throughput
    resources   resident memory and its peak, the CPU that anything else used meanwhile
    synthetic   clustered unit vectors and their exact top-k, for the studies that need no model
    figures     matplotlib without a display

A study keeps only what is its own and hands its numbers to ``provenance.write_result``, which adds the stamp
and the name of the script that measured them, so every file in benchmarks/results/ can be traced to code that
reproduces it. The HTTP side (server and load client) is ``benchmarks.loopback``.
"""
