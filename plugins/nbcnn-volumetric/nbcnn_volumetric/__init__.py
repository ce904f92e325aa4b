"""nbcnn-volumetric: calculator-only layers for nbcnn (Conv3D, MaxPooling3D, AveragePooling3D,
Conv2DTranspose), registered through the ``nbcnn.layers`` entry-point group.

``nbcnn summary`` plans with them; they bring no compute yet, so ``nbcnn train`` refuses a
model that uses them, naming the layer and this distribution.
"""

from nbcnn_volumetric.layers import AveragePooling3D, Conv2DTranspose, Conv3D, MaxPooling3D

__all__ = ["AveragePooling3D", "Conv2DTranspose", "Conv3D", "MaxPooling3D"]
__version__ = "0.1.0"
