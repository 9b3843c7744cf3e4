"""medret: robustness of contrastive image-report models for chest X-ray retrieval."""

__version__ = "0.2.0"
