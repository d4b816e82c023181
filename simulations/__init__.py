"""Simulating populations of phones on one machine on Flower's simulation engine, with
device profiles, dropouts, heterogeneous ranks, non-IID data and reports."""
