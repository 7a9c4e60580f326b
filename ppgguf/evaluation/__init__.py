"""Measures shared by the build's validation gate, `ppgguf eval`, `ppgguf bench` and benchmarks/.

Modules:

    fidelity    KL to the dense model on its own answers, persona attribution, general knowledge, loops
    speed       prompt and decode speed, time to first token, and the speed-up the bytes predict
"""
