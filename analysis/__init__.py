"""Analysis of memsim result directories: pandas loaders and seaborn figures.

Works only from the files a run writes (summary.json, *.parquet, config.yaml), never from
simulator internals, so results can be analysed anywhere pandas runs.
"""
