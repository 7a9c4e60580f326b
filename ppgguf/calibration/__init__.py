"""Calibration: the token sequences the scorers, healing, baking and the importance matrix read.

Modules, in the order data flows:

    generic     generic text shipped with the package, for activation-aware baselines (wanda-sp)
    questions   Persona-Pruner stage 1: pool questions selected by how much the persona changes the model
    answers     the teacher's in-voice answers, as cached calibration sets and token sequences
    followups   second turns answered in voice, and the conversations baking trains on
    batches     batches around the shared persona prompt: dense answer distributions, answer logits
    distill     the KL targets: whole distributions or their top k
"""
