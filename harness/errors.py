"""Errors that mean "the input is wrong": the CLI prints them as one line and exits 2."""


class InputError(Exception):
    """Bad input (checkpoint, tensor, option value). The message names the thing and the fix."""
