"""``python -m lightning_wsg`` is the ``lightning`` command."""

from .cli import main

if __name__ == "__main__":
    main()
