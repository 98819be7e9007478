"""Attention analysis vs the plain forward pass; see benchmarks/RESULTS.md for the command and results.

Same as ``vitprobe bench``; ``--help`` lists the options.
"""

from vitprobe.bench import main

if __name__ == "__main__":
    main()
