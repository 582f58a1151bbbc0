"""``python -m lightning_wsg.synthetic``: see :mod:`lightning_wsg.synthetic.cli`."""

from .cli import main

if __name__ == "__main__":
    main()
