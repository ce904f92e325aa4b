"""nbcnn-depthwise: DepthwiseConv2D and SeparableConv2D layers for nbcnn, as a plugin.

The layers register through the ``nbcnn.layers`` entry-point group (see pyproject.toml); this
package adds nothing to nbcnn itself. Importing it is cheap: the numba kernels in
``nbcnn_depthwise.kernels`` load when a model first runs.
"""

from nbcnn_depthwise.layers import DepthwiseConv2D, SeparableConv2D

__all__ = ["DepthwiseConv2D", "SeparableConv2D"]
__version__ = "0.1.0"
