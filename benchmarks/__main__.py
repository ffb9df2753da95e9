"""``python -m benchmarks [--quick | --full] [--out DIR] [--suites a,b]``."""

from benchmarks import run

if __name__ == "__main__":
  run.main()
