"""calib_free.activations: activation ranges without data, from statistics or synthetic samples.

    ranges       range estimators: max-abs, percentile, MSE-optimal, Gaussian clip; clip -> scale
    moments      Gaussian moment propagation per channel (BatchNorm/LayerNorm statistics
                 carried through activations, Conv/Linear and Add)
    smooth       SmoothQuant-style scale migration of Linear inputs into the weights

A new activation range estimator goes here. No module is imported by this package's __init__.
"""
