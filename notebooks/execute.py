"""Execute the notebooks in place at full size, so the committed copies show their outputs.

Run from the repository root with the test extras installed: ``make notebooks``.
"""

import pathlib
import sys

import nbclient
import nbformat

HERE = pathlib.Path(__file__).resolve().parent


def main(names):
  for name in names or sorted(p.name for p in HERE.glob("*.ipynb")):
    path = HERE / name
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(
      nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}
    ).execute()
    nbformat.write(nb, path)
    print(f"executed {name}")


if __name__ == "__main__":
  main(sys.argv[1:])
