"""`python -m streamquant` is the `streamquant` command."""

from streamquant.cli import main

main()
