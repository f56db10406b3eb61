"""The ``mos*`` commands: one typer app per module, each a thin layer over plain functions."""
