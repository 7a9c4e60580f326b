"""`ppgguf build`: the pipeline's story, and everything placed beside the built file.

Modules, in the order a build runs them:

    memory        the peak memory a build needs, predicted before anything loads
    pipeline      the stages in order, each returning its result; finished stages kept in a run directory
    validate      the gate: the file loads in llama.cpp and agrees with PyTorch; looping answers
    finish        quantize, validate and write every companion in the run directory, then place them
    provenance    versions and input hashes for the report
    modelfile     the Ollama Modelfile
    model_card    the model card
    figure        the build's figure
    output        output paths, free space and the atomic placing of the files
"""
