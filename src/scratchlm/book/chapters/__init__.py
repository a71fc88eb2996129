"""The book's chapters, one module each (TITLE and write(ctx)); build.CHAPTERS orders them."""
