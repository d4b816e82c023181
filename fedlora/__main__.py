"""`python -m fedlora` runs the CLI."""

from fedlora.cli import main

main()
