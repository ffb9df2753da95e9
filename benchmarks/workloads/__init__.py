"""The workloads suite: tuning-free optimizers judged on small deep-learning workloads, the
way MLCommons AlgoPerf's self-tuning track judges them.

- ``roster.py``: which workloads, which methods, and how much of each a mode runs;
- ``data.py`` and ``models.py``: the splits and the Flax NNX models;
- ``trainer.py``: one optimizer's training run as one jitted program, vmapped over seeds and a
  learning-rate grid;
- ``training.py`` and ``checks.py``: training of one workload (time to target; the stopping
  signal, robustness and long-run checks);
- ``pool.py``: the workloads in parallel worker processes;
- ``algoperf.py``: the scoring maths; ``render.py``: the markdown and the plot;
- ``suite.py``: the entry, ``run(mode, progress)``.
"""
