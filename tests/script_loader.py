"""The repository's scripts (``bench/``, ``tools/``) loaded as modules, for the tests that call their functions."""
import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_script(relative_path, name):
    """Execute the script at ``ROOT / relative_path`` as a new module called ``name`` and return it.

    Parameters
    ----------
    relative_path : str
        Path of the script below the repository's root, e.g. ``"bench/psa_conv.py"``.
    name : str
        The module's name (not entered in ``sys.modules``: each call executes the script afresh).

    Returns
    -------
    module
    """
    spec = importlib.util.spec_from_file_location(name, ROOT / relative_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
