"""Click commands of each job, one module per job, registered on the group in :mod:`ssdtool.cli`.

Each module keeps its heavy imports inside the command functions so ``ssdtool --help`` stays instant.
"""
