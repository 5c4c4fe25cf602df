"""askexpert: collaborative ViT inference between an edge generalist and near-edge experts.

Reference: Liu and Fahmy, "Ask the Expert: Collaborative Inference for Vision Transformers
with Near-Edge Accelerators", arXiv:2602.13334, 2026.
"""

__version__ = "0.1.0"
