"""``python -m rq_pipeline_fix``: the ``rq-pipeline-fix`` command."""

import sys

from rq_pipeline_fix.cli import main

if __name__ == "__main__":
    sys.exit(main())
