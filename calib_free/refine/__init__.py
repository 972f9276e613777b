"""calib_free.refine: after rounding, pull a quantized layer's output back to the float one's.

    reconstruction  a layer's reconstruction data (Gram matrix of its rows) and output error
    flexround       FlexRound: learned rounding and scales by block reconstruction
    erq             ERQ for Linear layers: activation then weight quantization error reduction
    bias_correction DFQ-style bias correction: the expected output shift from E[x]

A new rounding or error-correction method goes here. No module is imported by this package's
__init__.
"""
