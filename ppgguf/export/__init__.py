"""Export: a PyTorch model written as a GGUF file, then quantized by llama.cpp.

Modules, in the order data flows:

    writer          model -> GGUF: tensors, architecture and every metadata key
    chat_template   the persona baked into the chat template; the chat format Ollama is told
    imatrix         importance matrices for the quantizer, in llama-imatrix's GGUF format
    quantize        llama.cpp's quantizer and the report of the types it chose
    sizing          a build's file size before any long stage, and the configuration for a size target
"""
