"""``python -m sim4seg.bench NAME``: see :mod:`sim4seg.bench`."""

from sim4seg.bench import main

main()
