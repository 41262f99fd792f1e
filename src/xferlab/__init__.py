"""xferlab: which pretrained backbone, frozen or fine-tuned, and can the test split be trusted?"""

from xferlab.errors import XferlabError

__version__ = "0.1.0"
__all__ = ["XferlabError", "__version__"]
