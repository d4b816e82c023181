"""The dashboard's static files (HTML, JS, CSS), served by the hub; no build step.

Kept as a package so that the files ship in the wheel as package data and are found with
:mod:`importlib.resources` wherever fedlora is installed (the container included).
"""
