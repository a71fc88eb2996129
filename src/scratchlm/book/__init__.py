"""`scratchlm book`: the book of the reader's own run, typeset with Typst from the live source."""
