"""Pure numpy kernels: the formulas of docs/algorithm.md §1, one place each (no dask, no I/O)."""

__all__ = [
    "DERIVATIVE_HALO_PX",
    "DILATION_HALO_PX",
    "DO_NOT_USE",
    "FLAG_HALO_PX",
    "JWST_PIXEL_FLAGS",
    "OUTLIER",
    "OUTLIER_DQ_BITS",
    "WEIGHT_TYPES",
    "abs_derivative",
    "count_finite",
    "dilate_3x3",
    "drizzle_weight_map",
    "flag_halo_px",
    "flag_outliers_in_dq",
    "flag_resampled_outliers",
    "flag_unresampled_outliers",
    "good_pixel_mask",
    "interpret_good_bits",
    "mask_low_weight",
    "match_nans_and_flags",
    "nanmedian_reject_highest",
    "nanmedian_stack",
    "valid_weight_values",
    "var_rnoise_usable",
    "weight_threshold",
    "weight_threshold_from_values",
]

# Resampling kernels (outlier_dask/kernels/resample.py) are re-exported by the lead: add their
# names to __all__ above and their import below.


from outlier_dask.kernels.combine import count_finite, nanmedian_reject_highest
from outlier_dask.kernels.derivative import DERIVATIVE_HALO_PX, abs_derivative
from outlier_dask.kernels.dq import (
    DO_NOT_USE,
    JWST_PIXEL_FLAGS,
    OUTLIER,
    OUTLIER_DQ_BITS,
    flag_outliers_in_dq,
    good_pixel_mask,
    interpret_good_bits,
    match_nans_and_flags,
)
from outlier_dask.kernels.flags import (
    DILATION_HALO_PX,
    FLAG_HALO_PX,
    dilate_3x3,
    flag_halo_px,
    flag_resampled_outliers,
    flag_unresampled_outliers,
)
from outlier_dask.kernels.median import nanmedian_stack
from outlier_dask.kernels.weights import (
    WEIGHT_TYPES,
    drizzle_weight_map,
    mask_low_weight,
    valid_weight_values,
    var_rnoise_usable,
    weight_threshold,
    weight_threshold_from_values,
)
