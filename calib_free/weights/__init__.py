"""calib_free.weights: how a weight tensor becomes integer codes and scales.

    quantizer    uniform symmetric quantizer Q: scales per tensor, channel or block; codes
    saturation   pair-limited codes for int8 kernels without VNNI (16-bit pair sums)
    power        PowerQuant: the non-uniform power operator Q_a and its exponent search
    expansion    REx residual expansion: W ~ sum_k Q^-1(R_k), any quantizer per order
    sparse       group-sparse REx orders (channels per order) and the bit-operation budget
    ensemble     layer-partition ensemble of a REx expansion (members and their weights)
    recurrent    int8 LSTM/GRU weights (one scale per gate row for W and R) and state clips
    balance      balanced weight columns (Sinkhorn, as SINQ) for low-bit weights of float inputs

A new weight quantizer goes here. No module is imported by this package's __init__.
"""
