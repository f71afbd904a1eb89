"""`python -m generator` runs the recgen command line."""

from generator.cli import main

main()
