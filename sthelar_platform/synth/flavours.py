"""The names of the Xenium generations and quirks the generator can write (see ``_flavours``).

Kept free of heavy imports: the CLI builds its ``--xoa`` / ``--quirk`` choices from them at start-up.
"""

FLAVOURS = ("1.9", "2.0", "3.1", "4.0", "ranger")
QUIRKS = ("rnd", "bytes", "blank", "macos", "foreign_ids")
