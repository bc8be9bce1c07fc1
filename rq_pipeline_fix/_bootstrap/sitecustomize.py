"""Imported by Python at start-up as the top-level module ``sitecustomize`` when
``rq-pipeline-fix-run`` has put this folder first on ``PYTHONPATH``; see ``rq_pipeline_fix.runner``.

The folder has no ``__init__.py`` on purpose: it is a ``sys.path`` entry, not a package, and this
file is never meant to be imported as ``rq_pipeline_fix._bootstrap.sitecustomize``.
"""

try:
    from rq_pipeline_fix.runner import bootstrap
except ImportError as exc:
    # A Python without rq-pipeline-fix that inherited PYTHONPATH has nothing to guard; any other
    # ImportError is a broken install, worth a warning but never a failed start-up.
    if exc.name != "rq_pipeline_fix":
        import warnings

        warnings.warn(f"rq-pipeline-fix: start-up hook not loaded: {exc!r}", RuntimeWarning, stacklevel=1)
else:
    bootstrap()
