"""kubetune: config-driven LLM fine-tuning that runs natively on Kubernetes."""

__version__ = "0.1.0"
