"""The names the CLI needs at start-up: synthetic sizes, Xenium generations and quirks (see ``_flavours``).

Kept free of heavy imports: the CLI builds its ``--size`` / ``--xoa`` / ``--quirk`` choices from them.
"""

SIZES = ("tiny", "demo", "bench", "xl")
FLAVOURS = ("1.9", "2.0", "3.1", "4.0", "ranger")
QUIRKS = ("rnd", "bytes", "blank", "macos", "foreign_ids")
