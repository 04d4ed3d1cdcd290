"""`python -m wsml_fast ...` (and `torchrun ... -m wsml_fast ...`): the `wsml` command line."""

from wsml_fast.cli import main

main()
