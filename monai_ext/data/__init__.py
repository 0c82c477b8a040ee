"""Data: the datalist format, radiograph readers, prediction files and synthetic phantoms."""

from monai_ext.data.datalist import list_images, load_datalist, read_datalist, validate_datalist, write_datalist
from monai_ext.data.readers import LoadRadiograph, LoadRadiographd, RadiographReader, read_radiograph

__all__ = [
    "list_images",
    "load_datalist",
    "read_datalist",
    "validate_datalist",
    "write_datalist",
    "LoadRadiograph",
    "LoadRadiographd",
    "RadiographReader",
    "read_radiograph",
]
