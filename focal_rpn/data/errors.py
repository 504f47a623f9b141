"""The errors of user datasets and image files (their own module, so that the dataset modules
``datasets``, ``coco_checks`` and ``image_io`` all import from here and never from each other
in a circle). Every message names the file, the key or id, and the value."""


class DatasetError(ValueError):
    """A dataset argument or file is invalid; the message names the file, key and value."""


class DatasetFileNotFoundError(DatasetError, FileNotFoundError):
    """A file or folder a dataset needs does not exist (both a ValueError and an OSError)."""


class ImageReadError(OSError):
    """An image file of a dataset cannot be read; the message names the file."""
