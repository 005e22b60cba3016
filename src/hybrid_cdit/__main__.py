"""``python -m hybrid_cdit``: the ``hybrid-cdit`` command line."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
