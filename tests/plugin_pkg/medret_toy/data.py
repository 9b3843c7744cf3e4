"""The toy_pairs adapter: medret's own pairs-CSV reader on a file named by the `pairs` key."""

from medret.datasets.csv import read_pairs_csv


def sources(name, entry):
    return [str(entry["pairs"])]


def load(entry, sources):
    return read_pairs_csv(sources[0])
