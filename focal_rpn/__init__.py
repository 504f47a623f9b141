"""focal_rpn: RetinaNet and FL-RPN for detectron2. ``import focal_rpn`` registers everything."""
__version__ = "0.1.0"
