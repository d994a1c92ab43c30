"""`python -m bench`: the training comparison on three dataset shapes (see bench/run_all.py)."""

from bench.run_all import main

main()
