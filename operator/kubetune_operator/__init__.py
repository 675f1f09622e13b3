"""kubetune_operator: the kopf operator that runs FineTuneJobs."""

__version__ = "0.1.0"
