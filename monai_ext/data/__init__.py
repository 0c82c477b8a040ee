"""Data: the datalist format, radiograph readers, prediction files and synthetic phantoms."""

from monai_ext.data.datalist import evaluation_section, first_image, list_images, load_datalist, read_datalist, validate_datalist, write_datalist
from monai_ext.data.dataset import SkipFailedDataset, collate_failed_items
from monai_ext.data.readers import LoadRadiograph, LoadRadiographd, RadiographReader, read_radiograph, set_decode_size

__all__ = [
    "first_image",
    "SkipFailedDataset",
    "collate_failed_items",
    "evaluation_section",
    "set_decode_size",
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
