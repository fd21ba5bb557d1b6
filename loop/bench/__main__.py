"""`python -m loop.bench`: see the package's docstring."""

from loop.bench import main

main()
