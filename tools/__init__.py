"""Tools of the bundle checkout, not of the installed package: the benchmark (``tools/benchmark.py``, its
measuring helpers and its report page) and the demo (``tools/demo.py``).

They need the checkout (``configs/``, ``models/``, ``scripts/``, ``docs/``). ``xray2mri benchmark`` and
``xray2mri demo`` load them from ``--bundle-root`` (default the current folder); ``scripts/`` imports them with
the checkout on ``sys.path``.
"""
