"""`python -m rexdeploy.cli`: the same as the `rexdeploy` command."""

from rexdeploy.cli import main

main()
