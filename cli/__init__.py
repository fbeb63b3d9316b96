"""The mrimsm command line (Typer). Thin: parsing, progress and error messages only."""
