"""``python -m morphable`` is the ``morphable`` command."""
from morphable.cli import main

main()
