"""wgsl-diff's Python tooling, a package run from the repository root: ``python -m tools.GROUP.SCRIPT``.

Groups: ``common`` (the shared library), ``converters``, ``fixtures``, ``twin``, ``studies``, ``bench``
and ``train``; ``tools/convert.py`` stays a script run by path. tools/README.md lists every script.
"""
