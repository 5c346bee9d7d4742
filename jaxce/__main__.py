"""``python -m jaxce``: the numerics self-check (see :mod:`jaxce._selfcheck`)."""

from jaxce._selfcheck import main

if __name__ == "__main__":
    raise SystemExit(main())
