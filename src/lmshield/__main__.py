"""``python -m lmshield``: the same as the ``lmshield`` command."""

from lmshield.cli.main import main

if __name__ == "__main__":
    main()
