"""The error every module of the deploy raises for a bad or contradictory setting, in a module of its
own so that settings, matrix and naming (which all raise it) need not import each other."""

from pyinfra.api.exceptions import PyinfraError


class SettingsError(PyinfraError, ValueError):
    """A setting is invalid or settings contradict each other. (A PyinfraError: pyinfra prints it
    as one message, without a traceback.)"""
