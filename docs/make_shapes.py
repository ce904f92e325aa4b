"""Make a small image folder to try `dataset: folder` on: shapes/<class>/NNN.png.

Three classes (circle, square, triangle), 100 pictures each, 40x40 RGB: a light shape of random
size, place and colour on a dark background. Run from the folder that should hold shapes/:

    python docs/make_shapes.py
"""

import random
from pathlib import Path

from PIL import Image, ImageDraw

random.seed(0)
for shape in ("circle", "square", "triangle"):
    Path("shapes", shape).mkdir(parents=True, exist_ok=True)
    for i in range(100):
        image = Image.new("RGB", (40, 40), tuple(random.randrange(80) for _ in "rgb"))
        pen = ImageDraw.Draw(image)
        x, y, size = random.randrange(12), random.randrange(12), random.randrange(14, 28)
        colour = tuple(random.randrange(120, 256) for _ in "rgb")
        if shape == "circle":
            pen.ellipse([x, y, x + size, y + size], fill=colour)
        elif shape == "square":
            pen.rectangle([x, y, x + size, y + size], fill=colour)
        else:
            pen.polygon([(x, y + size), (x + size, y + size), (x + size // 2, y)], fill=colour)
        image.save(f"shapes/{shape}/{i:03d}.png")
