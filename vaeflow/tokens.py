"""Special tokens of a token vocabulary: the data side puts them first in the vocabulary it builds,
the sequence decoders look their ids up in it (one definition, below both layers)."""

from __future__ import annotations

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
# In this order at the start of every vocabulary the data side builds (ids 0, 1, 2).
SPECIALS = (PAD, BOS, EOS)
