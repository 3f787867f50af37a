"""Fine-tune LLMs as code: recipe YAML in, trained, quantized, documented model out."""

__version__ = "0.1.0"
