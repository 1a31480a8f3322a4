"""inkkit: ink detection on Herculaneum papyrus fragments with fine-tuned Segment Anything."""

__version__ = "0.1.0"
