"""Pruning: from calibration sequences to a smaller, trained PyTorch model.

Modules, in the order data flows:

    importance/  one module per scorer: how much each FFN channel and KV group matters
    coupling     what leaves with an FFN channel or a KV group (the rows and columns they span)
    plan         scores -> the channels and KV groups each layer keeps
    surgery      plan -> a physically smaller model
    heal         recovery finetuning of the kept weights toward the dense model (also runs baking)
    bake         the persona in the weights: the conversations as teacher and student see them
    prune        the stage as one function: scores -> plan -> surgery -> heal or bake
"""
